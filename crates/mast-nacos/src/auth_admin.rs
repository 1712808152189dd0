//! Nacos's user, role and permission management (`/nacos/v1/auth/users`, `/roles`,
//! `/permissions`, as the 2.4 default auth plugin) on Mast's users and roles: there is one set
//! of users and roles, and a Nacos permission *is* a set of Mast role permissions on the keys
//! the resource names, so the same check applies through etcd, `/mast/v1` and Nacos.
//!
//! A Nacos resource is `<namespace>:<group>:<type>/<name>` (`type` `config` or `naming`; the
//! console grants `<namespace>:*:*`). Its key ranges ([`ranges`]):
//! - configs: `/configs/`, `/config-meta/`, `/config-history/` and `/config-gray/`, each
//!   followed by
//!   `<namespace>/`, `<group>/` and the data id (a `*` name is the group's prefix, `app*` a
//!   prefix, an exact name the key itself and its history prefix);
//! - naming: `/services/<segment>/`, `/service-meta/<segment>` and the operator overrides
//!   `/instance-overrides/<segment>/` where `<segment>` is the
//!   service's key segment (`<namespace>#<group>@@<name>`, `<group>@@<name>` in the public
//!   namespace, the bare name in its `DEFAULT_GROUP`): a `*` group or name is a prefix of the
//!   segment. The public namespace's `DEFAULT_GROUP` has no prefix of its own (the seeds'
//!   `/services/<service>/` layout), so `public:*:naming/*` and `public:DEFAULT_GROUP:naming/*`
//!   are `/services/`, `/service-meta/` and `/instance-overrides/` whole — every namespace's
//!   services.
//!
//! The action `r` is etcd's READ, `w` WRITE (and READ of the metadata a publish compares),
//! `rw` both. Permissions are added to and taken from what a role holds for the same range, so
//! `r` then `w` is READWRITE. The permission list is read back from the role's ranges, in the
//! canonical form above. Nacos's global admin role `ROLE_ADMIN` is Mast's `root`, which the
//! Nacos API does not grant (as Nacos refuses to create `ROLE_ADMIN`). Only an admin (Mast's
//! `root` role, or anyone while auth is off) may call these, as etcd's auth management.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use mast_model::config::{CONTENT_PREFIX, HISTORY_PREFIX, META_PREFIX};
use mast_model::overrides::OVERRIDE_PREFIX;
use mast_model::{SERVICE_META_PREFIX, SERVICES_PREFIX, prefix_end};
use mast_proto::authpb::Permission;
use mast_proto::authpb::permission::Type as PermType;
use mast_proto::etcdserverpb::{
    AuthRoleAddRequest, AuthRoleDeleteRequest, AuthRoleGetRequest, AuthRoleGrantPermissionRequest,
    AuthRoleRevokePermissionRequest, AuthUserAddRequest, AuthUserChangePasswordRequest,
    AuthUserDeleteRequest, AuthUserGetRequest, AuthUserGrantRoleRequest, AuthUserRevokeRoleRequest,
};
use mast_server::Node;
use mast_server::api::auth::ops;
use mast_server::authz::Caller;
use mast_server::error::AuthError;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::NacosCaller;
use crate::error::{NacosError, NacosResult};
use crate::params::Params;

/// Nacos's global admin role.
pub const NACOS_ADMIN_ROLE: &str = "ROLE_ADMIN";
/// Mast's (etcd's) admin role, which `ROLE_ADMIN` is.
const ROOT_ROLE: &str = "root";
const PUBLIC: &str = "public";
const DEFAULT_GROUP: &str = "DEFAULT_GROUP";

/// One part of a resource: everything, a prefix (`app*`) or an exact name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Any,
    Prefix(String),
    Exact(String),
}

impl Part {
    fn parse(s: &str, prefix_ok: bool) -> Result<Part, String> {
        if s == "*" {
            return Ok(Part::Any);
        }
        match s.strip_suffix('*') {
            Some(p) if prefix_ok && !p.contains('*') => Ok(Part::Prefix(p.to_string())),
            _ if s.contains('*') => Err(format!("the pattern '{s}' is not a prefix")),
            _ => Ok(Part::Exact(s.to_string())),
        }
    }

