//! Nacos open API v1 for configs (`/nacos/v1/cs/configs`), on the configs of
//! [`mast_model::config`]: a Nacos tenant is a Mast namespace (`""` and `public` are the same,
//! the public namespace), a group is a group, a data id a data id. Publishing and deleting go
//! through the registry's config writes, so a Nacos publish gets a version, an md5, a history
//! entry and format validation exactly as `PUT /mast/v1/configs/…` does, and the content key
//! holds the raw content an etcd watcher sees.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use mast_model::{ConfigFormat, ConfigId, ConfigMeta, md5_hex};
use mast_registry::configs::{self, NewVersion};
use mast_registry::etcd;
use mast_server::authz::Caller;

use crate::AppState;
use crate::auth::NacosCaller;
use crate::error::{NacosError, NacosResult};
use crate::params::Params;

/// Separates the fields of one `Listening-Configs` record (`^B`).
pub const WORD_SEPARATOR: char = '\u{2}';
/// Ends one `Listening-Configs` record (`^A`).
pub const LINE_SEPARATOR: char = '\u{1}';

/// How much earlier than the client's `Long-Pulling-Timeout` a held listener answers, so the
/// answer reaches the client before it gives up (Nacos: the timeout minus 500 ms).
const HOLD_MARGIN: Duration = Duration::from_millis(500);
/// The shortest hold (Nacos's `MIN_LONG_POOLING_TIMEOUT`).
const MIN_HOLD: Duration = Duration::from_secs(10);
/// The longest a listener is held, whatever the client asks.
const MAX_HOLD: Duration = Duration::from_secs(120);

/// Nacos's parameter check (its `ParamCheckerFilter`): data ids and groups are ASCII letters,
/// digits and `_ - . :`, at most 256 and 128 characters; a tenant is word characters and `-`,
/// at most 64. Its answer is a 400 with its own wording.
fn check_chars(param: &str, value: &str, max: usize, ok: fn(char) -> bool) -> NacosResult<()> {
    if value.chars().count() > max {
        return Err(NacosError::BadRequest(format!(
            "Param '{param}' is illegal, the param length should not exceed {max}.\r\n"
        )));
    }
    if !value.chars().all(ok) {
        return Err(NacosError::BadRequest(format!(
            "Param '{param}' is illegal, illegal characters should not appear in the param.\r\n"
        )));
    }
    Ok(())
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')
}

fn tenant_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
}

/// The config a request names: `dataId` and `group` (both required, as Nacos's v1: no default
/// group), `tenant` (default: the public namespace; `public` is the same).
fn config_of(p: &Params) -> NacosResult<ConfigId> {
    let data_id = p.required("dataId")?;
    let group = p.required("group")?;
    let tenant = p.get("tenant").unwrap_or("");
    id_of(data_id, group, tenant)
}

pub(crate) fn id_of(data_id: &str, group: &str, tenant: &str) -> NacosResult<ConfigId> {
    check_chars("dataId", data_id, 256, name_char)?;
    check_chars("group", group, 128, name_char)?;
    check_chars("namespaceId/tenant", tenant, 64, tenant_char)?;
    if data_id.trim().is_empty() {
        return Err(NacosError::caused(format!("invalid dataId : {data_id}")));
    }
    if group.trim().is_empty() {
        return Err(NacosError::caused(format!("invalid group : {group}")));
    }
    Ok(ConfigId::new(tenant, group, data_id)?)
}

/// The Nacos `type` of a config: its format's name (`text` when Mast never published it).
fn nacos_type(meta: Option<&ConfigMeta>, id: &ConfigId) -> &'static str {
    meta.map(|m| m.format)
        .or_else(|| ConfigFormat::from_data_id(&id.data_id))
        .unwrap_or_default()
        .name()
}

/// The type named `s` (as [`nacos_type`] gives it).
fn nacos_type_name(s: &str) -> Option<&'static str> {
    s.parse::<ConfigFormat>().ok().map(ConfigFormat::name)
}

/// The `Content-Type` Nacos sends a config's content with, by its type.
fn content_type(nacos_type: &str) -> &'static str {
    match nacos_type {
        "json" => "application/json;charset=UTF-8",
        "xml" => "application/xml;charset=UTF-8",
        "html" => "text/html;charset=UTF-8",
        _ => "text/plain;charset=UTF-8",
    }
}

