//! `GET /mast/v1/events`: instance and config changes as Server-Sent Events.
//!
//! The stream is an etcd watch session (`mast_server::api::watch::open_session`, with the
//! caller's token) with one watcher, so events arrive in revision order and a revision is
//! never split between two watchers. For one kind it watches that kind's prefix
//! (`/services/[<service>/]` or `/configs/[<namespace>/[<group>/]]`); for both it watches the
//! key range from the config prefix to the end of the instance prefix and skips the keys in
//! between, so a user whose roles allow only the two prefixes asks for one kind per stream.
//! Each change becomes
//! one event named `instance` or `config` whose JSON says the op (`put`/`delete`), which
//! instance or config, the revision, and the new value. The SSE `id` is the revision, set on
//! the last event of each revision only, so a client that reconnects with `Last-Event-ID`
//! never skips part of a revision: the stream resumes at the revision after it. `?revision=N`
//! starts at revision `N` itself (as etcd's `start_revision`); neither means "from now".
//!
//! With `clientId` / `labels`, config events carry the version meant for that client (a gray
//! release's content, with `gray` naming it), and the watched range starts at `/config-gray/`
//! so a gray starting, changing or stopping sends the client its new version (the caller
//! needs read permission from there on).
//!
//! The first event, `ready`, carries the revision the watch was created at. A resume point
//! older than the compacted revision is refused with 410 before the stream starts (and ends a
//! running stream with an event `canceled`): list again and follow from the list's revision.
//! Streams are capped ([`crate::RegistryConfig::max_event_streams`]), buffer a bounded number
//! of events, send a keep-alive comment every 15 s, and end when the server shuts down.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use mast_model::config::CONTENT_PREFIX;
use mast_model::gray::GRAY_PREFIX;
use mast_model::{ConfigFormat, ConfigId, ConfigMeta, check_name, md5_hex, parse_instance_key};
use mast_proto::etcdserverpb::{
    WatchCreateRequest, WatchRequest, WatchResponse, watch_request::RequestUnion,
};
use mast_proto::mvccpb::{KeyValue, event::EventType};
use mast_server::Node;
use mast_server::authz::Caller;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::AppState;
use crate::error::{ApiError, ApiResult, Call, ErrorCode, QueryParams};
use crate::etcd;
use crate::instances::InstanceView;

/// Watch id of the stream's one watcher.
const WATCH_ID: i64 = 1;
/// Events buffered per stream before the watch session waits for the client.
const STREAM_BUFFER: usize = 256;
/// Interval of keep-alive comments.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long the watch may take to be created.
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect delay suggested to clients.
const RETRY: Duration = Duration::from_secs(3);

/// Query of `GET /mast/v1/events`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventsQuery {
    /// First revision to send (inclusive); wins over `Last-Event-ID`.
    pub revision: Option<i64>,
    /// `instance` or `config`: only that kind (default both).
    pub kind: Option<String>,
    /// Only instances of this service.
    pub service: Option<String>,
    /// Only configs of this namespace.
    pub namespace: Option<String>,
    /// Only configs of this group.
    pub group: Option<String>,
    /// The auth token, for clients that cannot set headers (browsers' `EventSource`); the
    /// `Authorization` header wins.
    pub token: Option<String>,
    /// This client's id, for gray releases with a percentage rule: config events then carry
    /// the version meant for this client (see [`Plan::facts`]).
    pub client_id: Option<String>,
    /// This client's labels (`k=v` pairs separated by commas), for gray releases with a labels
    /// rule; as `client_id`.
    pub labels: Option<String>,
}

/// The `data` of an `instance` event.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceEvent {
    /// `instance`.
    pub kind: &'static str,
    /// `put` or `delete`.
    pub op: &'static str,
    /// Service name.
    pub service: String,
    /// Instance id.
    pub id: String,
    /// Revision of the change.
    pub revision: i64,
    /// The instance after a put (`null` after a delete, or when the value is not instance
    /// JSON).
    pub instance: Option<InstanceView>,
}

