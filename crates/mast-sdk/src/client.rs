//! The connection: endpoints, credentials, and the etcd v3 calls the SDK is built from.

use std::sync::Arc;
use std::time::Duration;

use mast_proto::etcdserverpb::{
    AuthenticateRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse, auth_client::AuthClient,
    cluster_client::ClusterClient, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, watch_client::WatchClient,
};
use tokio::sync::RwLock;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// Errors of the SDK.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No endpoint given, or one that is not a URL.
    #[error("bad endpoint: {0}")]
    Endpoint(String),
    /// The server answered with an error.
    #[error("server error: {0}")]
    Server(#[from] Status),
    /// A stored value is not what the data model says.
    #[error("bad stored value at {key}: {message}")]
    Data {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A name that cannot be a key segment.
    #[error(transparent)]
    Name(#[from] mast_model::NameError),
    /// Content refused by its format or schema.
    #[error(transparent)]
    Validation(#[from] mast_model::ValidationError),
    /// What was asked for does not exist (an instance that is not registered).
    #[error("not found: {0}")]
    NotFound(String),
    /// An argument out of range (a negative weight).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A conflicting concurrent change won too many times.
    #[error("too many concurrent changes to {0}; try again")]
    Conflict(String),
    /// Reading or writing the local config cache failed.
    #[error("config cache: {0}")]
    Cache(#[from] std::io::Error),
}

/// A result of the SDK.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to reach the server.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// gRPC endpoints, e.g. `http://127.0.0.1:2379` (a bare `host:port` means http).
    pub endpoints: Vec<String>,
    /// User name, when auth is on.
    pub user: Option<String>,
    /// Password of `user`.
    pub password: Option<String>,
    /// How long to wait for a connection before a call fails.
    pub connect_timeout: Duration,
    /// For how long (in total backoff) a call that failed because a member is down or has no
    /// leader is sent again, to whichever member answers: reads on any `Unavailable`, writes
    /// only when they never reached a member (as etcd's clientv3 retry policies), so a write
    /// is never applied twice. Zero: never sent again.
    pub retry_for: Duration,
    /// This client's id in config rollout reports (`MAST_CLIENT_ID`; default
    /// `<host>-<pid>-<random>`). A key segment: no `/`. Also what percentage gray releases
    /// choose clients by.
    pub client_id: String,
    /// Labels this client declares, for gray releases with a labels rule (`MAST_CLIENT_LABELS`,
    /// `k=v` pairs separated by commas), e.g. `zone=eu`, `canary=true`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// This client's address, for gray releases with an ip rule (`MAST_CLIENT_IP`); none by
    /// default.
    pub ip: Option<std::net::IpAddr>,
}

/// A client id unique enough to tell processes apart: the host name (`HOSTNAME`), the
/// process id and a random part from the clock.
fn default_client_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty() && !h.contains('/'))
        .unwrap_or_else(|| "client".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{host}-{}-{nanos:08x}", std::process::id())
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            user: None,
            password: None,
            connect_timeout: Duration::from_secs(5),
            retry_for: Duration::from_secs(5),
            client_id: default_client_id(),
            labels: Default::default(),
            ip: None,
        }
    }
}

impl ClientOptions {
    /// Options from the environment: `MAST_ENDPOINTS` (comma-separated), `MAST_USER`,
    /// `MAST_PASSWORD`, each falling back to etcdctl's `ETCDCTL_ENDPOINTS`, `ETCDCTL_USER`
    /// (which may be `user:password`) and `ETCDCTL_PASSWORD`.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`ClientOptions::from_env`], reading variables through `get` (for tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let pick = |a: &str, b: &str| get(a).or_else(|| get(b)).filter(|v| !v.is_empty());
        let mut o = ClientOptions::default();
        if let Some(e) = pick("MAST_ENDPOINTS", "ETCDCTL_ENDPOINTS") {
            o.endpoints = e
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(id) = get("MAST_CLIENT_ID").filter(|v| !v.is_empty()) {
            o.client_id = id;
        }
        if let Some(labels) = get("MAST_CLIENT_LABELS") {
            o.labels = labels
                .split(',')
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, _)| !k.is_empty())
                .collect();
        }
        o.ip = get("MAST_CLIENT_IP").and_then(|v| v.trim().parse().ok());
        o.user = pick("MAST_USER", "ETCDCTL_USER");
        o.password = pick("MAST_PASSWORD", "ETCDCTL_PASSWORD");
        if o.password.is_none()
            && let Some(u) = o.user.clone()
            && let Some((name, pw)) = u.split_once(':')
        {
            o.user = Some(name.to_string());
            o.password = Some(pw.to_string());
        }
        o
    }
}

/// A channel that adds the auth token to every call.
pub type Authed = InterceptedService<Channel, TokenInterceptor>;

/// Adds the current auth token to every call.
#[derive(Clone)]
pub struct TokenInterceptor {
    token: Arc<std::sync::RwLock<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>>>,
}

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(t) = self.token.read().expect("token lock").clone() {
            req.metadata_mut().insert("token", t);
        }
        Ok(req)
    }
}

