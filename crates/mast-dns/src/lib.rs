//! DNS for the registry: any program discovers a service's instances with a plain DNS query,
//! without an SDK (issue 17's "DNS", as Nacos's DNS-F and Consul's DNS interface).
//!
//! Served with hickory-server on UDP and TCP (`mast serve --dns-addr`). Names, under the zone
//! (`--dns-zone`, default `mast.`):
//!
//! | name | answers |
//! |---|---|
//! | `<service>.service.mast.` | the service in the public namespace and `DEFAULT_GROUP` (the seeds' `/services/<service>/`) |
//! | `<service>.<group>.service.mast.` | the service in `<group>` of the public namespace |
//! | `<service>.<group>.<namespace>.service.mast.` | the service in `<group>` of `<namespace>` |
//! | `_<service>._tcp.…service.mast.` | the same, as RFC 2782 writes SRV names (`_udp` too) |
//! | `<hex>.addr.mast.` | the address an SRV target names: 8 hex digits an IPv4 address, 32 an IPv6 one |
//!
//! - **A / AAAA**: one record per instance that is healthy, enabled and has a weight above 0,
//!   whose host is an IPv4 / IPv6 address (an instance registered with a host name has an SRV
//!   record only).
//! - **SRV**: one record per such instance: priority 0, weight the instance's weight × 100
//!   (Nacos weights are decimals; 1.0 is 100), its port, and as target the host name, or for an
//!   address `<hex>.addr.<zone>` with its A / AAAA record in the additional section.
//! - **Protection threshold**: when the healthy share of a service's enabled instances is at or
//!   below the service's protection threshold (Nacos's rule, set through the Nacos service
//!   API), every enabled instance is answered, healthy or not, so a partial outage does not send
//!   all traffic to the few survivors.
//! - A service with no instance and no settings is `NXDOMAIN`; a known one with nothing to
//!   answer is an empty `NOERROR`; both carry the zone's SOA (serial: the store revision) for
//!   negative caching. A name outside the zone is `REFUSED`.
//!
//! Health and weights are read when the query comes (a serializable read of the member's
//! store), so a deregistered instance leaves the answers at once; answers carry the TTL of
//! `--dns-ttl` (seconds). DNS carries no credentials: with auth on, queries are answered with
//! the permissions of `--dns-user` (a Mast user, as a client certificate's common name would
//! be) and refused without it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::ServerFuture;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Header, MessageType, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use mast_model::ServiceName;
use mast_registry::{ApiError, ErrorCode};
use mast_server::Node;
use mast_server::authz::Caller;

/// Default zone.
pub const DEFAULT_ZONE: &str = "mast.";
/// Default TTL of answers, seconds.
pub const DEFAULT_TTL: u32 = 5;
/// How long a TCP connection may stay idle before the server closes it.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Settings of the DNS server.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// The zone names are answered under (`--dns-zone`), fully qualified.
    pub zone: Name,
    /// TTL of every record, seconds (`--dns-ttl`).
    pub ttl: u32,
    /// With auth on, the Mast user whose permissions queries are answered with
    /// (`--dns-user`); `None`: queries are refused while auth is on.
    pub user: Option<String>,
}

impl DnsConfig {
    /// Settings for `zone` (a trailing dot is added when missing).
    ///
    /// # Errors
    /// [`DnsError::Zone`] when `zone` is not a valid domain name.
    pub fn new(zone: &str, ttl: u32, user: Option<String>) -> Result<DnsConfig, DnsError> {
        let text = if zone.ends_with('.') {
            zone.to_string()
        } else {
            format!("{zone}.")
        };
        let zone = Name::from_ascii(&text).map_err(|e| DnsError::Zone(text, e.to_string()))?;
        Ok(DnsConfig { zone, ttl, user })
    }
}

/// What can go wrong starting the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// `--dns-zone` is not a domain name.
    #[error("invalid DNS zone {0:?}: {1}")]
    Zone(String, String),
    /// The UDP or TCP port cannot be bound.
    #[error("binding the DNS port {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// What a query name asks for, relative to the zone.
#[derive(Debug, PartialEq)]
enum Target {
    /// The zone itself.
    Apex,
    /// A service's instances.
    Service(ServiceName),
    /// An address named by an SRV target.
    Addr(IpAddr),
    /// Inside the zone, but nothing Mast names.
    Unknown,
}

