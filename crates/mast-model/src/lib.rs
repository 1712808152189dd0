//! Mast's registry and config data model, stored as ordinary etcd keys so that etcd clients and
//! Mast's own API see the same data.
//!
//! ## Registry
//! An instance of a service lives at `/services/<service>/<instance-id>` (the seeds' layout),
//! holding JSON with at least `host` and `port`; Mast adds optional `weight`, `metadata`,
//! `enabled`, `zone` and `registeredAt`, and keeps any other field a client wrote. An instance is
//! alive while the lease its key is attached to is alive. An operator's weight and enabled
//! live apart, at `/instance-overrides/<service>/<instance-id>`, and are put in force on the
//! instance's JSON whenever it registers again (see [`overrides`]).
//!
//! ## Config center
//! A config is named by namespace / group / data id (defaults `public` / `DEFAULT_GROUP`, as
//! Nacos). Its content is stored raw at `/configs/<namespace>/<group>/<data-id>`, so a plain etcd
//! watcher on that key sees the content itself; its metadata (format, md5, version, author,
//! description, tags, schema) at `/config-meta/<namespace>/<group>/<data-id>`; and every
//! published version at `/config-history/<namespace>/<group>/<data-id>/<version>` (the version
//! zero-padded to 20 digits so keys sort by version). History lives under its own keys, so it
//! survives compaction, bounded by a retention count.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod config;
pub mod gray;
pub mod health;
pub mod overrides;

pub use config::{
    AppliedReport, ConfigFormat, ConfigHistoryEntry, ConfigId, ConfigMeta, HistoryOp,
    ValidationError, check_schema, md5_hex,
};
pub use gray::{ClientFacts, GrayError, GrayRelease, GrayRule};
pub use health::{HealthCheck, HealthCheckError, ProbeKind};
pub use overrides::{InstanceOverride, apply_override, override_key, parse_override_key};

/// Prefix of every instance key.
pub const SERVICES_PREFIX: &str = "/services/";

/// A name is unusable as a service, instance, namespace, group or data id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty name.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// The name contains `/` or a control character, or is `.`/`..`.
    #[error("{what} {name:?} may not contain '/', control characters, or be '.' or '..'")]
    Invalid {
        /// Which kind of name.
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// Longer than [`MAX_NAME_LEN`] bytes.
    #[error("{0} is longer than 256 bytes")]
    TooLong(&'static str),
}

/// Longest name in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Checks that `name` can be one path segment of a key.
///
/// # Errors
/// [`NameError`] naming `what` was wrong.
pub fn check_name(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty(what));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(what));
    }
    if name == "." || name == ".." || name.chars().any(|c| c == '/' || c.is_control()) {
        return Err(NameError::Invalid {
            what,
            name: name.to_string(),
        });
    }
    Ok(())
}

/// The key prefix of a service's instances: `/services/<service>/`.
pub fn service_prefix(service: &str) -> String {
    format!("{SERVICES_PREFIX}{service}/")
}

/// The key of one instance: `/services/<service>/<instance-id>`.
pub fn instance_key(service: &str, id: &str) -> String {
    format!("{SERVICES_PREFIX}{service}/{id}")
}

/// Splits an instance key into `(service, instance-id)`; `None` for any other key.
pub fn parse_instance_key(key: &[u8]) -> Option<(&str, &str)> {
    let rest = std::str::from_utf8(key)
        .ok()?
        .strip_prefix(SERVICES_PREFIX)?;
    let (service, id) = rest.split_once('/')?;
    if service.is_empty() || id.is_empty() || id.contains('/') {
        return None;
    }
    Some((service, id))
}

/// The default service group (Nacos's).
pub const DEFAULT_SERVICE_GROUP: &str = "DEFAULT_GROUP";

/// A service named as Nacos names it: namespace, group and name. Its instances live under
/// `/services/<segment>/`, where the segment is
///
/// - `<service>` in the public namespace and `DEFAULT_GROUP` (the seeds' layout, unchanged);
/// - `<group>@@<service>` in the public namespace and another group (Nacos's grouped name);
/// - `<namespace>#<group>@@<service>` in any other namespace (the group always written).
///
/// The mapping is one to one for Nacos names: a namespace is word characters and `-`, a group
/// has no `#` or `@`, and a service name does not start with `@` or contain `@@`; so the text
/// before the first `@@` tells a namespace (it holds a `#`) from a group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    /// Namespace (`public` for Nacos's `""`).
    pub namespace: String,
    /// Group (`DEFAULT_GROUP` by default).
    pub group: String,
    /// Service name.
    pub name: String,
}

