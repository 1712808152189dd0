//! Configs: read, publish, watch, and a typed value that reloads itself.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use mast_model::config::{ConfigHistoryEntry, HistoryOp, md5_hex};
use mast_model::{ConfigFormat, ConfigId, ConfigMeta};
use mast_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchRequest,
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op, response_op,
    watch_request::RequestUnion,
};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{Client, Error, Result};

/// Versions of history kept by [`Client::publish_config`] (the server's default retention).
pub const HISTORY_RETENTION: u64 = 100;

/// A config as read from the server.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Which config.
    pub id: ConfigId,
    /// The content, raw.
    pub content: Bytes,
    /// Its metadata, when it was published through Mast (a value put by a plain etcd client
    /// has none).
    pub meta: Option<ConfigMeta>,
    /// The store revision of the read.
    pub revision: i64,
    /// The gray release whose content this is, when this client is one of its clients (by
    /// its id, labels and address, [`crate::ClientOptions`]); `content` is then the gray's.
    pub gray: Option<String>,
}

impl Config {
    /// The content's format: from the metadata, else from the data id's extension, else text.
    pub fn format(&self) -> ConfigFormat {
        self.meta
            .as_ref()
            .map(|m| m.format)
            .or_else(|| ConfigFormat::from_data_id(&self.id.data_id))
            .unwrap_or_default()
    }

    /// Parses the content into `T` (JSON, YAML, TOML or properties by its format).
    ///
    /// # Errors
    /// [`Error::Validation`] when the content does not parse or does not fit `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        parse_as(self.format(), &self.content)
    }
}

fn parse_as<T: DeserializeOwned>(format: ConfigFormat, content: &[u8]) -> Result<T> {
    let value = format.parse(content)?;
    serde_json::from_value(value).map_err(|e| {
        Error::Validation(mast_model::ValidationError::Syntax {
            format: format.name(),
            message: e.to_string(),
        })
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn get_op(key: String) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.into(),
            ..Default::default()
        })),
    }
}

fn prefix_op(prefix: String) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            range_end: mast_model::prefix_end(prefix.as_bytes()).into(),
            key: prefix.into(),
            ..Default::default()
        })),
    }
}

