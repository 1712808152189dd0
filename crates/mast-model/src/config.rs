//! Configs: names, formats and validation, metadata and history records, and their keys.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::{NameError, check_name};

/// Default namespace, as Nacos.
pub const DEFAULT_NAMESPACE: &str = "public";
/// Default group, as Nacos.
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";

/// Prefix of config contents.
pub const CONTENT_PREFIX: &str = "/configs/";
/// Prefix of config metadata.
pub const META_PREFIX: &str = "/config-meta/";
/// Prefix of config history.
pub const HISTORY_PREFIX: &str = "/config-history/";
/// Prefix of client reports: which version of a config each client has applied
/// (`/config-clients/<namespace>/<group>/<data-id>/<client-id>`, [`AppliedReport`]).
pub const CLIENTS_PREFIX: &str = "/config-clients/";

/// Which config: namespace / group / data id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigId {
    /// Namespace (environment or tenant), default `public`.
    pub namespace: String,
    /// Group inside the namespace, default `DEFAULT_GROUP`.
    pub group: String,
    /// The config's name, e.g. `my-app-config.json`.
    pub data_id: String,
}

impl ConfigId {
    /// A config id; empty namespace or group take the defaults.
    ///
    /// # Errors
    /// [`NameError`] when a part cannot be a key segment.
    pub fn new(namespace: &str, group: &str, data_id: &str) -> Result<ConfigId, NameError> {
        let namespace = if namespace.is_empty() {
            DEFAULT_NAMESPACE
        } else {
            namespace
        };
        let group = if group.is_empty() {
            DEFAULT_GROUP
        } else {
            group
        };
        check_name("namespace", namespace)?;
        check_name("group", group)?;
        check_name("data id", data_id)?;
        Ok(ConfigId {
            namespace: namespace.into(),
            group: group.into(),
            data_id: data_id.into(),
        })
    }

    fn path(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.group, self.data_id)
    }

    /// Where the content is: `/configs/<namespace>/<group>/<data-id>`.
    pub fn content_key(&self) -> String {
        format!("{CONTENT_PREFIX}{}", self.path())
    }

    /// Where the metadata is: `/config-meta/<namespace>/<group>/<data-id>`.
    pub fn meta_key(&self) -> String {
        format!("{META_PREFIX}{}", self.path())
    }

    /// The prefix of this config's history keys (ends with `/`).
    pub fn history_prefix(&self) -> String {
        format!("{HISTORY_PREFIX}{}/", self.path())
    }

    /// The prefix of this config's client reports (ends with `/`).
    pub fn clients_prefix(&self) -> String {
        format!("{CLIENTS_PREFIX}{}/", self.path())
    }

    /// The report key of client `client_id`.
    pub fn client_key(&self, client_id: &str) -> String {
        format!("{}{client_id}", self.clients_prefix())
    }

    /// The key of one version: the number zero-padded to 20 digits.
    pub fn history_key(&self, version: u64) -> String {
        format!("{}{version:020}", self.history_prefix())
    }

    /// Parses a content, meta or history key back into the config id (and the version for a
    /// history key).
    pub fn parse_key(key: &[u8]) -> Option<(ConfigId, Option<u64>)> {
        let key = std::str::from_utf8(key).ok()?;
        let (rest, history) = if let Some(r) = key.strip_prefix(CONTENT_PREFIX) {
            (r, false)
        } else if let Some(r) = key.strip_prefix(META_PREFIX) {
            (r, false)
        } else {
            (key.strip_prefix(HISTORY_PREFIX)?, true)
        };
        let mut parts = rest.split('/');
        let (ns, group, data_id) = (parts.next()?, parts.next()?, parts.next()?);
        let version = if history {
            Some(parts.next()?.parse().ok()?)
        } else {
            None
        };
        if parts.next().is_some() {
            return None;
        }
        Some((ConfigId::new(ns, group, data_id).ok()?, version))
    }
}

/// The format of a config's content; publishing checks that the content parses as it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigFormat {
    /// Any UTF-8 text.
    #[default]
    Text,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
    /// TOML.
    Toml,
    /// Java `.properties`.
    Properties,
    /// XML (checked for well-formedness; Nacos's `xml` type).
    Xml,
    /// HTML (not checked: browsers accept anything; Nacos's `html` type).
    Html,
}