/// Reads `name` against `zone`; `None` when it is outside the zone.
fn parse(name: &Name, zone: &Name) -> Option<Target> {
    if !zone.zone_of(name) {
        return None;
    }
    let labels: Vec<&[u8]> = name.iter().collect();
    let inside = labels.len().saturating_sub(usize::from(zone.num_labels()));
    let rel: Option<Vec<&str>> = labels[..inside]
        .iter()
        .map(|l| std::str::from_utf8(l).ok())
        .collect();
    let Some(rel) = rel else {
        return Some(Target::Unknown);
    };
    let Some((kind, rest)) = rel.split_last() else {
        return Some(Target::Apex);
    };
    let target = if kind.eq_ignore_ascii_case("service") {
        service_name(rest).map(Target::Service)
    } else if kind.eq_ignore_ascii_case("addr") && rest.len() == 1 {
        decode_addr(rest[0]).map(Target::Addr)
    } else {
        None
    };
    Some(target.unwrap_or(Target::Unknown))
}

/// `[<service>, <group>?, <namespace>?]`, the service maybe as `_<service>, _tcp`.
fn service_name(labels: &[&str]) -> Option<ServiceName> {
    let (name, rest) = match labels {
        [svc, proto, rest @ ..]
            if svc.starts_with('_')
                && (proto.eq_ignore_ascii_case("_tcp") || proto.eq_ignore_ascii_case("_udp")) =>
        {
            (&svc[1..], rest)
        }
        [svc, rest @ ..] => (*svc, rest),
        [] => return None,
    };
    let (group, namespace) = match rest {
        [] => ("", ""),
        [group] => (*group, ""),
        [group, namespace] => (*group, *namespace),
        _ => return None,
    };
    if mast_model::check_name("service", name).is_err()
        || [group, namespace].iter().any(|s| s.contains(['#', '@']))
    {
        return None;
    }
    Some(ServiceName::new(namespace, group, name))
}

/// The label of an address in `<hex>.addr.<zone>`.
fn encode_addr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
    }
}

fn decode_addr(label: &str) -> Option<IpAddr> {
    if !label.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match label.len() {
        8 => u32::from_str_radix(label, 16)
            .ok()
            .map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        32 => u128::from_str_radix(label, 16)
            .ok()
            .map(|n| IpAddr::V6(Ipv6Addr::from(n))),
        _ => None,
    }
}

/// SRV weight of a Nacos weight: × 100, within what SRV carries (at least 1).
fn srv_weight(weight: f64) -> u16 {
    (weight * 100.0).round().clamp(1.0, f64::from(u16::MAX)) as u16
}

/// One answer, before it is encoded.
#[derive(Debug, Default)]
struct Answer {
    code: ResponseCode,
    answers: Vec<Record>,
    soa: Vec<Record>,
    additionals: Vec<Record>,
}

impl Answer {
    fn code(code: ResponseCode) -> Answer {
        Answer {
            code,
            ..Answer::default()
        }
    }
}

/// Answers DNS queries from the member's store.
pub struct DnsHandler {
    node: Arc<Node>,
    config: DnsConfig,
}

impl DnsHandler {
    /// A handler reading `node`'s store.
    pub fn new(node: Arc<Node>, config: DnsConfig) -> DnsHandler {
        DnsHandler { node, config }
    }

    fn caller(&self, src: SocketAddr) -> Caller {
        Caller {
            token: None,
            addr: Some(src),
            cert_cn: self.config.user.as_deref().map(Arc::from),
            api: "dns",
        }
    }

    fn record(&self, name: Name, data: RData) -> Record {
        Record::from_rdata(name, self.config.ttl, data)
    }

    fn soa(&self) -> Record {
        let zone = &self.config.zone;
        let child = |label: &str| {
            Name::from_ascii(label)
                .and_then(|n| n.append_domain(zone))
                .unwrap_or_else(|_| zone.clone())
        };
        // The serial follows the store, so a secondary could tell a change (it wraps past 2^32).
        let serial = self.node.header().map_or(0, |h| h.revision) as u32;
        let soa = SOA::new(
            child("ns"),
            child("hostmaster"),
            serial,
            3600,
            600,
            86400,
            self.config.ttl,
        );
        self.record(zone.clone(), RData::SOA(soa))
    }

