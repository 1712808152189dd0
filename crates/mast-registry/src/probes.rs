//! Health probes of persistent instances (instances whose key has no lease), run by the
//! leader alone, so each instance is probed by one member of a cluster.
//!
//! An instance is probed when it has a valid health check ([`mast_model::HealthCheck`]) in
//! its own JSON or in its service's settings (`healthCheck`; the instance's wins). Each
//! probed instance has its own task: every `intervalMs` it makes one TCP connect, HTTP GET
//! (2xx or 3xx passes; redirects are not followed) or gRPC `grpc.health.v1.Health/Check`
//! (`SERVING` passes), bounded by `timeoutMs`. After `unhealthyThreshold` failures in a row a
//! healthy instance is marked `"healthy": false` with `healthDetail` (why); after
//! `healthyThreshold` successes in a row an unhealthy one is marked healthy again. Marks are
//! written only when they change, as a Txn guarded by the instance key's mod revision; the
//! instance is never deleted. Probes run beside the write path and never wait on it.
//!
//! The set of probed instances follows the commits: an instance key or a service's settings
//! that change are read again (as the server, [`Node::range_as_server`]). A member that
//! becomes leader reads every service; one that stops leading stops its probes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mast_model::health::{HEALTH_CHECK_FIELD, HEALTH_DETAIL_FIELD};
use mast_model::{HealthCheck, Instance, ProbeKind, SERVICE_META_PREFIX, SERVICES_PREFIX};
use mast_proto::etcdserverpb::{RangeRequest, RangeResponse};
use mast_proto::mvccpb::KeyValue;
use mast_server::{EtcdError, Node};
use tokio::task::JoinHandle;

use crate::etcd;

/// What one probe task does: which address, with which check.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Spec {
    host: String,
    port: u16,
    check: HealthCheck,
}

impl Spec {
    /// `host:port` of the probe (IPv6 in brackets).
    fn authority(&self) -> String {
        let port = self.check.port.unwrap_or(self.port);
        if self.host.contains(':') {
            format!("[{}]:{port}", self.host)
        } else {
            format!("{}:{port}", self.host)
        }
    }
}

/// The check an instance's JSON names, when valid.
fn own_check(inst: &Instance, key: &[u8]) -> Option<HealthCheck> {
    let v = inst.extra.get(HEALTH_CHECK_FIELD)?;
    match HealthCheck::from_value(v) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(key = %String::from_utf8_lossy(key), error = %e,
                "ignoring the instance's health check");
            None
        }
    }
}

/// The probe of a stored key: a persistent instance with a check of its own or its
/// service's.
fn spec_of(kv: &KeyValue, service_check: Option<&HealthCheck>) -> Option<Spec> {
    if kv.lease != 0 {
        return None;
    }
    let inst = Instance::from_json(&kv.value).ok()?;
    let check = own_check(&inst, &kv.key).or_else(|| service_check.cloned())?;
    Some(Spec {
        host: inst.host,
        port: inst.port,
        check,
    })
}

/// The probe tasks of a leader.
struct Prober {
    node: Arc<Node>,
    http: reqwest::Client,
    /// By instance key.
    targets: BTreeMap<Vec<u8>, (Spec, JoinHandle<()>)>,
}

impl crate::leader::LeaderWork for Prober {
    async fn everything(&mut self) {
        self.refresh_all();
    }

    fn stop_leading(&mut self) {
        self.stop_all();
    }

