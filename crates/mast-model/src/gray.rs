//! Gray releases of a config: other content for some clients, chosen by a rule.
//!
//! A gray lives at `/config-gray/<namespace>/<group>/<data-id>/<name>` ([`GrayRelease`]).
//! A client is described by [`ClientFacts`] (its id, the labels it declares, its address);
//! [`select`] gives it the gray of highest priority whose rule matches, or none (then it gets
//! the config's normal content). Rules:
//!
//! - `labels`: every label of the rule is among the client's, with the same value
//!   (`zone=eu`, `canary=true`);
//! - `ip`: the client's address is one of the rule's (Nacos's beta);
//! - `percentage`: the client falls in the first `percentage` % of 10 000 buckets, by a hash of
//!   the config and the client id — stable, so a client in at 10 % stays in at 50 %.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::config::{CONTENT_PREFIX, ConfigId};
use crate::{NameError, check_name};

/// Prefix of gray keys.
pub const GRAY_PREFIX: &str = "/config-gray/";

/// Buckets a percentage rule counts in.
const BUCKETS: u32 = 10_000;

/// Who chooses the clients of a gray.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum GrayRule {
    /// Clients declaring all of these labels.
    Labels {
        /// Label → value; at least one.
        labels: BTreeMap<String, String>,
    },
    /// Clients at one of these addresses (Nacos's beta).
    Ip {
        /// IP addresses; at least one.
        ips: Vec<String>,
    },
    /// A stable share of clients, by client id.
    Percentage {
        /// 0 to 100.
        percentage: f64,
    },
}

/// Why a gray is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GrayError {
    /// The name is not a key segment.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A labels rule without labels, or an empty label name.
    #[error("a labels rule needs at least one label with a non-empty name")]
    NoLabels,
    /// An ip rule without addresses, or with one that is not an IP address.
    #[error("an ip rule needs IP addresses; {0:?} is not one")]
    BadIp(String),
    /// A percentage outside 0–100.
    #[error("percentage must be 0 to 100, not {0}")]
    BadPercentage(f64),
}

impl GrayRule {
    /// Checks the rule.
    ///
    /// # Errors
    /// [`GrayError`] for an empty rule, a bad address or a percentage outside 0–100.
    pub fn validate(&self) -> Result<(), GrayError> {
        match self {
            GrayRule::Labels { labels } => {
                if labels.is_empty() || labels.keys().any(|k| k.trim().is_empty()) {
                    return Err(GrayError::NoLabels);
                }
            }
            GrayRule::Ip { ips } => {
                if ips.is_empty() {
                    return Err(GrayError::BadIp(String::new()));
                }
                if let Some(bad) = ips.iter().find(|ip| ip.parse::<IpAddr>().is_err()) {
                    return Err(GrayError::BadIp(bad.clone()));
                }
            }
            GrayRule::Percentage { percentage } => {
                if !(percentage.is_finite() && (0.0..=100.0).contains(percentage)) {
                    return Err(GrayError::BadPercentage(*percentage));
                }
            }
        }
        Ok(())
    }

    /// Whether `client` is chosen by the rule for config `id`.
    pub fn matches(&self, id: &ConfigId, client: &ClientFacts) -> bool {
        match self {
            GrayRule::Labels { labels } => {
                labels.iter().all(|(k, v)| client.labels.get(k) == Some(v))
            }
            GrayRule::Ip { ips } => client
                .ip
                .is_some_and(|ip| ips.iter().any(|r| r.parse::<IpAddr>().ok() == Some(ip))),
            GrayRule::Percentage { percentage } => {
                !client.id.is_empty()
                    && f64::from(bucket(id, &client.id)) < percentage * f64::from(BUCKETS) / 100.0
            }
        }
    }
}

/// The bucket (0 to 9 999) of `client_id` for config `id`: the first four bytes of the MD5
/// of `<namespace>/<group>/<data-id>/<client-id>`, modulo 10 000.
pub fn bucket(id: &ConfigId, client_id: &str) -> u32 {
    use md5::Digest;
    let digest = md5::Md5::digest(
        format!("{}/{}/{}/{client_id}", id.namespace, id.group, id.data_id).as_bytes(),
    );
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % BUCKETS
}

/// A gray version of a config, as stored at [`gray_key`]. Unknown fields are kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrayRelease {
    /// Its name (a key segment).
    pub name: String,
    /// The content its clients get.
    pub content: String,
    /// Hex MD5 of the content.
    pub md5: String,
    /// Who gets it.
    pub rule: GrayRule,
    /// Higher first when several match (default 0; ties by name).
    #[serde(default)]
    pub priority: i32,
    /// Who last changed it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub author: String,
    /// When it was last changed, ms since the Unix epoch.
    #[serde(default)]
    pub updated_at: u64,
    /// Any other field found in the stored JSON.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// What a client is, for gray rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientFacts {
    /// Its id (percentage rules; none: never in a percentage).
    pub id: String,
    /// Labels it declares.
    pub labels: BTreeMap<String, String>,
    /// Its address, when known (ip rules).
    pub ip: Option<IpAddr>,
}

/// The prefix of `id`'s gray keys (ends with `/`).
pub fn gray_prefix(id: &ConfigId) -> String {
    format!("{GRAY_PREFIX}{}/{}/{}/", id.namespace, id.group, id.data_id)
}