/// The `data` of a `config` event.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigEvent {
    /// `config`.
    pub kind: &'static str,
    /// `put` or `delete`.
    pub op: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Group.
    pub group: String,
    /// Data id.
    pub data_id: String,
    /// Revision of the change.
    pub revision: i64,
    /// The new content after a put.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Hex MD5 of the new content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// The config version published at this revision (absent for a plain etcd put).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The format published at this revision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<ConfigFormat>,
    /// The gray release whose content this is (a stream that named its client).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gray: Option<String>,
}

/// Which kinds of change a stream carries, with their key prefixes.
enum Watched {
    /// Instances under this prefix.
    Instances(String),
    /// Config contents under this prefix.
    Configs(String),
    /// Both.
    Both {
        /// Instance key prefix.
        instances: String,
        /// Config content key prefix.
        configs: String,
    },
}

/// What the stream watches, from the query.
struct Plan {
    watched: Watched,
    /// Only configs of this group (applied to keys when no namespace narrows the prefix).
    group: Option<String>,
    /// The client, when the stream named one (`clientId` / `labels`; its address is the
    /// connection's): config events carry the version meant for it, and the watched range
    /// starts at `/config-gray/` so that a gray release starting, changing or stopping sends
    /// the client its new version. The gray is chosen from the grays as they are when the
    /// event is sent.
    facts: Option<mast_model::ClientFacts>,
}

impl Plan {
    fn instances(&self) -> Option<&str> {
        match &self.watched {
            Watched::Instances(p) | Watched::Both { instances: p, .. } => Some(p),
            Watched::Configs(_) => None,
        }
    }

    fn configs(&self) -> Option<&str> {
        match &self.watched {
            Watched::Configs(p) | Watched::Both { configs: p, .. } => Some(p),
            Watched::Instances(_) => None,
        }
    }

    /// The one watched range `[key, end)`: a kind's prefix, or from the config prefix to the
    /// end of the instance prefix (`/configs/` sorts before `/services/`).
    fn range(&self) -> (Vec<u8>, Vec<u8>) {
        match &self.watched {
            Watched::Instances(p) => (p.as_bytes().to_vec(), mast_model::prefix_end(p.as_bytes())),
            Watched::Configs(p) => (self.config_start(p), mast_model::prefix_end(p.as_bytes())),
            Watched::Both { instances, configs } => (
                self.config_start(configs),
                mast_model::prefix_end(instances.as_bytes()),
            ),
        }
    }

    /// Where the config part of the range starts: the content prefix, or the gray prefix
    /// (which sorts before it) for a stream that named its client.
    fn config_start(&self, configs: &str) -> Vec<u8> {
        if self.facts.is_some() {
            GRAY_PREFIX.as_bytes().to_vec()
        } else {
            configs.as_bytes().to_vec()
        }
    }
}

fn plan(q: &EventsQuery) -> ApiResult<Plan> {
    let (want_instances, want_configs) = match q.kind.as_deref() {
        None | Some("") | Some("all") => (true, true),
        Some("instance") => (true, false),
        Some("config") => (false, true),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "kind must be instance, config or all, not {other:?}"
            )));
        }
    };
    let service = q.service.as_deref().filter(|s| !s.is_empty());
    let ns = q.namespace.as_deref().filter(|s| !s.is_empty());
    let group = q.group.as_deref().filter(|s| !s.is_empty());
    if let Some(s) = service {
        check_name("service", s)?;
    }
    if let Some(n) = ns {
        check_name("namespace", n)?;
    }
    if let Some(g) = group {
        check_name("group", g)?;
    }
    let instances = match service {
        Some(s) => mast_model::service_prefix(s),
        None => mast_model::SERVICES_PREFIX.to_string(),
    };
    let configs = match (ns, group) {
        (Some(n), Some(g)) => format!("{CONTENT_PREFIX}{n}/{g}/"),
        (Some(n), None) => format!("{CONTENT_PREFIX}{n}/"),
        _ => CONTENT_PREFIX.to_string(),
    };
    let watched = match (want_instances, want_configs) {
        (true, false) => Watched::Instances(instances),
        (false, true) => Watched::Configs(configs),
        _ => Watched::Both { instances, configs },
    };
    Ok(Plan {
        watched,
        group: group.map(str::to_string),
        facts: None,
    })
}