    fn show(&self) -> String {
        match self {
            Part::Any => "*".into(),
            Part::Prefix(p) => format!("{p}*"),
            Part::Exact(e) => e.clone(),
        }
    }
}

/// Which resources: configs, services or both (`*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Config,
    Naming,
    Both,
}

/// A parsed Nacos resource `<namespace>:<group>:<type>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resource {
    /// `Any`, or the namespace id (`public` for `""` / `public`).
    namespace: Part,
    group: Part,
    kind: Kind,
    name: Part,
}

impl Resource {
    fn parse(s: &str) -> Result<Resource, String> {
        let mut it = s.splitn(3, ':');
        let (Some(ns), Some(group), Some(rest)) = (it.next(), it.next(), it.next()) else {
            return Err(format!(
                "resource '{s}' is not <namespace>:<group>:<type>/<name>"
            ));
        };
        let namespace = match ns {
            "" | PUBLIC => Part::Exact(PUBLIC.into()),
            other => Part::parse(other, false)?,
        };
        let group = Part::parse(group, false)?;
        let (kind, name) = match rest.split_once('/') {
            None if rest == "*" => (Kind::Both, Part::Any),
            Some(("config", name)) => (Kind::Config, Part::parse(name, true)?),
            Some(("naming", name)) => (Kind::Naming, Part::parse(name, true)?),
            Some(("*", "*")) => (Kind::Both, Part::Any),
            _ => return Err(format!("resource type in '{s}' is not config or naming")),
        };
        if kind == Kind::Both && name != Part::Any {
            return Err(format!("resource '{s}' names a resource of no type"));
        }
        if group == Part::Any && name != Part::Any {
            return Err(format!("resource '{s}' names a resource in every group"));
        }
        if namespace == Part::Any && (group != Part::Any || name != Part::Any) {
            return Err(format!("resource '{s}' names a group in every namespace"));
        }
        Ok(Resource {
            namespace,
            group,
            kind,
            name,
        })
    }

    /// The canonical text (the public namespace as `public`).
    fn show(&self) -> String {
        let rest = match self.kind {
            Kind::Both => "*".to_string(),
            Kind::Config => format!("config/{}", self.name.show()),
            Kind::Naming => format!("naming/{}", self.name.show()),
        };
        format!("{}:{}:{rest}", self.namespace.show(), self.group.show())
    }
}

/// A key range: `key` alone (`end` empty) or `[key, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Range {
    key: Vec<u8>,
    end: Vec<u8>,
}

impl Range {
    fn prefix(p: String) -> Range {
        let key = p.into_bytes();
        let end = prefix_end(&key);
        Range { key, end }
    }

    fn key(k: String) -> Range {
        Range {
            key: k.into_bytes(),
            end: Vec::new(),
        }
    }
}

/// What an action allows: (read, write).
fn action(a: &str) -> Result<(bool, bool), String> {
    let rw = (a.contains('r'), a.contains('w'));
    if rw == (false, false) {
        return Err(format!("action '{a}' is none of r, w, rw"));
    }
    Ok(rw)
}

fn show_action(rw: (bool, bool)) -> &'static str {
    match rw {
        (true, true) => "rw",
        (false, true) => "w",
        _ => "r",
    }
}