    async fn answer(&self, request: &Request) -> Answer {
        if request.message_type() != MessageType::Query || request.op_code() != OpCode::Query {
            return Answer::code(ResponseCode::NotImp);
        }
        let Ok(info) = request.request_info() else {
            return Answer::code(ResponseCode::FormErr);
        };
        let name: Name = info.query.original().name().clone();
        let qtype = info.query.query_type();
        let Some(target) = parse(&name, &self.config.zone) else {
            return Answer::code(ResponseCode::Refused);
        };
        let mut out = Answer::default();
        match target {
            Target::Apex => {
                if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                    out.answers.push(self.soa());
                } else {
                    out.soa.push(self.soa());
                }
            }
            Target::Unknown => {
                out.code = ResponseCode::NXDomain;
                out.soa.push(self.soa());
            }
            Target::Addr(ip) => {
                match (ip, qtype) {
                    (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => {
                        out.answers.push(self.record(name, RData::A(A(v4))))
                    }
                    (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => {
                        out.answers.push(self.record(name, RData::AAAA(AAAA(v6))))
                    }
                    _ => {}
                }
                if out.answers.is_empty() {
                    out.soa.push(self.soa());
                }
            }
            Target::Service(svc) => match self.service(&svc, request.src()).await {
                Ok(Some(hosts)) => {
                    self.service_records(&name, qtype, &hosts, &mut out);
                    if out.answers.is_empty() {
                        out.soa.push(self.soa());
                    }
                }
                Ok(None) => {
                    out.code = ResponseCode::NXDomain;
                    out.soa.push(self.soa());
                }
                Err(code) => return Answer::code(code),
            },
        }
        out
    }

    /// The instances of `svc` to answer (healthy ones, or all enabled ones past the protection
    /// threshold, with a weight above 0); `None` when the service is unknown.
    async fn service(
        &self,
        svc: &ServiceName,
        src: SocketAddr,
    ) -> Result<Option<Vec<mast_nacos::naming_v1::Host>>, ResponseCode> {
        let caller = self.caller(src);
        let refuse = |e: ApiError| {
            tracing::debug!(service = %svc.segment(), error = %e.message, "DNS query not answered");
            match e.code {
                ErrorCode::Unauthenticated | ErrorCode::PermissionDenied => ResponseCode::Refused,
                _ => ResponseCode::ServFail,
            }
        };
        let hosts = mast_nacos::naming_v1::hosts_of(&self.node, &caller, svc)
            .await
            .map_err(refuse)?;
        let meta = mast_nacos::naming_v1::service_meta(&self.node, &caller, svc)
            .await
            .map_err(refuse)?;
        if hosts.is_empty() && meta.is_none() {
            return Ok(None);
        }
        let threshold = meta.map_or(0.0, |(m, _)| m.protect_threshold);
        let info = mast_nacos::naming_v1::service_info(svc, hosts, "", true, threshold);
        if info.reach_protection_threshold {
            tracing::debug!(service = %svc.segment(), "DNS answer past the protection threshold");
        }
        Ok(Some(
            info.hosts.into_iter().filter(|h| h.weight > 0.0).collect(),
        ))
    }

    fn service_records(
        &self,
        name: &Name,
        qtype: RecordType,
        hosts: &[mast_nacos::naming_v1::Host],
        out: &mut Answer,
    ) {
        let want = |t: RecordType| qtype == t || qtype == RecordType::ANY;
        for h in hosts {
            let ip = h.ip.parse::<IpAddr>().ok();
            match ip {
                Some(IpAddr::V4(v4)) if want(RecordType::A) => {
                    out.answers.push(self.record(name.clone(), RData::A(A(v4))))
                }
                Some(IpAddr::V6(v6)) if want(RecordType::AAAA) => out
                    .answers
                    .push(self.record(name.clone(), RData::AAAA(AAAA(v6)))),
                _ => {}
            }
            if !want(RecordType::SRV) {
                continue;
            }
            let target = match ip {
                Some(ip) => Name::from_ascii(format!("{}.addr", encode_addr(ip)))
                    .and_then(|n| n.append_domain(&self.config.zone)),
                None => Name::from_ascii(format!("{}.", h.ip.trim_end_matches('.'))),
            };
            let Ok(target) = target else { continue };
            out.answers.push(self.record(
                name.clone(),
                RData::SRV(SRV::new(0, srv_weight(h.weight), h.port, target.clone())),
            ));
            match ip {
                Some(IpAddr::V4(v4)) => out.additionals.push(self.record(target, RData::A(A(v4)))),
                Some(IpAddr::V6(v6)) => out
                    .additionals
                    .push(self.record(target, RData::AAAA(AAAA(v6)))),
                None => {}
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let answer = self.answer(request).await;
        metrics::counter!("mast_dns_queries_total", "rcode" => answer.code.to_str()).increment(1);
        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(answer.code != ResponseCode::Refused);
        header.set_response_code(answer.code);
        let message = MessageResponseBuilder::from_message_request(request).build(
            header,
            answer.answers.iter(),
            std::iter::empty::<&Record>(),
            answer.soa.iter(),
            answer.additionals.iter(),
        );
        match response.send_response(message).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "sending a DNS answer failed");
                let mut header = Header::response_from_request(request.header());
                header.set_response_code(ResponseCode::ServFail);
                header.into()
            }
        }
    }
}