fn create(key: Vec<u8>, range_end: Vec<u8>, start: i64) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.into(),
            range_end: range_end.into(),
            start_revision: start,
            watch_id: WATCH_ID,
            ..Default::default()
        })),
    }
}

fn canceled_error(resp: &WatchResponse) -> ApiError {
    if resp.compact_revision > 0 {
        compacted(resp.compact_revision)
    } else if resp.cancel_reason.contains("permission denied") {
        ApiError::new(ErrorCode::PermissionDenied, resp.cancel_reason.clone())
    } else if resp.cancel_reason.contains("user name is empty")
        || resp.cancel_reason.contains("invalid auth token")
    {
        ApiError::new(ErrorCode::Unauthenticated, resp.cancel_reason.clone())
    } else {
        ApiError::internal(format!("watch canceled: {}", resp.cancel_reason))
    }
}

fn compacted(compact_revision: i64) -> ApiError {
    ApiError::new(
        ErrorCode::Compacted,
        format!(
            "revisions before {compact_revision} were compacted; list again and follow from \
             the list's revision + 1"
        ),
    )
}

/// `GET /mast/v1/events?revision=&kind=&service=&namespace=&group=`.
pub async fn stream(
    State(st): State<AppState>,
    Call(mut caller): Call,
    headers: HeaderMap,
    QueryParams(q): QueryParams<EventsQuery>,
) -> ApiResult<Response> {
    let node = st.node.clone();
    if caller.token.is_none() {
        caller.token = q.token.clone();
    }
    let mut plan = plan(&q)?;
    if q.client_id.is_some() || q.labels.is_some() {
        let client = crate::configs::ClientQuery {
            client_id: q.client_id.clone(),
            labels: q.labels.clone(),
        };
        plan.facts = Some(client.facts(&caller)?);
    }
    // Refuse before the stream starts, with a status, rather than with a canceled watch.
    let who = node.authenticate_caller(&caller)?;
    let (key, range_end) = plan.range();
    if let Err(e) = node.check_range(&who, &key, &range_end, false) {
        let mut e = ApiError::from(e);
        if matches!(plan.watched, Watched::Both { .. }) {
            e.message.push_str(
                " (both kinds watch the range from /configs/ to the end of /services/; \
                 ask for one kind with ?kind=instance or ?kind=config)",
            );
        }
        return Err(e);
    }
    let start = match q.revision {
        Some(r) if r > 0 => r,
        Some(r) if r < 0 => return Err(ApiError::bad_request("revision must be >= 0")),
        _ => match headers.get("last-event-id").map(|v| v.to_str()) {
            Some(Ok(v)) if !v.trim().is_empty() => {
                let last: i64 = v.trim().parse().map_err(|_| {
                    ApiError::bad_request("Last-Event-ID must be a revision number")
                })?;
                last + 1
            }
            _ => 0,
        },
    };
    let compact = node.compact_revision();
    if start > 0 && start < compact {
        return Err(compacted(compact));
    }
    let permit = st.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            ErrorCode::Unavailable,
            "too many event streams are open; try again later",
        )
    })?;

    let (req_tx, req_rx) = mpsc::channel::<Result<WatchRequest, Infallible>>(4);
    let mut rx = mast_server::api::watch::open_session(
        node.clone(),
        caller.clone(),
        ReceiverStream::new(req_rx),
    );
    let _ = req_tx.send(Ok(create(key, range_end, start))).await;
    // Wait for the watcher, keeping anything that comes with or right after it.
    let mut early = Vec::new();
    let wait_created = async {
        loop {
            match rx.recv().await {
                Some(Ok(r)) if r.canceled => return Err(canceled_error(&r)),
                Some(Ok(r)) if r.created => {
                    return Ok(r.header.as_ref().map_or(0, |h| h.revision));
                }
                Some(Ok(r)) => early.push(r),
                Some(Err(s)) => return Err(ApiError::from(s)),
                None => {
                    return Err(ApiError::new(
                        ErrorCode::Unavailable,
                        "the server is shutting down",
                    ));
                }
            }
        }
    };
    let created_at = match tokio::time::timeout(CREATE_TIMEOUT, wait_created).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "creating the watch timed out",
            ));
        }
    };

    let (out, out_rx) = mpsc::channel::<Result<Event, Infallible>>(STREAM_BUFFER);
    let ready = serde_json::json!({"revision": created_at, "startRevision": start});
    let _ = out
        .send(Ok(Event::default()
            .event("ready")
            .retry(RETRY)
            .data(ready.to_string())))
        .await;
    tokio::spawn(async move {
        // Held for the stream's life: the permit, and the request side of the watch session
        // (closing it would end the session).
        let _permit = permit;
        let _requests = req_tx;
        let shutdown = node.shutting_down();
        tokio::pin!(shutdown);
        // A server already shutting down sends nothing more.
        if futures::poll!(&mut shutdown).is_ready() {
            return;
        }
        let mut early = early.into_iter();
        // What this stream last sent of each config (a stream that named its client).
        let mut sent: HashMap<ConfigId, Option<String>> = HashMap::new();
        'stream: loop {
            let resp = if let Some(r) = early.next() {
                r
            } else {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = out.closed() => break,
                    r = rx.recv() => match r {
                        Some(Ok(r)) => r,
                        _ => break,
                    },
                }
            };
            if resp.canceled {
                let e = canceled_error(&resp);
                let data = serde_json::json!({"error": e.message, "code": e.code.as_str(),
                    "compactRevision": resp.compact_revision});
                let _ = out
                    .send(Ok(Event::default()
                        .event("canceled")
                        .data(data.to_string())))
                    .await;
                break;
            }
            for ev in to_events(&node, &caller, &plan, &mut sent, resp).await {
                if out.send(Ok(ev)).await.is_err() {
                    break 'stream;
                }
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(out_rx))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response())
}