impl std::str::FromStr for ConfigFormat {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, ValidationError> {
        match s.to_ascii_lowercase().as_str() {
            "text" | "txt" | "" => Ok(ConfigFormat::Text),
            "json" => Ok(ConfigFormat::Json),
            "yaml" | "yml" => Ok(ConfigFormat::Yaml),
            "toml" => Ok(ConfigFormat::Toml),
            "properties" => Ok(ConfigFormat::Properties),
            "xml" => Ok(ConfigFormat::Xml),
            "html" | "htm" => Ok(ConfigFormat::Html),
            other => Err(ValidationError::UnknownFormat(other.to_string())),
        }
    }
}

/// Why content was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Not a format Mast knows.
    #[error("unknown config format {0:?} (text, json, yaml, toml, properties, xml, html)")]
    UnknownFormat(String),
    /// Content is not UTF-8.
    #[error("content is not valid UTF-8")]
    NotUtf8,
    /// Content does not parse in its format.
    #[error("invalid {format}: {message}")]
    Syntax {
        /// The format.
        format: &'static str,
        /// The parser's message (with line and column where it gives them).
        message: String,
    },
    /// The schema attached to the config is not a valid JSON Schema.
    #[error("invalid JSON Schema: {0}")]
    BadSchema(String),
    /// Content does not satisfy the attached JSON Schema.
    #[error("content does not match the schema: {0}")]
    Schema(String),
    /// A schema is attached, but the format has no structure to check (text, properties are
    /// checked as flat string maps).
    #[error("a JSON Schema needs json, yaml, toml or properties content")]
    SchemaNeedsStructure,
}

impl ConfigFormat {
    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            ConfigFormat::Text => "text",
            ConfigFormat::Json => "json",
            ConfigFormat::Yaml => "yaml",
            ConfigFormat::Toml => "toml",
            ConfigFormat::Properties => "properties",
            ConfigFormat::Xml => "xml",
            ConfigFormat::Html => "html",
        }
    }

    /// Parses `content` into a JSON value (text, XML and HTML give a string, once XML is seen
    /// to be well-formed; properties a flat object).
    ///
    /// # Errors
    /// [`ValidationError::NotUtf8`] or [`ValidationError::Syntax`].
    pub fn parse(self, content: &[u8]) -> Result<serde_json::Value, ValidationError> {
        let text = std::str::from_utf8(content).map_err(|_| ValidationError::NotUtf8)?;
        let syntax = |message: String| ValidationError::Syntax {
            format: self.name(),
            message,
        };
        match self {
            ConfigFormat::Text | ConfigFormat::Html => {
                Ok(serde_json::Value::String(text.to_string()))
            }
            ConfigFormat::Xml => {
                check_xml(text).map_err(syntax)?;
                Ok(serde_json::Value::String(text.to_string()))
            }
            ConfigFormat::Json => serde_json::from_str(text).map_err(|e| syntax(e.to_string())),
            ConfigFormat::Yaml => serde_norway::from_str(text).map_err(|e| syntax(e.to_string())),
            ConfigFormat::Toml => {
                let v: toml::Value = toml::from_str(text).map_err(|e| syntax(e.to_string()))?;
                serde_json::to_value(v).map_err(|e| syntax(e.to_string()))
            }
            ConfigFormat::Properties => {
                let map =
                    java_properties::read(text.as_bytes()).map_err(|e| syntax(e.to_string()))?;
                Ok(serde_json::Value::Object(
                    map.into_iter()
                        .map(|(k, v)| (k, serde_json::Value::String(v)))
                        .collect(),
                ))
            }
        }
    }

    /// The format a data id's extension suggests (`app.yaml` → YAML), if any.
    pub fn from_data_id(data_id: &str) -> Option<ConfigFormat> {
        let (_, ext) = data_id.rsplit_once('.')?;
        match ext.to_ascii_lowercase().as_str() {
            "json" => Some(ConfigFormat::Json),
            "yaml" | "yml" => Some(ConfigFormat::Yaml),
            "toml" => Some(ConfigFormat::Toml),
            "properties" => Some(ConfigFormat::Properties),
            "txt" | "text" => Some(ConfigFormat::Text),
            "xml" => Some(ConfigFormat::Xml),
            "html" | "htm" => Some(ConfigFormat::Html),
            _ => None,
        }
    }

    /// Checks that `content` parses in this format and, when `schema` is given, satisfies it.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(
        self,
        content: &[u8],
        schema: Option<&serde_json::Value>,
    ) -> Result<(), ValidationError> {
        let value = self.parse(content)?;
        if let Some(schema) = schema {
            if matches!(
                self,
                ConfigFormat::Text | ConfigFormat::Xml | ConfigFormat::Html
            ) {
                return Err(ValidationError::SchemaNeedsStructure);
            }
            let validator = jsonschema::validator_for(schema)
                .map_err(|e| ValidationError::BadSchema(e.to_string()))?;
            let errors: Vec<String> = validator
                .iter_errors(&value)
                .take(5)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            if !errors.is_empty() {
                return Err(ValidationError::Schema(errors.join("; ")));
            }
        }
        Ok(())
    }
}

