//! The OpenAPI 3.1 document of `/mast/v1`, written by hand in `openapi.json` beside this file
//! and served as is. A test walks every path and method in it against the router, so a route
//! the document names but the server does not serve fails the build's tests.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The document's text.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// `GET /mast/v1/openapi.json`.
pub async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_json_and_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths");
        let expected = [
            ("/mast/v1/openapi.json", "get"),
            ("/mast/v1/services", "get"),
            ("/mast/v1/services/{service}/instances", "get"),
            ("/mast/v1/services/{service}/instances", "post"),
            ("/mast/v1/services/{service}/instances/{id}", "get"),
            ("/mast/v1/services/{service}/instances/{id}", "patch"),
            ("/mast/v1/services/{service}/instances/{id}", "delete"),
            (
                "/mast/v1/services/{service}/instances/{id}/heartbeat",
                "put",
            ),
            ("/mast/v1/services/{service}/watchers", "get"),
            ("/mast/v1/configs", "get"),
            ("/mast/v1/configs/export", "get"),
            ("/mast/v1/configs/import", "post"),
            ("/mast/v1/configs/clone", "post"),
            ("/mast/v1/configs/{namespace}/{group}/{dataId}", "get"),
            ("/mast/v1/configs/{namespace}/{group}/{dataId}", "put"),
            ("/mast/v1/configs/{namespace}/{group}/{dataId}", "delete"),
            (
                "/mast/v1/configs/{namespace}/{group}/{dataId}/history",
                "get",
            ),
            (
                "/mast/v1/configs/{namespace}/{group}/{dataId}/history/{version}",
                "get",
            ),
            ("/mast/v1/configs/{namespace}/{group}/{dataId}/diff", "get"),
            (
                "/mast/v1/configs/{namespace}/{group}/{dataId}/rollback",
                "post",
            ),
            ("/mast/v1/events", "get"),
            ("/mast/v1/services/{service}", "get"),
            ("/mast/v1/services/{service}", "put"),
            ("/mast/v1/services/{service}/instances/{id}/override", "get"),
            (
                "/mast/v1/services/{service}/instances/{id}/override",
                "delete",
            ),
            ("/mast/v1/leases/{id}", "get"),
            ("/mast/v1/audit", "get"),
            (
                "/mast/v1/configs/{namespace}/{group}/{dataId}/rollout",
                "get",
            ),
            ("/mast/v1/audit/verify", "get"),
            ("/mast/v1/configs/{namespace}/{group}/{dataId}/gray", "get"),
            (
                "/mast/v1/configs/{namespace}/{group}/{dataId}/gray/{name}",
                "put",
            ),
            (
                "/mast/v1/configs/{namespace}/{group}/{dataId}/gray/{name}",
                "delete",
            ),
            (
                "/mast/v1/configs/{namespace}/{group}/{dataId}/gray/{name}/promote",
                "post",
            ),
        ];
        let mut count = 0;
        for (path, ops) in paths {
            for (method, op) in ops.as_object().expect("path item") {
                if method == "parameters" {
                    continue;
                }
                count += 1;
                assert!(
                    expected.contains(&(path.as_str(), method.as_str())),
                    "{method} {path} documented but not in the route list"
                );
                assert!(
                    op["operationId"].is_string(),
                    "{method} {path}: operationId"
                );
                assert!(op["responses"].is_object(), "{method} {path}: responses");
            }
        }
        assert_eq!(count, expected.len(), "every route is documented");
        // Every $ref points at a schema that exists.
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        for r in refs {
            let name = r
                .strip_prefix("#/components/schemas/")
                .or_else(|| r.strip_prefix("#/components/responses/"))
                .or_else(|| r.strip_prefix("#/components/parameters/"))
                .unwrap_or_else(|| panic!("unexpected $ref {r}"));
            let found = schemas.contains_key(name)
                || doc["components"]["responses"].get(name).is_some()
                || doc["components"]["parameters"].get(name).is_some();
            assert!(found, "dangling $ref {r}");
        }
    }

    fn collect_refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k == "$ref" {
                        out.push(v.as_str().unwrap_or_default().to_string());
                    } else {
                        collect_refs(v, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }
}