/// The key ranges of `res` with what each allows for `rw` (see the module docs).
fn ranges(res: &Resource, rw: (bool, bool)) -> Vec<(Range, (bool, bool))> {
    let mut out = Vec::new();
    // A publish compares the metadata: writing needs reading it.
    let meta_rw = (rw.0 || rw.1, rw.1);
    if matches!(res.kind, Kind::Config | Kind::Both) {
        for (base, exact_is_key, allows) in [
            (CONTENT_PREFIX, true, rw),
            (META_PREFIX, true, meta_rw),
            (HISTORY_PREFIX, false, rw),
            // Changing a gray release reads it first.
            (mast_model::gray::GRAY_PREFIX, false, meta_rw),
        ] {
            let range = match (&res.namespace, &res.group, &res.name) {
                (Part::Any, _, _) => Range::prefix(base.to_string()),
                (Part::Exact(ns), Part::Any, _) => Range::prefix(format!("{base}{ns}/")),
                (Part::Exact(ns), Part::Exact(g), Part::Any) => {
                    Range::prefix(format!("{base}{ns}/{g}/"))
                }
                (Part::Exact(ns), Part::Exact(g), Part::Prefix(p)) => {
                    Range::prefix(format!("{base}{ns}/{g}/{p}"))
                }
                (Part::Exact(ns), Part::Exact(g), Part::Exact(id)) if exact_is_key => {
                    Range::key(format!("{base}{ns}/{g}/{id}"))
                }
                (Part::Exact(ns), Part::Exact(g), Part::Exact(id)) => {
                    Range::prefix(format!("{base}{ns}/{g}/{id}/"))
                }
                _ => continue, // refused by Resource::parse
            };
            out.push((range, allows));
        }
    }
    if matches!(res.kind, Kind::Naming | Kind::Both) {
        // The segment's prefix, and the exact service name when there is one.
        let (lead, exact): (Option<String>, Option<String>) =
            match (&res.namespace, &res.group, &res.name) {
                (Part::Any, _, _) => (None, None),
                (Part::Exact(ns), group, name) => {
                    let ns_lead = if ns == PUBLIC {
                        String::new()
                    } else {
                        format!("{ns}#")
                    };
                    let group_lead = match group {
                        // The public namespace's DEFAULT_GROUP services are bare names.
                        Part::Any if ns == PUBLIC => None,
                        Part::Any => Some(ns_lead),
                        Part::Exact(g) if ns == PUBLIC && g == DEFAULT_GROUP => Some(ns_lead),
                        Part::Exact(g) => Some(format!("{ns_lead}{g}@@")),
                        Part::Prefix(_) => None,
                    };
                    match (group_lead, name) {
                        (None, _) => (None, None),
                        (Some(l), Part::Any) => (Some(l), None),
                        (Some(l), Part::Prefix(p)) => (Some(format!("{l}{p}")), None),
                        (Some(l), Part::Exact(n)) => (None, Some(format!("{l}{n}"))),
                    }
                }
                _ => (None, None),
            };
        let (services, meta, overrides) = match (lead, exact) {
            (_, Some(seg)) => (
                Range::prefix(format!("{SERVICES_PREFIX}{seg}/")),
                Range::key(format!("{SERVICE_META_PREFIX}{seg}")),
                Range::prefix(format!("{OVERRIDE_PREFIX}{seg}/")),
            ),
            (Some(l), None) => (
                Range::prefix(format!("{SERVICES_PREFIX}{l}")),
                Range::prefix(format!("{SERVICE_META_PREFIX}{l}")),
                Range::prefix(format!("{OVERRIDE_PREFIX}{l}")),
            ),
            (None, None) => (
                Range::prefix(SERVICES_PREFIX.to_string()),
                Range::prefix(SERVICE_META_PREFIX.to_string()),
                Range::prefix(OVERRIDE_PREFIX.to_string()),
            ),
        };
        out.push((services, rw));
        out.push((meta, meta_rw));
        out.push((overrides, rw));
    }
    out
}

/// The Nacos resource a content range stands for (configs under `/configs/`, services under
/// `/services/`); `None` for the metadata and history ranges a permission implies, and for
/// ranges granted otherwise.
fn resource_of(r: &Range) -> Option<Resource> {
    let key = std::str::from_utf8(&r.key).ok()?;
    let is_prefix = !r.end.is_empty();
    if is_prefix && prefix_end(&r.key) != r.end {
        return None;
    }
    if let Some(rest) = key.strip_prefix(CONTENT_PREFIX) {
        let parts: Vec<&str> = rest.splitn(3, '/').collect();
        let exact = |s: &str| Part::Exact(s.to_string());
        let (namespace, group, name) = match (parts.as_slice(), is_prefix) {
            ([""], true) => (Part::Any, Part::Any, Part::Any),
            ([ns, ""], true) => (exact(ns), Part::Any, Part::Any),
            ([ns, g, ""], true) => (exact(ns), exact(g), Part::Any),
            ([ns, g, p], true) => (exact(ns), exact(g), Part::Prefix(p.to_string())),
            ([ns, g, id], false) => (exact(ns), exact(g), exact(id)),
            _ => return None,
        };
        return Some(Resource {
            namespace,
            group,
            kind: Kind::Config,
            name,
        });
    }
    let seg = key.strip_prefix(SERVICES_PREFIX)?;
    if !is_prefix {
        return None;
    }
    let (namespace, rest) = match seg.split_once('#') {
        Some((ns, rest)) => (ns.to_string(), rest),
        None if seg.is_empty() => {
            return Some(Resource {
                namespace: Part::Any,
                group: Part::Any,
                kind: Kind::Naming,
                name: Part::Any,
            });
        }
        None => (PUBLIC.to_string(), seg),
    };
    let (group, name_text) = match rest.split_once("@@") {
        Some((g, n)) => (Part::Exact(g.to_string()), n),
        None if rest.is_empty() => (Part::Any, ""),
        None if namespace == PUBLIC => (Part::Exact(DEFAULT_GROUP.into()), rest),
        None => return None,
    };
    let name = match name_text.strip_suffix('/') {
        Some(n) if !n.contains('/') => Part::Exact(n.to_string()),
        Some(_) => return None,
        None if name_text.is_empty() => Part::Any,
        None => Part::Prefix(name_text.to_string()),
    };
    Some(Resource {
        namespace: Part::Exact(namespace),
        group,
        kind: Kind::Naming,
        name,
    })
}