impl ServiceName {
    /// A service name; an empty namespace is `public`, an empty group `DEFAULT_GROUP`.
    pub fn new(namespace: &str, group: &str, name: &str) -> ServiceName {
        let namespace = match namespace {
            "" => config::DEFAULT_NAMESPACE,
            ns => ns,
        };
        let group = if group.is_empty() {
            DEFAULT_SERVICE_GROUP
        } else {
            group
        };
        ServiceName {
            namespace: namespace.to_string(),
            group: group.to_string(),
            name: name.to_string(),
        }
    }

    /// The key segment of the service (see the type's description).
    pub fn segment(&self) -> String {
        let public = self.namespace == config::DEFAULT_NAMESPACE;
        if public && self.group == DEFAULT_SERVICE_GROUP {
            self.name.clone()
        } else if public {
            format!("{}@@{}", self.group, self.name)
        } else {
            format!("{}#{}@@{}", self.namespace, self.group, self.name)
        }
    }

    /// The service a key segment names (the inverse of [`ServiceName::segment`]).
    pub fn parse(segment: &str) -> ServiceName {
        match segment.split_once("@@") {
            Some((head, name)) => match head.split_once('#') {
                Some((ns, group)) => ServiceName::new(ns, group, name),
                None => ServiceName::new("", head, name),
            },
            None => ServiceName::new("", "", segment),
        }
    }

    /// Nacos's grouped name, `<group>@@<service>`.
    pub fn grouped(&self) -> String {
        format!("{}@@{}", self.group, self.name)
    }

    /// The prefix of the service's instance keys, `/services/<segment>/`.
    pub fn prefix(&self) -> String {
        service_prefix(&self.segment())
    }
}

/// Prefix of service metadata keys (`/service-meta/<segment>`).
pub const SERVICE_META_PREFIX: &str = "/service-meta/";

/// A service's own settings, at `/service-meta/<segment>` (a service needs none: instances
/// alone make it exist). Unknown fields are kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMeta {
    /// Nacos's protection threshold, 0–1: when the healthy share of the instances is at or
    /// below it, discovery answers all of them (so a partial outage does not pile all traffic
    /// onto the few left). 0 turns it off.
    #[serde(default)]
    pub protect_threshold: f64,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Nacos's selector (kept as given; Mast does not apply it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<serde_json::Value>,
    /// Any other field found in the stored JSON.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl ServiceName {
    /// The key of the service's settings, `/service-meta/<segment>`.
    pub fn meta_key(&self) -> String {
        format!("{SERVICE_META_PREFIX}{}", self.segment())
    }
}

/// Whether a service with `healthy` of `total` instances has reached `threshold`: the share
/// is at or below it (Nacos's test), with a threshold above 0 and at least one instance.
pub fn reaches_protection_threshold(healthy: usize, total: usize, threshold: f64) -> bool {
    threshold > 0.0 && total > 0 && (healthy as f64 / total as f64) <= threshold
}

/// Prefix of namespace keys (`/namespaces/<id>`).
pub const NAMESPACE_PREFIX: &str = "/namespaces/";

/// A namespace's description, at `/namespaces/<id>` (the public namespace has none: it always
/// exists). Configs and services may name a namespace that has no key; Nacos's console lists
/// only those with one. Unknown fields are kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceMeta {
    /// Display name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Any other field found in the stored JSON.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// The key of namespace `id`.
pub fn namespace_key(id: &str) -> String {
    format!("{NAMESPACE_PREFIX}{id}")
}

/// The exclusive end of a prefix range, as etcd's `clientv3.GetPrefixRangeEnd`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn default_weight() -> f64 {
    1.0
}

fn default_true() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_default_weight(w: &f64) -> bool {
    (*w - 1.0).abs() < f64::EPSILON
}