    async fn events(&mut self, events: &[mast_proto::mvccpb::Event]) {
        for ev in events {
            let Some(kv) = ev.kv.as_ref() else { continue };
            if let Some((segment, _)) = mast_model::parse_instance_key(&kv.key) {
                let segment = segment.to_string();
                self.instance_changed(kv, ev.r#type == 0, &segment);
            } else if let Some(segment) = std::str::from_utf8(&kv.key)
                .ok()
                .and_then(|k| k.strip_prefix(SERVICE_META_PREFIX))
            {
                let segment = segment.to_string();
                self.refresh_service(&segment);
            }
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop_all();
    }
}

impl Prober {
    fn read(&self, key: &[u8], end: Option<Vec<u8>>) -> Option<RangeResponse> {
        let req = RangeRequest {
            key: key.to_vec().into(),
            range_end: end.unwrap_or_default().into(),
            serializable: true,
            ..Default::default()
        };
        match self.node.range_as_server(&req) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "reading instances to probe failed");
                None
            }
        }
    }

    /// The service's check from its settings, if valid.
    fn service_check(&self, segment: &str) -> Option<HealthCheck> {
        let key = format!("{SERVICE_META_PREFIX}{segment}");
        let kv = self.read(key.as_bytes(), None)?.kvs.into_iter().next()?;
        let meta: serde_json::Value = serde_json::from_slice(&kv.value).ok()?;
        let v = meta.get(HEALTH_CHECK_FIELD)?;
        match HealthCheck::from_value(v) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(service = %segment, error = %e, "ignoring the service's health check");
                None
            }
        }
    }

    /// Starts, restarts or stops the probe of `key`.
    fn set(&mut self, key: &[u8], spec: Option<Spec>) {
        match (self.targets.get(key), spec) {
            (Some((old, _)), Some(new)) if *old == new => {}
            (_, Some(new)) => {
                let task = tokio::spawn(run(
                    self.node.clone(),
                    self.http.clone(),
                    key.to_vec(),
                    new.clone(),
                ));
                if let Some((_, old)) = self.targets.insert(key.to_vec(), (new, task)) {
                    old.abort();
                }
            }
            (Some(_), None) => {
                if let Some((_, old)) = self.targets.remove(key) {
                    old.abort();
                }
            }
            (None, None) => {}
        }
    }

    /// Follows a committed change of an instance key (`kv` as the event carries it).
    fn instance_changed(&mut self, kv: &KeyValue, put: bool, segment: &str) {
        // The service's settings are read only for a persistent instance without a check of
        // its own.
        let spec = (put && kv.lease == 0)
            .then(|| {
                spec_of(kv, None).or_else(|| {
                    let check = self.service_check(segment);
                    spec_of(kv, check.as_ref())
                })
            })
            .flatten();
        self.set(&kv.key, spec);
    }

    /// Reads every instance of a service again.
    fn refresh_service(&mut self, segment: &str) {
        let prefix = mast_model::service_prefix(segment);
        let end = mast_model::prefix_end(prefix.as_bytes());
        let Some(resp) = self.read(prefix.as_bytes(), Some(end.clone())) else {
            return;
        };
        let check = self.service_check(segment);
        let mut seen = Vec::new();
        for kv in &resp.kvs {
            if mast_model::parse_instance_key(&kv.key).is_some() {
                self.set(&kv.key, spec_of(kv, check.as_ref()));
                seen.push(kv.key.to_vec());
            }
        }
        let gone: Vec<Vec<u8>> = self
            .targets
            .range(prefix.as_bytes().to_vec()..end)
            .map(|(k, _)| k.clone())
            .filter(|k| !seen.contains(k))
            .collect();
        for k in gone {
            self.set(&k, None);
        }
    }

    /// Reads every service again.
    fn refresh_all(&mut self) {
        let end = mast_model::prefix_end(SERVICES_PREFIX.as_bytes());
        let Some(resp) = self.read(SERVICES_PREFIX.as_bytes(), Some(end)) else {
            return;
        };
        let mut checks: BTreeMap<String, Option<HealthCheck>> = BTreeMap::new();
        let mut want: BTreeMap<Vec<u8>, Spec> = BTreeMap::new();
        for kv in &resp.kvs {
            let Some((segment, _)) = mast_model::parse_instance_key(&kv.key) else {
                continue;
            };
            if kv.lease != 0 {
                continue;
            }
            let check = checks
                .entry(segment.to_string())
                .or_insert_with(|| self.service_check(segment))
                .clone();
            if let Some(spec) = spec_of(kv, check.as_ref()) {
                want.insert(kv.key.to_vec(), spec);
            }
        }
        let stale: Vec<Vec<u8>> = self
            .targets
            .keys()
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        for k in stale {
            self.set(&k, None);
        }
        for (k, spec) in want {
            self.set(&k, Some(spec));
        }
    }

    fn stop_all(&mut self) {
        for (_, (_, task)) in std::mem::take(&mut self.targets) {
            task.abort();
        }
    }
}

/// Starts the prober on `node` until the node shuts down (it probes only while the member
/// leads).
pub fn spawn_prober(node: Arc<Node>) {
    let http = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("mast-probe/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no HTTP client for health probes; probes are off");
            return;
        }
    };
    crate::leader::spawn(
        node.clone(),
        Prober {
            node,
            http,
            targets: BTreeMap::new(),
        },
    );
}