/// `GET /nacos/v1/cs/configs?dataId=&group=&tenant=`: the raw content (200, with
/// `Config-Type`, `Content-MD5`, `Last-Modified` and no-cache headers), or 404
/// `config data not exist`.
pub async fn get(State(st): State<AppState>, who: NacosCaller, p: Params) -> NacosResult<Response> {
    let id = config_of(&p)?;
    let (caller, had_token) = who.caller(&st, &p).await?;
    let err = |e| NacosError::from_api(e, had_token);
    let (content_key, meta_key) = (id.content_key(), id.meta_key());
    // A client a gray release is meant for (by address: Nacos's beta; by `tag` as the label
    // `tag`) gets its content, marked `isBeta` as Nacos marks a beta answer.
    if mast_registry::gray::has_grays(&st.node, &id)
        && let Some(g) = mast_registry::gray::gray_for(
            &st.node,
            &caller,
            &id,
            &nacos_facts(&caller, p.opt("tag")),
        )
        .await
        .map_err(err)?
    {
        let (content, _) = etcd::get(&st.node, &caller, &content_key, 0)
            .await
            .map_err(err)?;
        if content.is_some() {
            let meta = etcd::get(&st.node, &caller, &meta_key, 0)
                .await
                .ok()
                .and_then(|(kv, _)| kv)
                .and_then(|kv| serde_json::from_slice::<ConfigMeta>(&kv.value).ok());
            let read = CachedRead::new(
                nacos_type(meta.as_ref(), &id),
                g.md5,
                Some(g.updated_at),
                g.content.into(),
            );
            let mut resp = read.into_response();
            resp.headers_mut()
                .insert("isBeta", HeaderValue::from_static("true"));
            return Ok(resp);
        }
    }
    // An answer rendered from the same content and metadata revisions is served again, after
    // the checks the two reads below make (a caller that may not read the metadata always
    // takes the reads).
    let who = st
        .node
        .authenticate_caller(&caller)
        .map_err(|e| err(e.into()))?;
    let mods = st
        .node
        .mod_revisions(&who, &[content_key.as_bytes(), meta_key.as_bytes()])
        .ok()
        .map(|(_, m)| m);
    if let Some(mods) = &mods
        && let Some(content_rev) = mods[0]
        && let Some(cached) = st.read_cache.get(&content_key, content_rev, mods[1])
        && let Some(resp) = CachedRead::decode(&cached)
    {
        return Ok(resp.into_response());
    }
    let (content, revision) = etcd::get(&st.node, &caller, &content_key, 0)
        .await
        .map_err(err)?;
    let Some(content) = content else {
        return Err(NacosError::NotFound("config data not exist\n".into()));
    };
    // The metadata gives the type and time; a role that reads only the content key (an etcd
    // style grant on /configs/…) still gets the content, its type guessed from the data id.
    let meta = match etcd::get(&st.node, &caller, &id.meta_key(), revision).await {
        Ok((kv, _)) => kv,
        Err(e) if e.code == mast_registry::ErrorCode::PermissionDenied => None,
        Err(e) => return Err(err(e)),
    };
    let meta_rev = meta.as_ref().map(|kv| kv.mod_revision);
    let meta: Option<ConfigMeta> = meta.and_then(|kv| serde_json::from_slice(&kv.value).ok());
    let read = CachedRead::new(
        nacos_type(meta.as_ref(), &id),
        md5_hex(&content.value),
        meta.as_ref().map(|m| m.updated_at),
        content.value.clone(),
    );
    // Kept only when the metadata read was allowed (the cache check above requires it).
    if mods.is_some() {
        st.read_cache
            .put(&content_key, content.mod_revision, meta_rev, read.encode());
    }
    Ok(read.into_response())
}

/// A config read's answer: the type, md5, `Last-Modified` value and content, kept in the read
/// cache as one line of `kind md5 last-modified` (`-` for none) and the content after it, so
/// a kept answer's headers are slices of the kept bytes.
struct CachedRead {
    kind: &'static str,
    md5: bytes::Bytes,
    /// The update time as an HTTP date.
    last_modified: Option<bytes::Bytes>,
    content: bytes::Bytes,
}

/// `ms` (milliseconds since the epoch) as an HTTP date, as `Last-Modified` carries it.
fn http_date(ms: u64) -> bytes::Bytes {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    httpdate::fmt_http_date(at).into()
}

impl CachedRead {
    fn new(
        kind: &'static str,
        md5: String,
        updated_at: Option<u64>,
        content: bytes::Bytes,
    ) -> Self {
        CachedRead {
            kind,
            md5: md5.into(),
            last_modified: updated_at.map(http_date),
            content,
        }
    }