fn bits(t: i32) -> (bool, bool) {
    match PermType::try_from(t) {
        Ok(PermType::Read) => (true, false),
        Ok(PermType::Write) => (false, true),
        Ok(PermType::Readwrite) => (true, true),
        Err(_) => (false, false),
    }
}

fn perm_type(rw: (bool, bool)) -> Option<PermType> {
    match rw {
        (true, true) => Some(PermType::Readwrite),
        (true, false) => Some(PermType::Read),
        (false, true) => Some(PermType::Write),
        (false, false) => None,
    }
}

/// The role's permissions as (range, (read, write)).
fn role_ranges(
    node: &Node,
    caller: &Caller,
    role: &str,
) -> NacosResult<Vec<(Range, (bool, bool))>> {
    let resp = ops::role_get(
        node,
        caller,
        AuthRoleGetRequest {
            role: role.to_string(),
        },
    )
    .map_err(|e| match e.auth() {
        Some(AuthError::RoleNotFound) => NacosError::caused(format!("role {role} not found!")),
        _ => e.into(),
    })?;
    Ok(resp
        .perm
        .iter()
        .map(|p: &Permission| {
            (
                Range {
                    key: p.key.to_vec(),
                    end: p.range_end.to_vec(),
                },
                bits(p.perm_type),
            )
        })
        .collect())
}

/// Sets the role's permission on `range` to `rw` (revoked when it allows nothing).
async fn set_range(
    node: &Node,
    caller: &Caller,
    role: &str,
    range: &Range,
    held: (bool, bool),
    rw: (bool, bool),
) -> NacosResult<()> {
    if held == rw {
        return Ok(());
    }
    match perm_type(rw) {
        Some(t) => {
            ops::role_grant_permission(
                node,
                caller,
                AuthRoleGrantPermissionRequest {
                    name: role.to_string(),
                    perm: Some(Permission {
                        perm_type: t as i32,
                        key: range.key.clone().into(),
                        range_end: range.end.clone().into(),
                    }),
                },
            )
            .await?;
        }
        None => {
            ops::role_revoke_permission(
                node,
                caller,
                AuthRoleRevokePermissionRequest {
                    role: role.to_string(),
                    key: range.key.clone().into(),
                    range_end: range.end.clone().into(),
                },
            )
            .await?;
        }
    }
    Ok(())
}

/// Adds `rw` on every range of `res` to what the role holds there.
async fn grant(
    node: &Node,
    caller: &Caller,
    role: &str,
    res: &Resource,
    rw: (bool, bool),
) -> NacosResult<()> {
    let held = role_ranges(node, caller, role)?;
    for (range, allows) in ranges(res, rw) {
        let now = held
            .iter()
            .find(|(r, _)| *r == range)
            .map_or((false, false), |(_, b)| *b);
        let want = (now.0 || allows.0, now.1 || allows.1);
        set_range(node, caller, role, &range, now, want).await?;
    }
    Ok(())
}