fn put_op(key: String, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

impl Client {
    /// Reads a config's content and metadata in one consistent read.
    ///
    /// # Errors
    /// The server's error, or metadata that is not valid JSON.
    pub async fn get_config(&self, id: &ConfigId) -> Result<Option<Config>> {
        let resp = self
            .txn(TxnRequest {
                success: vec![
                    get_op(id.content_key()),
                    get_op(id.meta_key()),
                    prefix_op(mast_model::gray::gray_prefix(id)),
                ],
                ..Default::default()
            })
            .await?;
        let revision = resp.header.map_or(0, |h| h.revision);
        let mut ranges = resp.responses.into_iter().map(|r| match r.response {
            Some(response_op::Response::ResponseRange(rr)) => rr.kvs,
            _ => Vec::new(),
        });
        let first =
            |r: Option<Vec<mast_proto::mvccpb::KeyValue>>| r.and_then(|v| v.into_iter().next());
        let (content, meta) = (first(ranges.next()), first(ranges.next()));
        let grays: Vec<mast_model::GrayRelease> = ranges
            .next()
            .unwrap_or_default()
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect();
        let gray = mast_model::gray::select(id, &grays, &self.facts).cloned();
        let Some(content) = content else {
            return Ok(None);
        };
        let meta = match meta {
            Some(m) => Some(serde_json::from_slice(&m.value).map_err(|e| Error::Data {
                key: id.meta_key(),
                message: e.to_string(),
            })?),
            None => None,
        };
        Ok(Some(match gray {
            Some(g) => Config {
                id: id.clone(),
                content: Bytes::from(g.content),
                meta,
                revision,
                gray: Some(g.name),
            },
            None => Config {
                id: id.clone(),
                content: content.value,
                meta,
                revision,
                gray: None,
            },
        }))
    }

    /// Publishes new content as the next version: checks the format (and the config's JSON
    /// Schema), then writes content, metadata and a history entry in one Txn that fails if
    /// someone else published meanwhile (retried a few times). Returns the new version.
    ///
    /// # Errors
    /// [`Error::Validation`] for refused content; [`Error::Conflict`] when concurrent publishes
    /// keep winning; the server's error.
    pub async fn publish_config(
        &self,
        id: &ConfigId,
        content: &[u8],
        format: ConfigFormat,
        author: &str,
    ) -> Result<u64> {
        self.publish_config_as(id, content, format, author, HistoryOp::Publish, None)
            .await
    }

    /// Publishes `version`'s content again as a new version, recorded in history as a
    /// rollback (the config is never deleted). Returns the new version.
    ///
    /// # Errors
    /// As [`Client::publish_config`], or [`Error::Data`] when the version is not in history.
    pub async fn rollback_config(&self, id: &ConfigId, version: u64, author: &str) -> Result<u64> {
        let resp = self
            .range(RangeRequest {
                key: id.history_key(version).into(),
                ..Default::default()
            })
            .await?;
        let kv = resp.kvs.first().ok_or_else(|| Error::Data {
            key: id.history_key(version),
            message: "no such version".into(),
        })?;
        let old: ConfigHistoryEntry =
            serde_json::from_slice(&kv.value).map_err(|e| Error::Data {
                key: id.history_key(version),
                message: e.to_string(),
            })?;
        self.publish_config_as(
            id,
            old.content.as_bytes(),
            old.format,
            author,
            HistoryOp::Rollback,
            Some(version),
        )
        .await
    }

    async fn publish_config_as(
        &self,
        id: &ConfigId,
        content: &[u8],
        format: ConfigFormat,
        author: &str,
        op: HistoryOp,
        rolled_back_from: Option<u64>,
    ) -> Result<u64> {
        for _ in 0..5 {
            let meta_kv = self
                .range(RangeRequest {
                    key: id.meta_key().into(),
                    ..Default::default()
                })
                .await?
                .kvs
                .into_iter()
                .next();
            let (old, mod_rev): (Option<ConfigMeta>, i64) = match &meta_kv {
                Some(kv) => (
                    Some(serde_json::from_slice(&kv.value).map_err(|e| Error::Data {
                        key: id.meta_key(),
                        message: e.to_string(),
                    })?),
                    kv.mod_revision,
                ),
                None => (None, 0),
            };
            let schema = old.as_ref().and_then(|m| m.schema.clone());
            format.validate(content, schema.as_ref())?;
            let text = String::from_utf8(content.to_vec())
                .map_err(|_| mast_model::ValidationError::NotUtf8)?;
            // Gray entries take history numbers after the current version too.
            let version = old.as_ref().map_or(0, ConfigMeta::newest_history) + 1;
            let md5 = md5_hex(content);
            let time = now_ms();
            let meta = ConfigMeta {
                format,
                md5: md5.clone(),
                version,
                author: author.to_string(),
                updated_at: time,
                last_history: 0,
                ..old.clone().unwrap_or_default()
            };
            let entry = ConfigHistoryEntry {
                version,
                content: text,
                format,
                md5,
                author: author.to_string(),
                time,
                op,
                rolled_back_from,
                ..Default::default()
            };
            let mut success = vec![
                put_op(id.content_key(), content.to_vec()),
                put_op(
                    id.meta_key(),
                    serde_json::to_vec(&meta).expect("meta serializes"),
                ),
                put_op(
                    id.history_key(version),
                    serde_json::to_vec(&entry).expect("entry serializes"),
                ),
            ];
            if version > HISTORY_RETENTION {
                success.push(RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: id.history_prefix().into(),
                            range_end: id.history_key(version - HISTORY_RETENTION + 1).into(),
                            ..Default::default()
                        },
                    )),
                });
            }
            let compare = Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: id.meta_key().into(),
                range_end: Bytes::new(),
                target_union: Some(TargetUnion::ModRevision(mod_rev)),
            };
            let resp = self
                .txn(TxnRequest {
                    compare: vec![compare],
                    success,
                    failure: vec![],
                })
                .await?;
            if resp.succeeded {
                return Ok(version);
            }
        }
        Err(Error::Conflict(id.content_key()))
    }

    /// A stream of a config: its current state first, then again after every change to its
    /// content or metadata (`None` while it does not exist). Resumes from its last revision
    /// after a reconnect.
    pub fn watch_config(
        &self,
        id: &ConfigId,
    ) -> impl Stream<Item = Result<Option<Config>>> + Send + 'static {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(follow_config(self.clone(), id.clone(), tx));
        ReceiverStream::new(rx)
    }
}