    fn encode(&self) -> bytes::Bytes {
        let lm: &[u8] = self.last_modified.as_deref().unwrap_or(b"-");
        let mut out = Vec::with_capacity(
            self.kind.len() + self.md5.len() + lm.len() + 3 + self.content.len(),
        );
        out.extend_from_slice(self.kind.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.md5);
        out.push(b' ');
        out.extend_from_slice(lm);
        out.push(b'\n');
        out.extend_from_slice(&self.content);
        out.into()
    }

    fn decode(b: &bytes::Bytes) -> Option<CachedRead> {
        let nl = b.iter().position(|&c| c == b'\n')?;
        let line = &b[..nl];
        let sp1 = line.iter().position(|&c| c == b' ')?;
        let sp2 = sp1 + 1 + line[sp1 + 1..].iter().position(|&c| c == b' ')?;
        let kind = nacos_type_name(std::str::from_utf8(&line[..sp1]).ok()?)?;
        let lm = b.slice(sp2 + 1..nl);
        Some(CachedRead {
            kind,
            md5: b.slice(sp1 + 1..sp2),
            last_modified: (&lm[..] != b"-").then_some(lm),
            content: b.slice(nl + 1..),
        })
    }

    fn into_response(self) -> Response {
        let mut headers = no_cache_headers();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(self.kind)),
        );
        headers.insert("Config-Type", HeaderValue::from_static(self.kind));
        if let Ok(v) = HeaderValue::from_maybe_shared(self.md5) {
            headers.insert("Content-MD5", v);
        }
        if let Some(lm) = self.last_modified
            && let Ok(v) = HeaderValue::from_maybe_shared(lm)
        {
            headers.insert(header::LAST_MODIFIED, v);
        }
        (headers, self.content).into_response()
    }
}

fn no_cache_headers() -> HeaderMap {
    // Room for these and the four a config read adds.
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::EXPIRES,
        HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache,no-store"),
    );
    headers
}

/// `POST /nacos/v1/cs/configs` (`dataId`, `group`, `content`, `tenant`, `type`, `desc`,
/// `src_user`): publishes a new version; answers `true`. Mast checks the content against its
/// type (Nacos stores anything): invalid JSON, YAML, XML or properties get a 400.
pub async fn publish(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let id = config_of(&p)?;
    let content = p.required("content")?;
    if content.trim().is_empty() {
        return Err(NacosError::caused(format!("content is blank : {content}")));
    }
    let limit = st.node.max_request_bytes();
    if content.len() > limit {
        return Err(NacosError::caused(format!("invalid content, over {limit}")));
    }
    let format = match p.opt("type") {
        Some(t) => Some(t.parse::<ConfigFormat>().map_err(|_| {
            NacosError::caused(format!(
                "unknown config type {t} (text, json, xml, yaml, html, properties, toml)"
            ))
        })?),
        None => None,
    };
    let (caller, had_token) = who.caller(&st, &p).await?;
    let v = NewVersion {
        content: content.to_string(),
        format,
        description: p.opt("desc").map(str::to_string),
        author: p.opt("src_user").map(str::to_string),
    };
    configs::publish_from(&st.node, st.retention, &caller, &id, v)
        .await
        .map_err(|e| NacosError::from_api(e, had_token))?;
    Ok(ok_true())
}

/// `DELETE /nacos/v1/cs/configs?dataId=&group=&tenant=`: deletes the config (its history
/// stays); answers `true`, also when there was nothing to delete (as Nacos).
pub async fn delete(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let id = config_of(&p)?;
    let (caller, had_token) = who.caller(&st, &p).await?;
    match configs::delete_from(&st.node, st.retention, &caller, &id).await {
        Ok(_) => Ok(ok_true()),
        Err(e) if e.code == mast_registry::ErrorCode::NotFound => Ok(ok_true()),
        Err(e) => Err(NacosError::from_api(e, had_token)),
    }
}

fn ok_true() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], "true").into_response()
}

/// One config a listener holds, with the md5 the client has (`""`: it has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listened {
    /// The data id as the client sent it.
    pub data_id: String,
    /// The group as the client sent it.
    pub group: String,
    /// The tenant as the client sent it (`""` when it sent none).
    pub tenant: String,
    /// The md5 the client holds.
    pub md5: String,
    /// The config in Mast's terms.
    pub id: ConfigId,
}

