//! Operator overrides: an instance's weight, enabled and metadata entries as an operator set
//! them, kept apart from what the instance registers so that they survive re-registration.
//!
//! An override lives at `/instance-overrides/<service-segment>/<instance-id>` (the instance
//! key's two segments), as JSON [`InstanceOverride`]. It outlives the instance key: an
//! instance that dies and registers again under the same id gets the operator's weight and
//! enabled back. It goes only when an operator clears it (deletes the key).
//!
//! The instance key's JSON always holds the values in force, so every reader — etcd clients
//! included — sees them. While an override holds, the instance JSON also carries
//! `"registered": {"weight", "enabled", "metadata"}`: what the instance itself asked for,
//! restored when the override is cleared. [`apply_override`] computes that JSON; it is idempotent, so
//! applying it again to its own output changes nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Instance;

/// Prefix of override keys.
pub const OVERRIDE_PREFIX: &str = "/instance-overrides/";

/// The field of an instance's JSON that keeps its registered weight and enabled while an
/// override holds.
pub const REGISTERED_FIELD: &str = "registered";

/// The override key of instance `id` of the service with key segment `segment`.
pub fn override_key(segment: &str, id: &str) -> String {
    format!("{OVERRIDE_PREFIX}{segment}/{id}")
}

/// Splits an override key into `(service segment, instance id)`; `None` for any other key.
pub fn parse_override_key(key: &[u8]) -> Option<(&str, &str)> {
    let rest = std::str::from_utf8(key)
        .ok()?
        .strip_prefix(OVERRIDE_PREFIX)?;
    let (service, id) = rest.split_once('/')?;
    if service.is_empty() || id.is_empty() || id.contains('/') {
        return None;
    }
    Some((service, id))
}

/// What an operator set on an instance. Absent fields are not overridden. Unknown fields are
/// kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceOverride {
    /// Weight in force whatever the instance registers (finite, >= 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Enabled in force whatever the instance registers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Metadata entries in force whatever the instance registers: a value sets the entry,
    /// `null` removes it; entries not named keep what the instance registers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, Option<String>>,
    /// Who set it (user name, or empty with auth off).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub set_by: String,
    /// When it was last set, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub set_at: u64,
    /// Any other field found in the stored JSON.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl InstanceOverride {
    /// Parses a stored override.
    ///
    /// # Errors
    /// When the value is not an override's JSON object.
    pub fn from_json(bytes: &[u8]) -> Result<InstanceOverride, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The JSON stored in the override key.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("override serializes")
    }

    /// Whether it overrides nothing.
    pub fn is_empty(&self) -> bool {
        self.weight.is_none() && self.enabled.is_none() && self.metadata.is_empty()
    }
}

/// What the instance registered, kept in its JSON while an override holds. `metadata` is
/// absent in what overrides written before metadata could be overridden kept: the instance's
/// metadata then is still its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Registered {
    weight: f64,
    enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata: Option<BTreeMap<String, String>>,
}