/// Reads `text` as XML to its end: every element closed in order, at most one root element.
fn check_xml(text: &str) -> Result<(), String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let (mut depth, mut roots) = (0usize, 0usize);
    loop {
        let at = reader.buffer_position();
        let event = reader.read_event();
        if let Ok(Event::Start(e) | Event::Empty(e)) = &event {
            for attr in e.attributes() {
                attr.map_err(|e| format!("{e} at byte {at}"))?;
            }
        }
        match event {
            Ok(Event::Start(_)) => {
                if depth == 0 {
                    roots += 1;
                }
                depth += 1;
            }
            Ok(Event::Empty(_)) if depth == 0 => roots += 1,
            Ok(Event::End(_)) => depth = depth.saturating_sub(1),
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("{e} at byte {at}")),
        }
        if roots > 1 {
            return Err(format!("a second root element at byte {at}"));
        }
    }
    if depth > 0 {
        return Err("an element is not closed".into());
    }
    if roots == 0 {
        return Err("no root element".into());
    }
    Ok(())
}

/// Checks that `schema` is a usable JSON Schema (an object or a boolean that compiles), so a
/// broken schema is refused when it is attached rather than when content is next published.
///
/// # Errors
/// [`ValidationError::BadSchema`] with the compiler's message.
pub fn check_schema(schema: &serde_json::Value) -> Result<(), ValidationError> {
    if !(schema.is_object() || schema.is_boolean()) {
        return Err(ValidationError::BadSchema(
            "a schema must be a JSON object or a boolean".into(),
        ));
    }
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|e| ValidationError::BadSchema(e.to_string()))
}

/// Hex MD5 of content, as Nacos reports it.
pub fn md5_hex(content: &[u8]) -> String {
    use md5::Digest;
    let digest = md5::Md5::digest(content);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What is stored at a config's meta key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMeta {
    /// Content format.
    pub format: ConfigFormat,
    /// Hex MD5 of the current content.
    pub md5: String,
    /// Current version, from 1, +1 on every publish (rollbacks included).
    pub version: u64,
    /// Human description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Tags for search.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Who published the current version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub author: String,
    /// When the current version was published, in milliseconds since the Unix epoch.
    pub updated_at: u64,
    /// JSON Schema every published version must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// The newest history version used, when a gray release's entry took a number after
    /// `version` (0 otherwise): the next version is one more than the larger of the two.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_history: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl ConfigMeta {
    /// The newest history version used (the current version, or a gray entry's after it).
    pub fn newest_history(&self) -> u64 {
        self.version.max(self.last_history)
    }
}

/// What a client reports when it has applied a version of a config, stored at
/// [`ConfigId::client_key`] on the client's lease (so the report of a client that is gone
/// disappears with the lease). Unknown fields are kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedReport {
    /// The client's id (a key segment: no `/`).
    pub client_id: String,
    /// Hex MD5 of the content it applied.
    pub md5: String,
    /// The version it applied, when it knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// When it applied it, in milliseconds since the Unix epoch (the client's clock, or the
    /// server's for a Nacos client).
    pub applied_at: u64,
    /// Where the client runs (its address as the server saw it, or what it says).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// How it reported: `sdk` or `nacos`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub via: String,
    /// Any other field found in the stored JSON.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// How a history entry came to be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryOp {
    /// A publish of new content.
    #[default]
    Publish,
    /// A rollback: old content published again as a new version.
    Rollback,
    /// The config was deleted (the entry keeps the last content).
    Delete,
    /// A gray release was published or changed (the entry keeps its content; the normal
    /// version is unchanged).
    #[serde(rename = "gray-publish")]
    GrayPublish,
    /// A gray release's content became the normal version (this entry is that version).
    #[serde(rename = "gray-promote")]
    GrayPromote,
    /// A gray release was stopped: its clients fall back to the normal version.
    #[serde(rename = "gray-stop")]
    GrayStop,
}