/// Parses `Listening-Configs`: records `dataId ^B group ^B md5 [^B tenant] ^A` (text after
/// the last `^A` is ignored, as Nacos). The value is URL-decoded once more first, as Nacos does.
///
/// # Errors
/// 400 `caused: invalid probeModify;` for a record with fewer than 3 or more than 4 fields;
/// Nacos's parameter errors for an invalid data id, group or tenant.
pub fn parse_listening(s: &str) -> NacosResult<Vec<Listened>> {
    let plus_as_space = s.replace('+', " ");
    let decoded = percent_encoding::percent_decode_str(&plus_as_space).decode_utf8_lossy();
    let mut out = Vec::new();
    let Some((records, _)) = decoded.rsplit_once(LINE_SEPARATOR) else {
        return Err(NacosError::caused("invalid probeModify"));
    };
    for record in records.split(LINE_SEPARATOR) {
        let fields: Vec<&str> = record.split(WORD_SEPARATOR).collect();
        if !(3..=4).contains(&fields.len()) {
            return Err(NacosError::caused("invalid probeModify"));
        }
        let tenant = fields.get(3).copied().unwrap_or("");
        out.push(Listened {
            id: id_of(fields[0], fields[1], tenant)?,
            data_id: fields[0].to_string(),
            group: fields[1].to_string(),
            tenant: tenant.to_string(),
            md5: fields[2].to_string(),
        });
    }
    Ok(out)
}

/// The listener's answer for `changed`: each config as `dataId ^B group [^B tenant] ^A`,
/// URL-encoded as a whole (Java's `URLEncoder`, which `form_urlencoded` matches), then a
/// line end (Nacos writes it with `println`). Empty when nothing changed.
pub fn changed_body(changed: &[&Listened]) -> String {
    if changed.is_empty() {
        return String::new();
    }
    let mut plain = String::new();
    for l in changed {
        plain.push_str(&l.data_id);
        plain.push(WORD_SEPARATOR);
        plain.push_str(&l.group);
        if !l.tenant.trim().is_empty() {
            plain.push(WORD_SEPARATOR);
            plain.push_str(&l.tenant);
        }
        plain.push(LINE_SEPARATOR);
    }
    let mut body: String = form_urlencoded::byte_serialize(plain.as_bytes()).collect();
    body.push('\n');
    body
}

/// What gray rules see of a Nacos client: its address (ip rules, and `nacos-<ip>` as its
/// id for percentage rules) and, when it sends a `tag`, the label `tag`.
pub fn nacos_facts(caller: &Caller, tag: Option<&str>) -> mast_model::ClientFacts {
    let ip = caller.addr.map(|a| a.ip());
    mast_model::ClientFacts {
        id: ip.map(|ip| format!("nacos-{ip}")).unwrap_or_default(),
        labels: tag
            .filter(|t| !t.is_empty())
            .map(|t| [("tag".to_string(), t.to_string())].into())
            .unwrap_or_default(),
        ip,
    }
}

/// The listened configs whose content md5 differs from the client's (an absent config's md5
/// is `""`; a client a gray release is meant for is compared with the gray's), read with the
/// caller's permissions.
async fn changed_of<'a>(
    st: &AppState,
    caller: &Caller,
    had_token: bool,
    listened: &'a [Listened],
) -> NacosResult<Vec<&'a Listened>> {
    let mut changed = Vec::new();
    for l in listened {
        let (kv, _) = etcd::get(&st.node, caller, &l.id.content_key(), 0)
            .await
            .map_err(|e| NacosError::from_api(e, had_token))?;
        let facts = nacos_facts(caller, None);
        let gray = mast_registry::gray::gray_for(&st.node, caller, &l.id, &facts)
            .await
            .map_err(|e| NacosError::from_api(e, had_token))?;
        let md5 = match gray {
            Some(g) if kv.is_some() => g.md5,
            _ => kv.map(|kv| md5_hex(&kv.value)).unwrap_or_default(),
        };
        if md5 != l.md5 {
            changed.push(l);
        }
    }
    Ok(changed)
}