/// The SSE events of one watch response; the last event of each revision carries the id.
/// `sent` holds the MD5 last sent of each config (`None`: deleted), for a stream that named its
/// client.
async fn to_events(
    node: &Node,
    caller: &Caller,
    plan: &Plan,
    sent: &mut HashMap<ConfigId, Option<String>>,
    resp: WatchResponse,
) -> Vec<Event> {
    let mut out: Vec<(i64, Event)> = Vec::new();
    for ev in resp.events {
        let Some(kv) = ev.kv else { continue };
        let op = if ev.r#type == EventType::Delete as i32 {
            "delete"
        } else {
            "put"
        };
        let rev = kv.mod_revision;
        let event = if plan
            .instances()
            .is_some_and(|p| kv.key.starts_with(p.as_bytes()))
        {
            instance_event(node, op, &kv)
        } else if plan
            .configs()
            .is_some_and(|p| kv.key.starts_with(p.as_bytes()))
        {
            config_event(node, caller, plan, sent, op, &kv).await
        } else if let Some(facts) = &plan.facts
            && let Some((id, _)) = mast_model::gray::parse_gray_key(&kv.key)
            && plan
                .configs()
                .is_some_and(|p| id.content_key().starts_with(p))
        {
            gray_event(node, caller, plan, sent, facts, &id, rev).await
        } else {
            None
        };
        if let Some(e) = event {
            out.push((rev, e));
        }
    }
    let n = out.len();
    let mut events = Vec::with_capacity(n);
    for i in 0..n {
        let rev = out[i].0;
        let last_of_rev = i + 1 == n || out[i + 1].0 != rev;
        let e = std::mem::take(&mut out[i].1);
        events.push(if last_of_rev {
            e.id(rev.to_string())
        } else {
            e
        });
    }
    events
}