/// What a client sees of a config: content, gray, and version and MD5 of the metadata.
type Seen = (Bytes, Option<String>, Option<(u64, String)>);

/// What a client sees of a config: a read that shows the same is not sent again (a change
/// to a gray release this client is not in, say).
fn seen(c: &Option<Config>) -> Option<Seen> {
    c.as_ref().map(|c| {
        (
            c.content.clone(),
            c.gray.clone(),
            c.meta.as_ref().map(|m| (m.version, m.md5.clone())),
        )
    })
}

async fn follow_config(client: Client, id: ConfigId, tx: mpsc::Sender<Result<Option<Config>>>) {
    let mut last_seen = None;
    let mut next_rev = match client.get_config(&id).await {
        Ok(c) => {
            let rev = c.as_ref().map_or(0, |c| c.revision);
            last_seen = Some(seen(&c));
            if tx.send(Ok(c)).await.is_err() {
                return;
            }
            rev + 1
        }
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            1
        }
    };
    // The content and metadata keys, and the gray prefix (a gray meant for this client).
    let gray_prefix = mast_model::gray::gray_prefix(&id);
    let ranges = [
        (id.content_key(), Vec::new()),
        (id.meta_key(), Vec::new()),
        (
            gray_prefix.clone(),
            mast_model::prefix_end(gray_prefix.as_bytes()),
        ),
    ];
    let mut backoff = Duration::from_millis(200);
    loop {
        let (req_tx, req_rx) = mpsc::channel(3);
        for (k, end) in &ranges {
            let create = WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: k.clone().into(),
                    range_end: end.clone().into(),
                    start_revision: next_rev,
                    ..Default::default()
                })),
            };
            let _ = req_tx.send(create).await;
        }
        let mut wc = client.watch.clone();
        if let Ok(resp) = wc.watch(ReceiverStream::new(req_rx)).await {
            backoff = Duration::from_millis(200);
            let mut responses = resp.into_inner();
            while let Some(Ok(r)) = responses.next().await {
                if r.canceled {
                    break;
                }
                let Some(last) = r
                    .events
                    .iter()
                    .filter_map(|e| e.kv.as_ref())
                    .map(|kv| kv.mod_revision)
                    .max()
                else {
                    continue;
                };
                // Both watchers report a publish (content and metadata change in one revision):
                // read once per revision.
                if last < next_rev {
                    continue;
                }
                next_rev = last + 1;
                // Read both keys at once so content and metadata always match.
                let read = client.get_config(&id).await;
                if let Ok(c) = &read {
                    let now = Some(seen(c));
                    if now == last_seen {
                        continue;
                    }
                    last_seen = now;
                }
                if tx.send(read).await.is_err() {
                    return;
                }
            }
        }
        drop(req_tx);
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Where a typed config keeps its last good content on disk.
fn cache_path(dir: &Path, id: &ConfigId) -> PathBuf {
    dir.join(&id.namespace).join(&id.group).join(&id.data_id)
}