/// `POST /nacos/v1/cs/configs/listener` (`Listening-Configs`; headers `Long-Pulling-Timeout`
/// in milliseconds and `Long-Pulling-Timeout-No-Hangup`): answers at once with the configs
/// whose md5 differs from the client's; when none does it holds the request (max(10 s, timeout
/// − 500 ms), at most 120 s) until one of them changes, then answers it, or answers an empty
/// body at the end (or at once with `No-Hangup: true`). Without `Long-Pulling-Timeout` the
/// answer is in the `Probe-Modify-Response-New` header, the body empty (Nacos's short poll).
pub async fn listener(
    State(st): State<AppState>,
    who: NacosCaller,
    headers: HeaderMap,
    p: Params,
) -> NacosResult<Response> {
    let listening = p.required("Listening-Configs")?;
    if listening.trim().is_empty() {
        return Err(NacosError::caused("invalid probeModify"));
    }
    let listened = parse_listening(listening)?;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let timeout = match header("Long-Pulling-Timeout") {
        Some(v) => Some(
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| NacosError::caused(format!("For input string: \"{v}\"")))?,
        ),
        None => None,
    };
    let no_hangup =
        header("Long-Pulling-Timeout-No-Hangup").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let (caller, had_token) = who.caller(&st, &p).await?;
    // Registered before the first look, so a change between the look and the wait wakes it.
    let reg = st.listeners.register(
        listened
            .iter()
            .map(|l| l.id.content_key().into_bytes())
            .collect(),
    );
    // The first look checks the caller may read every listened config.
    let first = changed_of(&st, &caller, had_token, &listened).await?;
    // What the client holds, for the rollout view.
    if let Some(ip) = caller.addr.map(|a| a.ip().to_string()) {
        let held: Vec<(ConfigId, String)> = listened
            .iter()
            .map(|l| (l.id.clone(), l.md5.clone()))
            .collect();
        let (node, reports) = (st.node.clone(), st.reports.clone());
        tokio::spawn(async move { reports.http_listen(&node, &ip, &held).await });
    }
    let Some(timeout) = timeout else {
        let changed = first;
        let mut resp = listener_answer(&[]);
        let encoded = changed_body(&changed);
        if let Ok(v) = HeaderValue::from_str(encoded.trim_end()) {
            resp.headers_mut().insert("Probe-Modify-Response-New", v);
        }
        return Ok(resp);
    };
    let hold = timeout
        .saturating_sub(HOLD_MARGIN)
        .clamp(MIN_HOLD, MAX_HOLD);
    let deadline = tokio::time::Instant::now() + hold;
    let mut changed = first;
    loop {
        if !changed.is_empty() || no_hangup {
            return Ok(listener_answer(&changed));
        }
        tokio::select! {
            _ = reg.changed() => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(listener_answer(&[])),
            _ = st.node.shutting_down() => return Ok(listener_answer(&[])),
        }
        changed = changed_of(&st, &caller, had_token, &listened).await?;
    }
}

fn listener_answer(changed: &[&Listened]) -> Response {
    (no_cache_headers(), changed_body(changed)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_configs_parse_with_and_without_tenant() {
        let s = "a.json\u{2}DEFAULT_GROUP\u{2}abc\u{2}dev\u{1}b\u{2}G\u{2}\u{1}";
        let l = parse_listening(s).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].id.namespace, "dev");
        assert_eq!(l[0].md5, "abc");
        assert_eq!(l[1].id.namespace, "public");
        assert_eq!(l[1].md5, "");
        let body = changed_body(&[&l[0], &l[1]]);
        assert_eq!(body, "a.json%02DEFAULT_GROUP%02dev%01b%02G%01\n");
        assert_eq!(changed_body(&[]), "");
        // Encoded once more, as some clients send it: decoded again.
        let twice = "a.json%02G%02%01";
        assert_eq!(parse_listening(twice).unwrap()[0].data_id, "a.json");
    }

    #[test]
    fn malformed_listening_configs_are_refused() {
        for bad in [
            "a\u{2}b\u{1}",
            "a\u{2}b\u{2}c\u{2}d\u{2}e\u{1}",
            "a/b\u{2}G\u{2}\u{1}",
            "no record end",
            "a\u{2}\u{2}md5\u{1}",
        ] {
            assert!(
                matches!(parse_listening(bad), Err(NacosError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn names_follow_nacos_rules() {
        assert!(id_of("app-1.json", "DEFAULT_GROUP", "").is_ok());
        assert!(id_of("a:b_c", "g.1", "dev-ns").is_ok());
        assert!(id_of("a", "G", "public").unwrap().namespace == "public");
        for (d, g, t) in [
            ("a b", "G", ""),
            ("a", "G/H", ""),
            ("a", "G", "d.v"),
            ("", "G", ""),
            ("a", " ", ""),
        ] {
            assert!(
                matches!(id_of(d, g, t), Err(NacosError::BadRequest(_))),
                "{d:?} {g:?} {t:?}"
            );
        }
        assert!(id_of(&"x".repeat(257), "G", "").is_err());
        assert!(id_of("x", &"g".repeat(129), "").is_err());
    }
}