fn instance_event(node: &Node, op: &'static str, kv: &KeyValue) -> Option<Event> {
    let (service, id) = parse_instance_key(&kv.key)?;
    let data = InstanceEvent {
        kind: "instance",
        op,
        service: service.to_string(),
        id: id.to_string(),
        revision: kv.mod_revision,
        instance: (op == "put")
            .then(|| InstanceView::from_kv(node, kv))
            .flatten(),
    };
    let json = serde_json::to_string(&data).ok()?;
    Some(Event::default().event("instance").data(json))
}

/// A gray release of config `id` started, changed or stopped at revision `rev`: the
/// client's version of the config, if it is not the one this stream last sent.
async fn gray_event(
    node: &Node,
    caller: &Caller,
    plan: &Plan,
    sent: &mut HashMap<ConfigId, Option<String>>,
    facts: &mast_model::ClientFacts,
    id: &ConfigId,
    rev: i64,
) -> Option<Event> {
    if plan.group.as_ref().is_some_and(|g| &id.group != g) {
        return None;
    }
    let (content, _) = etcd::get(node, caller, &id.content_key(), 0).await.ok()?;
    let content = content?;
    let gray = crate::gray::gray_for(node, caller, id, facts).await.ok()?;
    let md5 = gray
        .as_ref()
        .map_or_else(|| md5_hex(&content.value), |g| g.md5.clone());
    if sent.get(id) == Some(&Some(md5.clone())) {
        return None;
    }
    sent.insert(id.clone(), Some(md5.clone()));
    let data = ConfigEvent {
        kind: "config",
        op: "put",
        revision: rev,
        content: Some(match &gray {
            Some(g) => g.content.clone(),
            None => String::from_utf8_lossy(&content.value).into_owned(),
        }),
        md5: Some(md5),
        version: None,
        format: None,
        namespace: id.namespace.clone(),
        group: id.group.clone(),
        data_id: id.data_id.clone(),
        gray: gray.map(|g| g.name),
    };
    let json = serde_json::to_string(&data).ok()?;
    Some(Event::default().event("config").data(json))
}

async fn config_event(
    node: &Node,
    caller: &Caller,
    plan: &Plan,
    sent: &mut HashMap<ConfigId, Option<String>>,
    op: &'static str,
    kv: &KeyValue,
) -> Option<Event> {
    if !kv.key.starts_with(CONTENT_PREFIX.as_bytes()) {
        return None;
    }
    let (id, None) = ConfigId::parse_key(&kv.key)? else {
        return None;
    };
    if plan.group.as_ref().is_some_and(|g| &id.group != g) {
        return None;
    }
    let mut data = ConfigEvent {
        kind: "config",
        op,
        revision: kv.mod_revision,
        content: None,
        md5: None,
        version: None,
        format: None,
        namespace: id.namespace.clone(),
        group: id.group.clone(),
        data_id: id.data_id.clone(),
        gray: None,
    };
    if op == "put" {
        data.content = Some(String::from_utf8_lossy(&kv.value).into_owned());
        data.md5 = Some(md5_hex(&kv.value));
        // A client a gray release is meant for gets the gray's content instead.
        if let Some(facts) = &plan.facts
            && let Ok(Some(g)) = crate::gray::gray_for(node, caller, &id, facts).await
        {
            data.content = Some(g.content);
            data.md5 = Some(g.md5);
            data.gray = Some(g.name);
        }
        // The version published with this content: the metadata written in the same
        // revision, if the caller may read it and it is still in history.
        if let Ok((Some(meta), _)) = etcd::get(node, caller, &id.meta_key(), kv.mod_revision).await
            && meta.mod_revision == kv.mod_revision
            && let Ok(meta) = serde_json::from_slice::<ConfigMeta>(&meta.value)
        {
            data.version = Some(meta.version);
            data.format = Some(meta.format);
        }
    }
    if plan.facts.is_some() {
        sent.insert(id, data.md5.clone());
    }
    let json = serde_json::to_string(&data).ok()?;
    Some(Event::default().event("config").data(json))
}