/// A running DNS server.
pub struct DnsServer {
    inner: ServerFuture<DnsHandler>,
    addr: SocketAddr,
}

impl DnsServer {
    /// Serves `node`'s registry over DNS on `addr`, UDP and TCP (port 0: one free port, the
    /// same for both).
    ///
    /// # Errors
    /// [`DnsError::Bind`] when the UDP or TCP port cannot be bound.
    pub async fn start(
        node: Arc<Node>,
        addr: SocketAddr,
        config: DnsConfig,
    ) -> Result<DnsServer, DnsError> {
        let udp = tokio::net::UdpSocket::bind(addr)
            .await
            .map_err(|e| DnsError::Bind(addr, e))?;
        let bound = udp.local_addr().map_err(|e| DnsError::Bind(addr, e))?;
        let tcp = tokio::net::TcpListener::bind(bound)
            .await
            .map_err(|e| DnsError::Bind(bound, e))?;
        let mut inner = ServerFuture::new(DnsHandler::new(node, config));
        inner.register_socket(udp);
        inner.register_listener(tcp, TCP_IDLE);
        Ok(DnsServer { inner, addr: bound })
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops answering and waits for the sockets to close.
    pub async fn shutdown(mut self) {
        if let Err(e) = self.inner.shutdown_gracefully().await {
            tracing::debug!(error = %e, "DNS server stopped with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Name {
        Name::from_ascii("mast.").unwrap()
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn service_names_map_to_namespace_group_and_service() {
        let z = zone();
        assert_eq!(
            parse(&name("user-service.service.mast."), &z),
            Some(Target::Service(ServiceName::new("", "", "user-service")))
        );
        assert_eq!(
            parse(&name("User-Service.SERVICE.Mast."), &z),
            Some(Target::Service(ServiceName::new("", "", "User-Service"))),
            "the service keeps its case; the rest is case-insensitive"
        );
        assert_eq!(
            parse(&name("orders.shop.service.mast."), &z),
            Some(Target::Service(ServiceName::new("", "shop", "orders")))
        );
        assert_eq!(
            parse(&name("orders.shop.dev.service.mast."), &z),
            Some(Target::Service(ServiceName::new("dev", "shop", "orders")))
        );
        assert_eq!(
            parse(&name("_orders._tcp.shop.service.mast."), &z),
            Some(Target::Service(ServiceName::new("", "shop", "orders")))
        );
        assert_eq!(
            parse(&name("a.b.c.d.service.mast."), &z),
            Some(Target::Unknown)
        );
        assert_eq!(parse(&name("mast."), &z), Some(Target::Apex));
        assert_eq!(parse(&name("x.other.mast."), &z), Some(Target::Unknown));
        assert_eq!(parse(&name("user-service.service.consul."), &z), None);
    }

    #[test]
    fn addresses_round_trip_through_their_label() {
        let z = zone();
        for ip in ["10.0.0.1", "255.255.255.255", "::1", "fe80::1:2"] {
            let ip: IpAddr = ip.parse().unwrap();
            let n = name(&format!("{}.addr.mast.", encode_addr(ip)));
            assert_eq!(parse(&n, &z), Some(Target::Addr(ip)), "{ip}");
        }
        assert_eq!(
            parse(&name("0a00001.addr.mast."), &z),
            Some(Target::Unknown)
        );
        assert_eq!(
            parse(&name("zz000001.addr.mast."), &z),
            Some(Target::Unknown)
        );
    }

    #[test]
    fn srv_weights_scale_nacos_weights() {
        assert_eq!(srv_weight(1.0), 100);
        assert_eq!(srv_weight(0.5), 50);
        assert_eq!(srv_weight(0.001), 1);
        assert_eq!(srv_weight(10_000.0), u16::MAX);
    }

    #[test]
    fn zones_get_their_trailing_dot() {
        assert_eq!(DnsConfig::new("corp", 5, None).unwrap().zone, name("corp."));
        assert!(DnsConfig::new("a..b", 5, None).is_err());
    }
}