/// The Nacos permissions a role's ranges stand for: (resource, action), configs and
/// services of the same `<namespace>:<group>:*` and action merged into one `*` resource.
fn nacos_permissions(held: &[(Range, (bool, bool))]) -> Vec<(Resource, (bool, bool))> {
    let mut out: Vec<(Resource, (bool, bool))> = held
        .iter()
        .filter_map(|(r, rw)| resource_of(r).map(|res| (res, *rw)))
        .collect();
    let mut merged = Vec::new();
    let mut used = vec![false; out.len()];
    for i in 0..out.len() {
        if used[i] {
            continue;
        }
        let (a, rw) = &out[i];
        if a.kind == Kind::Config
            && a.name == Part::Any
            && let Some(j) = (0..out.len()).find(|&j| {
                !used[j]
                    && out[j].0.kind == Kind::Naming
                    && out[j].0.namespace == a.namespace
                    && out[j].0.group == a.group
                    && out[j].0.name == Part::Any
                    && out[j].1 == *rw
            })
        {
            used[i] = true;
            used[j] = true;
            merged.push((
                Resource {
                    kind: Kind::Both,
                    ..a.clone()
                },
                *rw,
            ));
        }
    }
    for (i, p) in out.drain(..).enumerate() {
        if !used[i] {
            merged.push(p);
        }
    }
    merged
}

/// Takes `rw` on every range of `res` from what the role holds there, then gives back what
/// the role's other Nacos permissions imply (a shared metadata range).
async fn revoke(
    node: &Node,
    caller: &Caller,
    role: &str,
    res: &Resource,
    rw: (bool, bool),
) -> NacosResult<()> {
    let held = role_ranges(node, caller, role)?;
    for (range, allows) in ranges(res, rw) {
        if let Some((_, now)) = held.iter().find(|(r, _)| *r == range) {
            let want = (now.0 && !allows.0, now.1 && !allows.1);
            set_range(node, caller, role, &range, *now, want).await?;
        }
    }
    let after = role_ranges(node, caller, role)?;
    for (other, other_rw) in nacos_permissions(&after) {
        grant(node, caller, role, &other, other_rw).await?;
    }
    Ok(())
}

fn ok(message: impl Into<String>) -> Response {
    Json(json!({ "code": 200, "message": null, "data": message.into() })).into_response()
}

/// `pageNo` and `pageSize`: required ints, above zero (Nacos's texts).
fn page_params(p: &Params) -> NacosResult<(usize, usize)> {
    let int = |name: &str| -> NacosResult<i64> {
        let v = p.get(name).ok_or_else(|| {
            NacosError::Internal(format!(
                "Required request parameter &#39;{name}&#39; for method parameter type int is not present"
            ))
        })?;
        v.trim().parse::<i64>().map_err(|_| {
            NacosError::Internal(format!(
                "Failed to convert value of type &#39;java.lang.String&#39; to required type &#39;int&#39;; For input string: &quot;{v}&quot;"
            ))
        })
    };
    let (no, size) = (int("pageNo")?, int("pageSize")?);
    if no <= 0 || size <= 0 {
        return Err(NacosError::caused(
            "pageNo and pageSize must be greater than zero",
        ));
    }
    Ok((no as usize, size as usize))
}

/// Nacos's `Page`: `{totalCount, pageNumber, pagesAvailable, pageItems}`.
fn page(items: Vec<Value>, no: usize, size: usize) -> Response {
    let total = items.len();
    let shown: Vec<Value> = items.into_iter().skip((no - 1) * size).take(size).collect();
    Json(json!({
        "totalCount": total,
        "pageNumber": no,
        "pagesAvailable": total.div_ceil(size),
        "pageItems": shown,
    }))
    .into_response()
}

/// Whether `value` matches a filter: `search=blur` turns `*` into "anything" (Nacos's SQL
/// `LIKE`), `accurate` (or none) is equality; a blank filter matches everything.
fn matches(filter: Option<&str>, blur: bool, value: &str) -> bool {
    let Some(f) = filter.filter(|f| !f.is_empty()) else {
        return true;
    };
    if !blur || !f.contains('*') {
        return f == value;
    }
    let parts: Vec<&str> = f.split('*').collect();
    let mut rest = value;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    rest.is_empty()
}