/// One instance of a service, as stored in its key's JSON value. Fields other than these are
/// kept as they were written (in `extra`), so Mast never drops what another client stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// Host name or IP address clients connect to.
    pub host: String,
    /// Port clients connect to.
    pub port: u16,
    /// Relative share of traffic for weighted balancing (default 1.0; 0 takes none).
    #[serde(default = "default_weight", skip_serializing_if = "is_default_weight")]
    pub weight: f64,
    /// Free-form labels (version, region, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// False takes the instance out of discovery without deregistering it.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub enabled: bool,
    /// Availability zone, for zone-aware picking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// When the instance registered, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<u64>,
    /// Any other field found in the stored JSON.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Instance {
    /// An enabled instance at `host:port` with weight 1.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Instance {
            host: host.into(),
            port,
            weight: 1.0,
            metadata: BTreeMap::new(),
            enabled: true,
            zone: None,
            registered_at: None,
            extra: BTreeMap::new(),
        }
    }

    /// Parses a stored value.
    ///
    /// # Errors
    /// When the value is not a JSON object with `host` and `port`.
    pub fn from_json(bytes: &[u8]) -> Result<Instance, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The JSON stored in the instance's key.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("instance serializes")
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_keys_round_trip() {
        assert_eq!(
            instance_key("user-service", "i1"),
            "/services/user-service/i1"
        );
        assert_eq!(
            parse_instance_key(b"/services/user-service/i1"),
            Some(("user-service", "i1"))
        );
        assert_eq!(parse_instance_key(b"/services/user-service"), None);
        assert_eq!(parse_instance_key(b"/services/a/b/c"), None);
        assert_eq!(parse_instance_key(b"/other/a/b"), None);
    }

    #[test]
    fn seeds_json_parses_and_unknown_fields_survive() {
        let i = Instance::from_json(br#"{"host":"localhost","port":3000,"version":"v2"}"#).unwrap();
        assert_eq!(
            (i.host.as_str(), i.port, i.weight, i.enabled),
            ("localhost", 3000, 1.0, true)
        );
        let back: serde_json::Value = serde_json::from_slice(&i.to_json()).unwrap();
        assert_eq!(
            back,
            serde_json::json!({"host":"localhost","port":3000,"version":"v2"})
        );
        assert!(Instance::from_json(b"{\"host\":\"x\"}").is_err());
    }

    #[test]
    fn nacos_service_names_map_one_to_one_onto_segments() {
        let cases = [
            (("", "", "user-service"), "user-service"),
            (("public", "DEFAULT_GROUP", "orders"), "orders"),
            (("", "PAY", "orders"), "PAY@@orders"),
            (
                ("dev", "DEFAULT_GROUP", "orders"),
                "dev#DEFAULT_GROUP@@orders",
            ),
            (
                ("dev", "g:1", "providers:com.a#b:1.0"),
                "dev#g:1@@providers:com.a#b:1.0",
            ),
            (("", "", "a#b"), "a#b"),
        ];
        for ((ns, g, n), segment) in cases {
            let s = ServiceName::new(ns, g, n);
            assert_eq!(s.segment(), segment);
            assert_eq!(ServiceName::parse(segment), s, "{segment}");
        }
        assert_eq!(ServiceName::new("", "G", "s").grouped(), "G@@s");
        assert_eq!(ServiceName::new("", "", "s").prefix(), "/services/s/");
    }

    #[test]
    fn protection_threshold_is_reached_at_or_below_the_share() {
        assert!(reaches_protection_threshold(1, 4, 0.5));
        assert!(reaches_protection_threshold(2, 4, 0.5));
        assert!(!reaches_protection_threshold(3, 4, 0.5));
        assert!(!reaches_protection_threshold(0, 4, 0.0));
        assert!(!reaches_protection_threshold(0, 0, 0.9));
        assert_eq!(
            ServiceName::new("dev", "G", "s").meta_key(),
            "/service-meta/dev#G@@s"
        );
    }

    #[test]
    fn names_and_prefix_ends() {
        assert!(check_name("service", "user-service").is_ok());
        assert!(check_name("service", "a/b").is_err());
        assert!(check_name("service", "").is_err());
        assert!(check_name("service", "..").is_err());
        assert_eq!(prefix_end(b"/services/a/"), b"/services/a0".to_vec());
        assert_eq!(prefix_end(&[0xff, 0xff]), vec![0]);
    }
}