/// One instance's probe loop.
async fn run(node: Arc<Node>, http: reqwest::Client, key: Vec<u8>, spec: Spec) {
    let check = &spec.check;
    let mut tick = tokio::time::interval(Duration::from_millis(check.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let grpc = (check.kind == ProbeKind::Grpc)
        .then(|| {
            tonic::transport::Endpoint::from_shared(format!("http://{}", spec.authority()))
                .ok()
                .map(|e| {
                    e.connect_timeout(Duration::from_millis(check.timeout_ms))
                        .connect_lazy()
                })
        })
        .flatten();
    let mut last: Option<bool> = None;
    let mut streak = 0u32;
    loop {
        tick.tick().await;
        let result = probe(&http, grpc.as_ref(), &spec).await;
        let ok = result.is_ok();
        metrics::counter!("mast_health_probes_total",
            "type" => check.kind.name(), "result" => if ok { "pass" } else { "fail" })
        .increment(1);
        if last == Some(ok) {
            streak = streak.saturating_add(1);
        } else {
            last = Some(ok);
            streak = 1;
        }
        let needed = if ok {
            check.healthy_threshold
        } else {
            check.unhealthy_threshold
        };
        if streak >= needed
            && let Err(e) = mark(&node, &key, ok, result.err()).await
        {
            tracing::debug!(key = %String::from_utf8_lossy(&key), error = %e,
                "recording a probe result failed; the next probe tries again");
        }
    }
}

/// One probe of `spec`, bounded by its timeout. `Err` says why it failed.
async fn probe(
    http: &reqwest::Client,
    grpc: Option<&tonic::transport::Channel>,
    spec: &Spec,
) -> Result<(), String> {
    let check = &spec.check;
    let timeout = Duration::from_millis(check.timeout_ms);
    let authority = spec.authority();
    let attempt = async {
        match check.kind {
            ProbeKind::Tcp => tokio::net::TcpStream::connect(&authority)
                .await
                .map(drop)
                .map_err(|e| format!("tcp connect to {authority}: {e}")),
            ProbeKind::Http => {
                let url = format!("http://{authority}{}", check.path.as_deref().unwrap_or("/"));
                match http.get(&url).timeout(timeout).send().await {
                    Ok(r) if r.status().is_success() || r.status().is_redirection() => Ok(()),
                    Ok(r) => Err(format!("http GET {url}: status {}", r.status().as_u16())),
                    Err(e) if e.is_timeout() => Err(timed_out(spec)),
                    Err(e) => Err(format!("http GET {url}: {}", chain(&e))),
                }
            }
            ProbeKind::Grpc => {
                let Some(channel) = grpc else {
                    return Err(format!("grpc: {authority} is not a valid address"));
                };
                let service = check.grpc_service.clone().unwrap_or_default();
                let mut client =
                    tonic_health::pb::health_client::HealthClient::new(channel.clone());
                match client
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: service.clone(),
                    })
                    .await
                {
                    Ok(r)
                        if r.get_ref().status
                            == tonic_health::pb::health_check_response::ServingStatus::Serving
                                as i32 =>
                    {
                        Ok(())
                    }
                    Ok(r) => Err(format!(
                        "grpc health of {service:?} at {authority}: {:?}",
                        tonic_health::pb::health_check_response::ServingStatus::try_from(
                            r.get_ref().status
                        )
                        .unwrap_or(tonic_health::pb::health_check_response::ServingStatus::Unknown)
                    )),
                    Err(s) => Err(format!(
                        "grpc health of {service:?} at {authority}: {:?} {}",
                        s.code(),
                        s.message()
                    )),
                }
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(timed_out(spec)),
    }
}

/// Why a probe failed when it ran out of time.
fn timed_out(spec: &Spec) -> String {
    format!(
        "{} probe of {} timed out after {} ms",
        spec.check.kind.name(),
        spec.authority(),
        spec.check.timeout_ms
    )
}

/// An error and its sources, `: `-separated (reqwest's own text names only the URL).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Writes `healthy` (and, when unhealthy, `detail`) into the instance's JSON if its stored
/// flag differs, as the server, guarded by the key's mod revision. Nothing happens when the
/// key is gone, has a lease now, or this member no longer leads.
async fn mark(
    node: &Node,
    key: &[u8],
    healthy: bool,
    detail: Option<String>,
) -> Result<(), EtcdError> {
    if !node.is_leader() {
        return Ok(());
    }
    let key_text = String::from_utf8_lossy(key).into_owned();
    let changed = etcd::rewrite_instance_as_system(node, &key_text, "health-probe", |kv, inst| {
        if kv.lease != 0 || crate::instances::stored_healthy(&inst.extra) == healthy {
            return false;
        }
        inst.extra
            .insert("healthy".into(), serde_json::Value::Bool(healthy));
        match detail.filter(|_| !healthy) {
            Some(d) => inst
                .extra
                .insert(HEALTH_DETAIL_FIELD.into(), serde_json::Value::String(d)),
            None => inst.extra.remove(HEALTH_DETAIL_FIELD),
        };
        true
    })
    .await?;
    if changed {
        metrics::counter!("mast_health_transitions_total",
            "to" => if healthy { "healthy" } else { "unhealthy" })
        .increment(1);
        tracing::info!(key = %key_text, healthy, "health probe changed an instance's health");
    }
    Ok(())
}