fn user_roles(node: &Node, caller: &Caller, user: &str) -> NacosResult<Option<Vec<String>>> {
    match ops::user_get(
        node,
        caller,
        AuthUserGetRequest {
            name: user.to_string(),
        },
    ) {
        Ok(r) => Ok(Some(r.roles)),
        Err(e) if matches!(e.auth(), Some(AuthError::UserNotFound)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `POST /nacos/v1/auth/users` (`username`, `password`): `create user ok!`; an existing user
/// is 400 `caused: user 'x' already exist!;`.
pub async fn create_user(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let (caller, _) = who.caller(&st, &p).await?;
    let name = p.required("username")?;
    let password = p.required("password")?;
    ops::user_add(
        &st.node,
        &caller,
        AuthUserAddRequest {
            name: name.to_string(),
            password: password.to_string(),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| match e.auth() {
        Some(AuthError::UserAlreadyExist) => {
            NacosError::caused(format!("user '{name}' already exist!"))
        }
        _ => e.into(),
    })?;
    Ok(ok("create user ok!"))
}

/// `DELETE /nacos/v1/auth/users` (`username`): `delete user ok!` (also for an unknown user, as
/// Nacos); an admin is 400 `caused: cannot delete admin: x;`.
pub async fn delete_user(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let (caller, _) = who.caller(&st, &p).await?;
    let name = p.required("username")?;
    match user_roles(&st.node, &caller, name)? {
        Some(roles) if roles.iter().any(|r| r == ROOT_ROLE) => {
            return Err(NacosError::caused(format!("cannot delete admin: {name}")));
        }
        None => return Ok(ok("delete user ok!")),
        Some(_) => {}
    }
    ops::user_delete(
        &st.node,
        &caller,
        AuthUserDeleteRequest {
            name: name.to_string(),
        },
    )
    .await?;
    st.logins.forget_user(name);
    Ok(ok("delete user ok!"))
}

/// `PUT /nacos/v1/auth/users` (`username`, `newPassword`): `update user ok!`; an unknown user
/// is 400 `caused: user x not exist!;`.
pub async fn update_user(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let (caller, _) = who.caller(&st, &p).await?;
    let name = p.required("username")?;
    let password = p.required("newPassword")?;
    ops::user_change_password(
        &st.node,
        &caller,
        AuthUserChangePasswordRequest {
            name: name.to_string(),
            password: password.to_string(),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| match e.auth() {
        Some(AuthError::UserNotFound) => NacosError::caused(format!("user {name} not exist!")),
        _ => e.into(),
    })?;
    st.logins.forget_user(name);
    Ok(ok("update user ok!"))
}

/// `GET /nacos/v1/auth/users` (`pageNo`, `pageSize`, `username`, `search=accurate|blur`): a
/// page of `{username, password}`. Mast does not hand out password hashes: `password` is
/// empty.
pub async fn list_users(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let (caller, _) = who.caller(&st, &p).await?;
    let (no, size) = page_params(&p)?;
    let blur = p.get("search") == Some("blur");
    let users = ops::user_list(&st.node, &caller)?.users;
    let items = users
        .into_iter()
        .filter(|u| matches(p.get("username"), blur, u))
        .map(|u| json!({ "username": u, "password": "" }))
        .collect();
    Ok(page(items, no, size))
}

/// `POST /nacos/v1/auth/roles` (`role`, `username`): binds the role (made if new) to the
/// user: `add role ok!`. 400 for an unknown user (`caused: user 'x' not found!;`) and for
/// `ROLE_ADMIN`.
pub async fn add_role(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let (caller, _) = who.caller(&st, &p).await?;
    let role = p.required("role")?;
    let user = p.required("username")?;
    if user_roles(&st.node, &caller, user)?.is_none() {
        return Err(NacosError::caused(format!("user '{user}' not found!")));
    }
    if role == NACOS_ADMIN_ROLE || role == ROOT_ROLE {
        return Err(NacosError::caused(format!(
            "role '{role}' is not permitted to create!"
        )));
    }
    match ops::role_add(
        &st.node,
        &caller,
        AuthRoleAddRequest {
            name: role.to_string(),
        },
    )
    .await
    {
        Ok(_) => {}
        Err(e) if matches!(e.auth(), Some(AuthError::RoleAlreadyExist)) => {}
        Err(e) => return Err(e.into()),
    }
    ops::user_grant_role(
        &st.node,
        &caller,
        AuthUserGrantRoleRequest {
            user: user.to_string(),
            role: role.to_string(),
        },
    )
    .await?;
    Ok(ok("add role ok!"))
}

/// `DELETE /nacos/v1/auth/roles` (`role`, `username`): unbinds the role from the user, or,
/// without a user, deletes the role: `delete role of user <user> ok!`.
pub async fn delete_role(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let (caller, _) = who.caller(&st, &p).await?;
    let role = p.required("role")?;
    let user = p.get("username").unwrap_or("");
    let result = if user.is_empty() {
        ops::role_delete(
            &st.node,
            &caller,
            AuthRoleDeleteRequest {
                role: role.to_string(),
            },
        )
        .await
        .map(|_| ())
    } else {
        ops::user_revoke_role(
            &st.node,
            &caller,
            AuthUserRevokeRoleRequest {
                name: user.to_string(),
                role: role.to_string(),
            },
        )
        .await
        .map(|_| ())
    };
    match result {
        Ok(()) => {}
        // Nacos deletes rows: none is no error.
        Err(e)
            if matches!(
                e.auth(),
                Some(AuthError::RoleNotFound | AuthError::UserNotFound | AuthError::RoleNotGranted)
            ) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(ok(format!("delete role of user {user} ok!")))
}

/// `GET /nacos/v1/auth/roles` (`pageNo`, `pageSize`, `username`, `role`, `search`): a page of
/// `{role, username}`, one per user and role (Mast's `root` shown as it is).
pub async fn list_roles(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let (caller, _) = who.caller(&st, &p).await?;
    let (no, size) = page_params(&p)?;
    let blur = p.get("search") == Some("blur");
    let mut items = Vec::new();
    for user in ops::user_list(&st.node, &caller)?.users {
        if !matches(p.get("username"), blur, &user) {
            continue;
        }
        for role in user_roles(&st.node, &caller, &user)?.unwrap_or_default() {
            if matches(p.get("role"), blur, &role) {
                items.push(json!({ "role": role, "username": user }));
            }
        }
    }
    Ok(page(items, no, size))
}

fn parse_permission(p: &Params) -> NacosResult<(String, Resource, (bool, bool))> {
    let role = p.required("role")?.to_string();
    let resource = Resource::parse(p.required("resource")?).map_err(NacosError::caused)?;
    let rw = action(p.required("action")?).map_err(NacosError::caused)?;
    Ok((role, resource, rw))
}

/// `POST /nacos/v1/auth/permissions` (`role`, `resource`, `action`): grants the role the
/// resource's key ranges (see the module docs): `add permission ok!`. 400 `caused: role x not
/// found!;` for an unknown role, and for a resource that is not a namespace, group and name
/// with `*` only whole or at a name's end.
pub async fn add_permission(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let (caller, _) = who.caller(&st, &p).await?;
    let (role, resource, rw) = parse_permission(&p)?;
    grant(&st.node, &caller, &role, &resource, rw).await?;
    Ok(ok("add permission ok!"))
}

/// `DELETE /nacos/v1/auth/permissions` (`role`, `resource`, `action`): takes the ranges back:
/// `delete permission ok!`.
pub async fn delete_permission(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let (caller, _) = who.caller(&st, &p).await?;
    let (role, resource, rw) = parse_permission(&p)?;
    revoke(&st.node, &caller, &role, &resource, rw).await?;
    Ok(ok("delete permission ok!"))
}

/// `GET /nacos/v1/auth/permissions` (`pageNo`, `pageSize`, `role`, `search`): a page of
/// `{role, resource, action}` read back from the roles' key ranges (canonical resources).
pub async fn list_permissions(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let (caller, _) = who.caller(&st, &p).await?;
    let (no, size) = page_params(&p)?;
    let blur = p.get("search") == Some("blur");
    let mut items = Vec::new();
    for role in ops::role_list(&st.node, &caller)?.roles {
        if !matches(p.get("role"), blur, &role) || role == ROOT_ROLE {
            continue;
        }
        for (res, rw) in nacos_permissions(&role_ranges(&st.node, &caller, &role)?) {
            items.push(json!({
                "role": role,
                "resource": res.show(),
                "action": show_action(rw),
            }));
        }
    }
    Ok(page(items, no, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(res: &str, a: &str) -> Vec<(String, String, (bool, bool))> {
        let r = Resource::parse(res).unwrap();
        ranges(&r, action(a).unwrap())
            .into_iter()
            .map(|(r, rw)| {
                (
                    String::from_utf8(r.key).unwrap(),
                    String::from_utf8_lossy(&r.end).into_owned(),
                    rw,
                )
            })
            .collect()
    }

    #[test]
    fn a_namespace_grant_covers_its_configs_and_services() {
        let k = keys("dev:*:*", "r");
        let starts: Vec<&str> = k.iter().map(|(s, _, _)| s.as_str()).collect();
        assert_eq!(
            starts,
            vec![
                "/configs/dev/",
                "/config-meta/dev/",
                "/config-history/dev/",
                "/config-gray/dev/",
                "/services/dev#",
                "/service-meta/dev#",
                "/instance-overrides/dev#",
            ]
        );
        assert_eq!(k[0].1, "/configs/dev0");
        assert_eq!(k[4].1, "/services/dev$");
        assert!(k.iter().all(|(_, _, rw)| *rw == (true, false)));
    }

    #[test]
    fn an_exact_config_is_its_key_and_writing_reads_its_metadata() {
        let k = keys(":DEFAULT_GROUP:config/app.yaml", "w");
        assert_eq!(
            k,
            vec![
                (
                    "/configs/public/DEFAULT_GROUP/app.yaml".into(),
                    String::new(),
                    (false, true)
                ),
                (
                    "/config-meta/public/DEFAULT_GROUP/app.yaml".into(),
                    String::new(),
                    (true, true)
                ),
                (
                    "/config-history/public/DEFAULT_GROUP/app.yaml/".into(),
                    "/config-history/public/DEFAULT_GROUP/app.yaml0".into(),
                    (false, true)
                ),
                (
                    "/config-gray/public/DEFAULT_GROUP/app.yaml/".into(),
                    "/config-gray/public/DEFAULT_GROUP/app.yaml0".into(),
                    (true, true)
                ),
            ]
        );
    }

    #[test]
    fn service_segments_follow_the_key_layout() {
        let first = |res: &str| keys(res, "rw")[0].0.clone();
        assert_eq!(first("public:DEFAULT_GROUP:naming/svc"), "/services/svc/");
        assert_eq!(first("public:G:naming/svc"), "/services/G@@svc/");
        assert_eq!(first("dev:G:naming/svc"), "/services/dev#G@@svc/");
        assert_eq!(first("dev:G:naming/pay*"), "/services/dev#G@@pay");
        assert_eq!(first("dev:*:naming/*"), "/services/dev#");
        // The public namespace's default group has no prefix of its own.
        assert_eq!(first("public:*:naming/*"), "/services/");
        assert_eq!(first("*:*:*"), "/configs/");
    }

    #[test]
    fn ranges_read_back_as_the_resources_they_came_from() {
        for res in [
            "dev:*:*",
            "dev:G:config/app.yaml",
            "dev:G:config/app*",
            "public:DEFAULT_GROUP:config/*",
            "public:DEFAULT_GROUP:naming/svc",
            "public:G:naming/*",
            "dev:G:naming/pay*",
            "*:*:*",
        ] {
            let r = Resource::parse(res).unwrap();
            for a in ["r", "w", "rw"] {
                let rw = action(a).unwrap();
                let held = ranges(&r, rw);
                let back = nacos_permissions(&held);
                assert!(
                    back.iter().any(|(b, brw)| b.show() == res && *brw == rw),
                    "{res} {a} read back as {:?}",
                    back.iter()
                        .map(|(b, rw)| (b.show(), show_action(*rw)))
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn resources_that_are_no_key_range_are_refused() {
        for bad in [
            "dev",
            "dev:G",
            "dev:G:other/x",
            "dev:*:config/app.yaml",
            "*:G:*",
            "dev:G:config/a*b",
            "dev:G*:*",
            "dev:G:*/x",
        ] {
            assert!(Resource::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(action("x").is_err());
    }

    #[test]
    fn blur_filters_match_as_like() {
        assert!(matches(Some("*na*"), true, "nacos"));
        assert!(matches(Some("na*"), true, "nacos"));
        assert!(!matches(Some("na"), true, "nacos"));
        assert!(matches(Some("nacos"), false, "nacos"));
        assert!(matches(None, false, "x"));
        assert!(!matches(Some("*x"), true, "nacos"));
    }
}