/// A connection to Mast or any etcd v3 server. Cheap to clone; clones share the connection
/// and the auth token.
#[derive(Clone)]
pub struct Client {
    pub(crate) kv: KvClient<Authed>,
    pub(crate) lease: LeaseClient<Authed>,
    pub(crate) watch: WatchClient<Authed>,
    auth: AuthClient<Channel>,
    channel: Channel,
    token: TokenInterceptor,
    creds: Option<(String, String)>,
    login: Arc<RwLock<()>>,
    retry_for: Duration,
    /// This client's id in rollout reports.
    pub(crate) client_id: Arc<str>,
    /// The lease rollout reports are attached to, kept alive while any clone of the client
    /// lives (see [`crate::rollout`]).
    pub(crate) session: Arc<crate::rollout::Session>,
    /// What gray releases choose this client by.
    pub(crate) facts: Arc<mast_model::ClientFacts>,
}

/// Which calls may be sent again after an `Unavailable` answer, as etcd's clientv3 retry
/// policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Reads (etcd's `repeatable`): sent again on any `Unavailable` — a member down,
    /// `etcdserver: no leader`, `etcdserver: leader changed`.
    Repeatable,
    /// Writes (etcd's `nonRepeatable`): sent again only when no connection could be made,
    /// so the write cannot have been applied.
    NonRepeatable,
}

impl Retry {
    /// Whether `s` allows sending the call again under this policy.
    fn allows(self, s: &Status) -> bool {
        s.code() == Code::Unavailable
            && match self {
                Retry::Repeatable => true,
                Retry::NonRepeatable => never_sent(s),
            }
    }
}

/// Whether a call failed before reaching any member: the status was made by the transport
/// from a failed connect (its sources hold tonic's `ConnectError`).
fn never_sent(s: &Status) -> bool {
    let mut cause = std::error::Error::source(s);
    while let Some(e) = cause {
        if e.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        cause = e.source();
    }
    false
}

impl Client {
    /// Connects (lazily: the first call dials) and logs in when a user is given.
    ///
    /// # Errors
    /// [`Error::Endpoint`] for a bad endpoint; the server's error when login fails.
    pub async fn connect(options: ClientOptions) -> Result<Client> {
        let mut endpoints = Vec::new();
        for e in &options.endpoints {
            let url = if e.contains("://") {
                e.clone()
            } else {
                format!("http://{e}")
            };
            let ep = Endpoint::from_shared(url.clone())
                .map_err(|err| Error::Endpoint(format!("{url}: {err}")))?
                .connect_timeout(options.connect_timeout)
                .tcp_nodelay(true);
            endpoints.push(ep);
        }
        let channel = match endpoints.len() {
            0 => return Err(Error::Endpoint("no endpoint".into())),
            1 => endpoints.pop().expect("one").connect_lazy(),
            _ => Channel::balance_list(endpoints.into_iter()),
        };
        let token = TokenInterceptor {
            token: Arc::new(std::sync::RwLock::new(None)),
        };
        let client = Client {
            kv: KvClient::with_interceptor(channel.clone(), token.clone()),
            lease: LeaseClient::with_interceptor(channel.clone(), token.clone()),
            watch: WatchClient::with_interceptor(channel.clone(), token.clone()),
            auth: AuthClient::new(channel.clone()),
            channel,
            token,
            creds: options
                .user
                .map(|u| (u, options.password.unwrap_or_default())),
            login: Arc::new(RwLock::new(())),
            retry_for: options.retry_for,
            facts: Arc::new(mast_model::ClientFacts {
                id: options.client_id.clone(),
                labels: options.labels,
                ip: options.ip,
            }),
            client_id: options.client_id.into(),
            session: Arc::default(),
        };
        if client.creds.is_some() {
            client.authenticate().await?;
        }
        Ok(client)
    }

    /// The user this client logs in as, if any.
    pub fn user(&self) -> Option<&str> {
        self.creds.as_ref().map(|(name, _)| name.as_str())
    }

    /// Logs in again (after the token expired or the auth revision moved).
    async fn authenticate(&self) -> Result<()> {
        let Some((name, password)) = self.creds.clone() else {
            return Ok(());
        };
        let _guard = self.login.write().await;
        let resp = self
            .auth
            .clone()
            .authenticate(AuthenticateRequest { name, password })
            .await?
            .into_inner();
        let value = resp.token.parse().map_err(|_| Error::Data {
            key: "token".into(),
            message: "not ASCII".into(),
        })?;
        *self.token.token.write().expect("token lock") = Some(value);
        Ok(())
    }