/// The key of gray `name` of `id`.
///
/// # Errors
/// [`GrayError::Name`] when `name` is not a key segment.
pub fn gray_key(id: &ConfigId, name: &str) -> Result<String, GrayError> {
    check_name("gray name", name)?;
    Ok(format!("{}{name}", gray_prefix(id)))
}

/// The content key of the config a commit of `key` concerns, when `key` is a content key or a
/// gray key (what listeners of the config wake on).
pub fn content_key_of(key: &[u8]) -> Option<Vec<u8>> {
    if key.starts_with(CONTENT_PREFIX.as_bytes()) {
        return Some(key.to_vec());
    }
    parse_gray_key(key).map(|(id, _)| id.content_key().into_bytes())
}

/// The config a gray key belongs to, and the gray's name.
pub fn parse_gray_key(key: &[u8]) -> Option<(ConfigId, String)> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(GRAY_PREFIX)?;
    let (path, name) = rest.rsplit_once('/')?;
    let (id, _) = ConfigId::parse_key(format!("{CONTENT_PREFIX}{path}").as_bytes())?;
    (!name.is_empty()).then(|| (id, name.to_string()))
}

/// The gray of `grays` meant for `client` of config `id`: the matching one of highest
/// priority (ties: the first name).
pub fn select<'a>(
    id: &ConfigId,
    grays: &'a [GrayRelease],
    client: &ClientFacts,
) -> Option<&'a GrayRelease> {
    grays
        .iter()
        .filter(|g| g.rule.matches(id, client))
        .min_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(&b.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ConfigId {
        ConfigId::new("dev", "G", "app.json").unwrap()
    }

    fn gray(name: &str, priority: i32, rule: GrayRule) -> GrayRelease {
        GrayRelease {
            name: name.into(),
            content: name.into(),
            md5: String::new(),
            rule,
            priority,
            author: String::new(),
            updated_at: 0,
            extra: BTreeMap::new(),
        }
    }

    fn client(id: &str, labels: &[(&str, &str)], ip: Option<&str>) -> ClientFacts {
        ClientFacts {
            id: id.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ip: ip.map(|i| i.parse().unwrap()),
        }
    }

    #[test]
    fn keys_round_trip() {
        let k = gray_key(&id(), "canary").unwrap();
        assert_eq!(k, "/config-gray/dev/G/app.json/canary");
        assert_eq!(parse_gray_key(k.as_bytes()), Some((id(), "canary".into())));
        assert!(gray_key(&id(), "a/b").is_err());
        assert_eq!(parse_gray_key(b"/config-gray/dev/G/"), None);
    }

    #[test]
    fn rules_choose_and_priority_orders() {
        let canary: BTreeMap<String, String> = [("canary".to_string(), "true".to_string())].into();
        let grays = vec![
            gray("labels", 1, GrayRule::Labels { labels: canary }),
            gray(
                "beta",
                5,
                GrayRule::Ip {
                    ips: vec!["10.0.0.9".into()],
                },
            ),
            gray("all", 0, GrayRule::Percentage { percentage: 100.0 }),
        ];
        let pick = |c: &ClientFacts| select(&id(), &grays, c).map(|g| g.name.as_str());
        assert_eq!(
            pick(&client("a", &[("canary", "true")], None)),
            Some("labels")
        );
        assert_eq!(
            pick(&client("a", &[("canary", "true")], Some("10.0.0.9"))),
            Some("beta")
        );
        assert_eq!(
            pick(&client("a", &[("canary", "false")], None)),
            Some("all")
        );
        assert_eq!(
            pick(&client("", &[], None)),
            None,
            "no id: in no percentage"
        );
    }

    #[test]
    fn percentage_membership_is_stable_as_the_share_grows() {
        let ids: Vec<String> = (0..2000).map(|i| format!("client-{i}")).collect();
        let members = |pct: f64| -> Vec<&String> {
            let rule = GrayRule::Percentage { percentage: pct };
            ids.iter()
                .filter(|c| rule.matches(&id(), &client(c, &[], None)))
                .collect()
        };
        let (ten, fifty, all) = (members(10.0), members(50.0), members(100.0));
        assert!(ten.iter().all(|c| fifty.contains(c)), "10 % ⊂ 50 %");
        assert_eq!(all.len(), ids.len());
        assert!(members(0.0).is_empty());
        // Near the share asked for (2000 clients: within a few percent).
        assert!((150..=250).contains(&ten.len()), "{}", ten.len());
        assert!((900..=1100).contains(&fifty.len()), "{}", fifty.len());
    }

    #[test]
    fn bad_rules_are_refused() {
        let v = |r: serde_json::Value| {
            serde_json::from_value::<GrayRule>(r)
                .map_err(|e| e.to_string())
                .and_then(|r| r.validate().map_err(|e| e.to_string()))
        };
        assert!(v(serde_json::json!({"type": "percentage", "percentage": 101})).is_err());
        assert!(v(serde_json::json!({"type": "percentage", "percentage": -1})).is_err());
        assert!(v(serde_json::json!({"type": "ip", "ips": ["nope"]})).is_err());
        assert!(v(serde_json::json!({"type": "ip", "ips": []})).is_err());
        assert!(v(serde_json::json!({"type": "labels", "labels": {}})).is_err());
        assert!(v(serde_json::json!({"type": "zone"})).is_err());
        assert!(v(serde_json::json!({"type": "percentage", "percentage": 25, "x": 1})).is_err());
        assert!(v(serde_json::json!({"type": "percentage", "percentage": 25})).is_ok());
    }
}