/// Puts `ov` in force on `inst` (or, with `None` or an empty override, restores what the
/// instance registered). Returns whether `inst` changed.
///
/// The registered values are taken from the `registered` field when there is one (the
/// instance is already overridden), else from the instance's own fields (it has just
/// registered).
pub fn apply_override(inst: &mut Instance, ov: Option<&InstanceOverride>) -> bool {
    let before = inst.clone();
    let kept = inst
        .extra
        .get(REGISTERED_FIELD)
        .and_then(|v| serde_json::from_value::<Registered>(v.clone()).ok());
    let mut registered = kept.unwrap_or(Registered {
        weight: inst.weight,
        enabled: inst.enabled,
        metadata: None,
    });
    let own_metadata = registered
        .metadata
        .get_or_insert_with(|| inst.metadata.clone())
        .clone();
    match ov.filter(|o| !o.is_empty()) {
        Some(ov) => {
            inst.weight = ov.weight.unwrap_or(registered.weight);
            inst.enabled = ov.enabled.unwrap_or(registered.enabled);
            let mut metadata = own_metadata;
            for (k, v) in &ov.metadata {
                match v {
                    Some(v) => metadata.insert(k.clone(), v.clone()),
                    None => metadata.remove(k),
                };
            }
            inst.metadata = metadata;
            // The registered metadata is kept only while entries of it are overridden.
            if ov.metadata.is_empty() {
                registered.metadata = None;
            }
            inst.extra.insert(
                REGISTERED_FIELD.to_string(),
                serde_json::to_value(registered).expect("registered serializes"),
            );
        }
        None => {
            inst.weight = registered.weight;
            inst.enabled = registered.enabled;
            inst.metadata = own_metadata;
            inst.extra.remove(REGISTERED_FIELD);
        }
    }
    *inst != before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ov(weight: Option<f64>, enabled: Option<bool>) -> InstanceOverride {
        InstanceOverride {
            weight,
            enabled,
            ..Default::default()
        }
    }

    #[test]
    fn keys_round_trip() {
        let k = override_key("DEFAULT_GROUP@@pay", "10.0.0.1#80#DEFAULT");
        assert_eq!(
            k,
            "/instance-overrides/DEFAULT_GROUP@@pay/10.0.0.1#80#DEFAULT"
        );
        assert_eq!(
            parse_override_key(k.as_bytes()),
            Some(("DEFAULT_GROUP@@pay", "10.0.0.1#80#DEFAULT"))
        );
        assert_eq!(parse_override_key(b"/instance-overrides/pay"), None);
        assert_eq!(parse_override_key(b"/instance-overrides/pay/a/b"), None);
        assert_eq!(parse_override_key(b"/services/pay/a"), None);
    }

    #[test]
    fn override_then_reregister_then_clear() {
        let mut inst = Instance::new("10.0.0.1", 80);
        inst.weight = 3.0;
        let o = ov(Some(0.5), Some(false));
        assert!(apply_override(&mut inst, Some(&o)));
        assert_eq!((inst.weight, inst.enabled), (0.5, false));
        // Applying again changes nothing.
        assert!(!apply_override(&mut inst, Some(&o)));
        // The instance registers again with its own values: the override wins again, and
        // the newly registered values are the ones kept.
        let mut again = Instance::new("10.0.0.1", 80);
        again.weight = 7.0;
        assert!(apply_override(&mut again, Some(&o)));
        assert_eq!((again.weight, again.enabled), (0.5, false));
        // Cleared: back to what it registered, and no trace left.
        assert!(apply_override(&mut again, None));
        assert_eq!((again.weight, again.enabled), (7.0, true));
        assert!(!again.extra.contains_key(REGISTERED_FIELD));
        assert_eq!(again.to_json(), {
            let mut i = Instance::new("10.0.0.1", 80);
            i.weight = 7.0;
            i.to_json()
        });
    }

    #[test]
    fn partial_override_keeps_the_other_field_registered() {
        let mut inst = Instance::new("h", 1);
        inst.enabled = false;
        apply_override(&mut inst, Some(&ov(Some(2.0), None)));
        assert_eq!((inst.weight, inst.enabled), (2.0, false));
        // Widened to enabled too, then narrowed back to weight only.
        apply_override(&mut inst, Some(&ov(Some(2.0), Some(true))));
        assert!(inst.enabled);
        apply_override(&mut inst, Some(&ov(Some(2.0), None)));
        assert!(!inst.enabled);
        // An empty override is no override.
        assert!(apply_override(&mut inst, Some(&ov(None, None))));
        assert_eq!(inst.weight, 1.0);
    }

    #[test]
    fn metadata_entries_stick_and_come_back() {
        let mut inst = Instance::new("h", 1);
        inst.metadata.insert("zone".into(), "eu".into());
        inst.metadata.insert("v".into(), "1".into());
        let mut o = ov(None, None);
        o.metadata.insert("zone".into(), Some("us".into()));
        o.metadata.insert("v".into(), None);
        assert!(apply_override(&mut inst, Some(&o)));
        assert_eq!(
            inst.metadata,
            BTreeMap::from([("zone".into(), "us".into())])
        );
        assert!(!apply_override(&mut inst, Some(&o)), "idempotent");
        // Registering again with new metadata: the operator's entries win, the rest is new.
        let mut again = Instance::new("h", 1);
        again.metadata.insert("zone".into(), "eu".into());
        again.metadata.insert("v".into(), "2".into());
        again.metadata.insert("team".into(), "a".into());
        apply_override(&mut again, Some(&o));
        assert_eq!(
            again.metadata,
            BTreeMap::from([("team".into(), "a".into()), ("zone".into(), "us".into())])
        );
        // Cleared: exactly what it registered.
        apply_override(&mut again, None);
        assert_eq!(again.metadata.get("v").map(String::as_str), Some("2"));
        assert_eq!(again.metadata.get("zone").map(String::as_str), Some("eu"));
    }

    #[test]
    fn an_override_kept_before_metadata_keeps_the_instances_metadata() {
        let mut inst = Instance::new("h", 1);
        inst.metadata.insert("zone".into(), "eu".into());
        inst.weight = 0.5;
        inst.extra.insert(
            REGISTERED_FIELD.into(),
            serde_json::json!({"weight": 1.0, "enabled": true}),
        );
        apply_override(&mut inst, None);
        assert_eq!((inst.weight, inst.metadata.len()), (1.0, 1));
    }

    #[test]
    fn without_override_an_instance_is_untouched() {
        let mut inst = Instance::new("h", 1);
        assert!(!apply_override(&mut inst, None));
    }
}