    /// Runs `f`, logging in again once if the server says the token is no longer good.
    async fn with_login<T, F, Fut>(&self, f: &F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Status>>,
    {
        match f().await {
            Err(s) if self.creds.is_some() && is_token_error(&s) => {
                self.authenticate().await?;
                Ok(f().await?)
            }
            other => Ok(other?),
        }
    }

    /// Runs `f` (logging in again when the token is no longer good), sending it again under
    /// `policy` with exponential backoff (25 ms up to 500 ms, jittered) for at most
    /// [`ClientOptions::retry_for`] in total, so a call moves to another member when one dies.
    pub(crate) async fn call<T, F, Fut>(&self, policy: Retry, f: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Status>>,
    {
        use backon::Retryable;
        if self.retry_for.is_zero() {
            return self.with_login(&f).await;
        }
        let backoff = backon::ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(25))
            .with_max_delay(Duration::from_millis(500))
            .with_jitter()
            .without_max_times()
            .with_total_delay(Some(self.retry_for));
        (|| self.with_login(&f))
            .retry(backoff)
            .when(|e| matches!(e, Error::Server(s) if policy.allows(s)))
            .notify(|e, after| tracing::debug!(error = %e, ?after, "sending the call again"))
            .await
    }

    /// The raw etcd KV client (with the auth token), for calls the SDK does not wrap.
    pub fn kv_client(&self) -> KvClient<Authed> {
        self.kv.clone()
    }

    /// The raw etcd Lease client (with the auth token).
    pub fn lease_client(&self) -> LeaseClient<Authed> {
        self.lease.clone()
    }

    /// The raw etcd Watch client (with the auth token).
    pub fn watch_client(&self) -> WatchClient<Authed> {
        self.watch.clone()
    }

    /// The raw etcd Maintenance client (with the auth token).
    pub fn maintenance_client(&self) -> MaintenanceClient<Authed> {
        MaintenanceClient::with_interceptor(self.channel.clone(), self.token.clone())
    }

    /// The raw etcd Cluster client (with the auth token).
    pub fn cluster_client(&self) -> ClusterClient<Authed> {
        ClusterClient::with_interceptor(self.channel.clone(), self.token.clone())
    }

    /// The raw etcd Auth client (with the auth token): users, roles and permissions.
    pub fn auth_client(&self) -> AuthClient<Authed> {
        AuthClient::with_interceptor(self.channel.clone(), self.token.clone())
    }

    /// etcd Range.
    ///
    /// # Errors
    /// The server's error.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.call(Retry::Repeatable, || {
            let mut kv = self.kv.clone();
            let req = req.clone();
            async move { kv.range(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// etcd Put; returns the new revision.
    ///
    /// # Errors
    /// The server's error.
    pub async fn put(&self, req: PutRequest) -> Result<i64> {
        self.call(Retry::NonRepeatable, || {
            let mut kv = self.kv.clone();
            let req = req.clone();
            async move {
                kv.put(req)
                    .await
                    .map(|r| r.into_inner().header.map_or(0, |h| h.revision))
            }
        })
        .await
    }

    /// etcd DeleteRange; returns how many keys were deleted.
    ///
    /// # Errors
    /// The server's error.
    pub async fn delete(&self, req: DeleteRangeRequest) -> Result<i64> {
        self.call(Retry::NonRepeatable, || {
            let mut kv = self.kv.clone();
            let req = req.clone();
            async move { kv.delete_range(req).await.map(|r| r.into_inner().deleted) }
        })
        .await
    }

    /// etcd Txn.
    ///
    /// # Errors
    /// The server's error.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse> {
        self.call(Retry::NonRepeatable, || {
            let mut kv = self.kv.clone();
            let req = req.clone();
            async move { kv.txn(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// Grants a lease of `ttl` seconds; returns its ID.
    ///
    /// # Errors
    /// The server's error.
    pub async fn grant(&self, ttl: i64) -> Result<i64> {
        self.call(Retry::NonRepeatable, || {
            let mut lease = self.lease.clone();
            async move {
                lease
                    .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                    .await
                    .map(|r| r.into_inner().id)
            }
        })
        .await
    }

    /// Revokes a lease (deleting its keys).
    ///
    /// # Errors
    /// The server's error.
    pub async fn revoke(&self, id: i64) -> Result<()> {
        self.call(Retry::NonRepeatable, || {
            let mut lease = self.lease.clone();
            async move {
                lease
                    .lease_revoke(LeaseRevokeRequest { id })
                    .await
                    .map(|_| ())
            }
        })
        .await
    }
}

/// Whether a status asks the client to log in again.
pub(crate) fn is_token_error(s: &Status) -> bool {
    s.code() == Code::Unauthenticated
        || s.message().contains("revision of auth store is old")
        || s.message().contains("invalid auth token")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_from_env_fall_back_to_etcdctl() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let o = ClientOptions::from_lookup(env(&[
            ("ETCDCTL_ENDPOINTS", "a:1,b:2"),
            ("ETCDCTL_USER", "root:guang"),
        ]));
        assert_eq!(o.endpoints, vec!["a:1", "b:2"]);
        assert_eq!(
            (o.user.as_deref(), o.password.as_deref()),
            (Some("root"), Some("guang"))
        );
        let o = ClientOptions::from_lookup(env(&[
            ("MAST_USER", "app"),
            ("MAST_PASSWORD", "pw"),
            ("ETCDCTL_USER", "x:y"),
        ]));
        assert_eq!(
            (o.user.as_deref(), o.password.as_deref()),
            (Some("app"), Some("pw"))
        );
        assert_eq!(
            ClientOptions::from_lookup(|_| None).endpoints,
            vec!["http://127.0.0.1:2379"]
        );
    }
}