fn write_cache(dir: &Path, id: &ConfigId, content: &[u8]) -> std::io::Result<()> {
    let path = cache_path(dir, id);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(tmp, path)
}

/// A config parsed into `T` that follows changes: new content that parses replaces the value;
/// content that does not parse is reported through [`TypedConfig::last_error`] and the last
/// good value stays. With a cache directory, the last good content is also kept on disk, so a
/// service starts with it when the server cannot be reached.
pub struct TypedConfig<T> {
    value: watch::Receiver<Arc<T>>,
    error: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<T> Drop for TypedConfig<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> TypedConfig<T> {
    /// The current value.
    pub fn get(&self) -> Arc<T> {
        self.value.borrow().clone()
    }

    /// Waits until the value changes.
    pub async fn changed(&mut self) -> Arc<T> {
        let _ = self.value.changed().await;
        self.get()
    }

    /// Why the latest content was not applied, if it was not.
    pub fn last_error(&self) -> Option<String> {
        self.error.lock().expect("error lock").clone()
    }
}

impl Client {
    /// Reports `c` applied ([`Client::report_config_applied`]); a failure is only logged, as
    /// the config itself was applied.
    async fn report_applied_quietly(&self, c: &Config) {
        if let Err(e) = self.report_config_applied(c).await {
            tracing::debug!(config = %c.id.content_key(), error = %e, "reporting an applied config failed");
        }
    }

    /// A typed, hot-reloading view of a config. With `cache_dir`, the last good content is
    /// written there and used when the server is unreachable at start.
    ///
    /// # Errors
    /// When the config cannot be read (and no cached copy exists), is missing, or does not
    /// parse into `T`.
    pub async fn typed_config<T>(
        &self,
        id: &ConfigId,
        cache_dir: Option<PathBuf>,
    ) -> Result<TypedConfig<T>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let mut stream = Box::pin(self.watch_config(id));
        let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .ok()
            .flatten();
        let initial: T = match first {
            Some(Ok(Some(c))) => {
                let v = c.parse()?;
                if let Some(dir) = &cache_dir {
                    write_cache(dir, id, &c.content)?;
                }
                self.report_applied_quietly(&c).await;
                v
            }
            Some(Ok(None)) => {
                return Err(Error::Data {
                    key: id.content_key(),
                    message: "config does not exist".into(),
                });
            }
            other => {
                let reason = match other {
                    Some(Err(e)) => e.to_string(),
                    _ => "no answer within 10 s".to_string(),
                };
                let Some(dir) = &cache_dir else {
                    return Err(Error::Data {
                        key: id.content_key(),
                        message: format!("cannot read the config: {reason}"),
                    });
                };
                let bytes = std::fs::read(cache_path(dir, id))?;
                let format = ConfigFormat::from_data_id(&id.data_id).unwrap_or_default();
                tracing::warn!(config = %id.content_key(), reason = %reason, "server unreachable; starting from the cached config");
                parse_as(format, &bytes)?
            }
        };
        let (tx, value) = watch::channel(Arc::new(initial));
        let error = Arc::new(Mutex::new(None));
        let err = error.clone();
        let id2 = id.clone();
        let client = self.clone();
        let task = tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let Ok(Some(c)) = item else { continue };
                match c.parse::<T>() {
                    Ok(v) => {
                        *err.lock().expect("error lock") = None;
                        if let Some(dir) = &cache_dir
                            && let Err(e) = write_cache(dir, &id2, &c.content)
                        {
                            tracing::warn!(error = %e, "writing the config cache failed");
                        }
                        let _ = tx.send(Arc::new(v));
                        // Reported once the value is in place: applied, not merely received.
                        client.report_applied_quietly(&c).await;
                    }
                    Err(e) => {
                        tracing::warn!(config = %id2.content_key(), error = %e, "new config content refused; keeping the last good value");
                        *err.lock().expect("error lock") = Some(e.to_string());
                    }
                }
            }
        });
        Ok(TypedConfig { value, error, task })
    }
}
