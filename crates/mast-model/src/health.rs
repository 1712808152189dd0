//! Health checks of persistent instances (those not tied to a lease): how the leader probes
//! them. A check is set for a whole service in its settings (`healthCheck` in
//! `/service-meta/<segment>`) or for one instance in its JSON (`healthCheck`, which wins).
//! The result is the instance's stored `healthy` flag (and `healthDetail`, why it failed),
//! written only when it changes.

use serde::{Deserialize, Serialize};

/// The JSON field holding a check, in service settings and in instance JSON.
pub const HEALTH_CHECK_FIELD: &str = "healthCheck";

/// The instance JSON field saying why the last check failed (absent while healthy).
pub const HEALTH_DETAIL_FIELD: &str = "healthDetail";

/// Shortest probe interval, in milliseconds.
pub const MIN_INTERVAL_MS: u64 = 100;

/// Longest probe interval, in milliseconds (one hour).
pub const MAX_INTERVAL_MS: u64 = 3_600_000;

/// Largest threshold (consecutive results before the state flips).
pub const MAX_THRESHOLD: u32 = 100;

/// How an instance is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// A TCP connect to the port succeeds.
    Tcp,
    /// `GET http://<host>:<port><path>` answers 2xx or 3xx.
    Http,
    /// `grpc.health.v1.Health/Check` answers `SERVING`.
    Grpc,
}

impl ProbeKind {
    /// The name used in JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Tcp => "tcp",
            ProbeKind::Http => "http",
            ProbeKind::Grpc => "grpc",
        }
    }
}

fn default_interval() -> u64 {
    5_000
}

fn default_timeout() -> u64 {
    2_000
}

fn default_unhealthy() -> u32 {
    3
}

fn default_healthy() -> u32 {
    1
}

/// A health check, as stored (camelCase JSON). Unknown fields are refused, so a misspelt
/// setting is an error rather than a silent default.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// How to probe.
    #[serde(rename = "type")]
    pub kind: ProbeKind,
    /// Port to probe (default: the instance's port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// HTTP path, starting with `/` (default `/`); HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The service name sent in the gRPC health request (default `""`, the whole server);
    /// gRPC only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<String>,
    /// Time between probes, in milliseconds (100 ms to 1 h; default 5000).
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// How long one probe may take, in milliseconds (at least 1, at most the interval;
    /// default 2000).
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Consecutive failures that mark a healthy instance unhealthy (1–100; default 3).
    #[serde(default = "default_unhealthy")]
    pub unhealthy_threshold: u32,
    /// Consecutive successes that mark an unhealthy instance healthy (1–100; default 1).
    #[serde(default = "default_healthy")]
    pub healthy_threshold: u32,
}

/// Why a health check is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthCheckError {
    /// Not a check's JSON (unknown type or field, wrong value type).
    #[error("healthCheck is malformed: {0}")]
    Malformed(String),
    /// A field out of its range.
    #[error("healthCheck.{field} {rule}")]
    OutOfRange {
        /// The field, camelCase.
        field: &'static str,
        /// What it must be.
        rule: &'static str,
    },
    /// A field that does not apply to the check's type.
    #[error("healthCheck.{field} applies only to {kind} checks")]
    WrongKind {
        /// The field, camelCase.
        field: &'static str,
        /// The type it applies to.
        kind: &'static str,
    },
}

impl HealthCheck {
    /// Parses and validates a check.
    ///
    /// # Errors
    /// [`HealthCheckError`] for malformed JSON or a value out of range.
    pub fn from_value(v: &serde_json::Value) -> Result<HealthCheck, HealthCheckError> {
        let check: HealthCheck = serde_json::from_value(v.clone())
            .map_err(|e| HealthCheckError::Malformed(e.to_string()))?;
        check.validate()?;
        Ok(check)
    }

    /// Checks every field's range and that each applies to the type.
    ///
    /// # Errors
    /// [`HealthCheckError::OutOfRange`] or [`HealthCheckError::WrongKind`].
    pub fn validate(&self) -> Result<(), HealthCheckError> {
        let range = |field, rule| Err(HealthCheckError::OutOfRange { field, rule });
        if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&self.interval_ms) {
            return range("intervalMs", "must be 100 to 3600000 milliseconds");
        }
        if self.timeout_ms == 0 || self.timeout_ms > self.interval_ms {
            return range("timeoutMs", "must be at least 1 and at most intervalMs");
        }
        if !(1..=MAX_THRESHOLD).contains(&self.unhealthy_threshold) {
            return range("unhealthyThreshold", "must be 1 to 100");
        }
        if !(1..=MAX_THRESHOLD).contains(&self.healthy_threshold) {
            return range("healthyThreshold", "must be 1 to 100");
        }
        if self.port == Some(0) {
            return range("port", "must be 1 to 65535");
        }
        if let Some(p) = &self.path {
            if self.kind != ProbeKind::Http {
                return Err(HealthCheckError::WrongKind {
                    field: "path",
                    kind: "http",
                });
            }
            if !p.starts_with('/') || p.chars().any(|c| c.is_control() || c == ' ') {
                return range(
                    "path",
                    "must start with / and hold no spaces or control characters",
                );
            }
        }
        if self.grpc_service.is_some() && self.kind != ProbeKind::Grpc {
            return Err(HealthCheckError::WrongKind {
                field: "grpcService",
                kind: "grpc",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_round_trip() {
        let c = HealthCheck::from_value(&json!({"type": "tcp"})).unwrap();
        assert_eq!(
            (
                c.interval_ms,
                c.timeout_ms,
                c.unhealthy_threshold,
                c.healthy_threshold
            ),
            (5000, 2000, 3, 1)
        );
        let again = HealthCheck::from_value(&serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn bad_checks_say_what_is_wrong() {
        let err = |v| HealthCheck::from_value(&v).unwrap_err().to_string();
        assert!(err(json!({"type": "udp"})).contains("malformed"));
        assert!(err(json!({"type": "tcp", "intervall": 5})).contains("unknown field"));
        assert!(err(json!({"type": "tcp", "intervalMs": 0})).contains("intervalMs"));
        assert!(
            err(json!({"type": "tcp", "intervalMs": 500, "timeoutMs": 600})).contains("timeoutMs")
        );
        assert!(
            err(json!({"type": "tcp", "unhealthyThreshold": 0})).contains("unhealthyThreshold")
        );
        assert!(err(json!({"type": "tcp", "healthyThreshold": 101})).contains("healthyThreshold"));
        assert!(err(json!({"type": "tcp", "path": "/x"})).contains("only to http"));
        assert!(err(json!({"type": "http", "path": "x"})).contains("start with /"));
        assert!(err(json!({"type": "http", "grpcService": "a"})).contains("only to grpc"));
        assert!(err(json!({"type": "grpc", "port": 0})).contains("port"));
        assert!(err(json!({"type": "tcp", "intervalMs": -1})).contains("malformed"));
    }
}