/// One version of a config, stored under its history key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigHistoryEntry {
    /// The version number.
    pub version: u64,
    /// The content of this version.
    pub content: String,
    /// Its format.
    pub format: ConfigFormat,
    /// Hex MD5 of the content.
    pub md5: String,
    /// Who published it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub author: String,
    /// When, in milliseconds since the Unix epoch.
    pub time: u64,
    /// Publish, rollback or delete.
    pub op: HistoryOp,
    /// For a rollback: the version whose content was restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<u64>,
    /// For gray entries: the gray release's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gray: Option<String>,
    /// For gray publishes: its rule, as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gray_rule: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_defaults() {
        let id = ConfigId::new("", "", "my-app-config.json").unwrap();
        assert_eq!(
            id.content_key(),
            "/configs/public/DEFAULT_GROUP/my-app-config.json"
        );
        assert_eq!(
            id.history_key(7),
            "/config-history/public/DEFAULT_GROUP/my-app-config.json/00000000000000000007"
        );
        assert_eq!(
            ConfigId::parse_key(id.history_key(7).as_bytes()),
            Some((id.clone(), Some(7)))
        );
        assert_eq!(
            ConfigId::parse_key(id.meta_key().as_bytes()),
            Some((id, None))
        );
        assert!(ConfigId::new("dev", "g", "a/b").is_err());
    }

    #[test]
    fn formats_validate() {
        assert!(ConfigFormat::Json.validate(br#"{"a":1}"#, None).is_ok());
        assert!(matches!(
            ConfigFormat::Json.validate(b"{a:1}", None),
            Err(ValidationError::Syntax { .. })
        ));
        assert!(
            ConfigFormat::Yaml
                .validate(b"a: 1\nb: [1, 2]\n", None)
                .is_ok()
        );
        assert!(ConfigFormat::Yaml.validate(b"a: [1, 2\n", None).is_err());
        assert!(
            ConfigFormat::Toml
                .validate(b"a = 1\n[b]\nc = 'x'\n", None)
                .is_ok()
        );
        assert!(ConfigFormat::Toml.validate(b"a = \n", None).is_err());
        assert!(
            ConfigFormat::Properties
                .validate(b"a=1\nb = two\n", None)
                .is_ok()
        );
        assert!(ConfigFormat::Text.validate(&[0xff, 0xfe], None).is_err());
        assert_eq!("YML".parse::<ConfigFormat>().unwrap(), ConfigFormat::Yaml);
    }

    #[test]
    fn xml_must_be_well_formed_and_html_is_free() {
        let xml = ConfigFormat::Xml;
        assert!(
            xml.validate(b"<?xml version=\"1.0\"?><a x=\"1\"><b/>t</a>", None)
                .is_ok()
        );
        for bad in [
            &b"<a><b></a>"[..],
            b"<a>",
            b"<a/><b/>",
            b"<a x=1/>",
            b"{}",
            b"",
        ] {
            assert!(
                matches!(xml.validate(bad, None), Err(ValidationError::Syntax { .. })),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(ConfigFormat::Html.validate(b"<p>unclosed", None).is_ok());
        assert_eq!(
            ConfigFormat::from_data_id("log.xml"),
            Some(ConfigFormat::Xml)
        );
        assert!(matches!(
            xml.validate(b"<a/>", Some(&serde_json::json!({}))),
            Err(ValidationError::SchemaNeedsStructure)
        ));
    }

    #[test]
    fn schema_is_enforced() {
        let schema = serde_json::json!({
            "type": "object",
            "required": ["port"],
            "properties": {"port": {"type": "integer", "minimum": 1}}
        });
        assert!(
            ConfigFormat::Json
                .validate(br#"{"port": 8080}"#, Some(&schema))
                .is_ok()
        );
        assert!(matches!(
            ConfigFormat::Json.validate(br#"{"port": "x"}"#, Some(&schema)),
            Err(ValidationError::Schema(_))
        ));
        assert!(
            ConfigFormat::Yaml
                .validate(b"port: 8080\n", Some(&schema))
                .is_ok()
        );
        assert!(
            ConfigFormat::Toml
                .validate(b"port = 0\n", Some(&schema))
                .is_err()
        );
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert!(check_schema(&schema).is_ok());
        assert!(check_schema(&serde_json::json!({"type": "no-such-type"})).is_err());
        assert!(check_schema(&serde_json::json!([1])).is_err());
        assert_eq!(
            ConfigFormat::from_data_id("app.YML"),
            Some(ConfigFormat::Yaml)
        );
        assert_eq!(ConfigFormat::from_data_id("app"), None);
    }
}
