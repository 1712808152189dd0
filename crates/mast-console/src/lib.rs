//! Mast's web console, served by the binary itself: `GET /` sends a browser to `/ui/`, and
//! `/ui/…` answers the files of the bundle built from `console/` (`npm run build` writes
//! `crates/mast-console/dist/`, which is committed, so a build needs no Node.js).
//!
//! The console is a client like any other: every call it makes goes through the etcd JSON
//! gateway or `/mast/v1` with the user's token, under the same permission checks. Nothing here
//! reads or writes state.
//!
//! Files whose names carry a content hash (`app-<hash>.js`) are cached for a year;
//! `index.html` is revalidated on every load (its ETag is its SHA-256), so a new binary's
//! console is picked up at once. Every answer carries a Content-Security-Policy that allows
//! only this origin (styles inline, as the editor injects them).

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// The bundle: `dist/` as `npm run build` left it.
#[derive(rust_embed::Embed)]
#[folder = "dist/"]
struct Assets;

/// The console's address.
pub const BASE: &str = "/ui/";

const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Routes: `GET /` and `GET /ui` redirect to `/ui/`; `GET /ui/` is `index.html`;
/// `GET /ui/{file}` is a bundle file or a 404 with a JSON error body.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary(BASE) }))
        .route("/ui", get(|| async { Redirect::permanent(BASE) }))
        .route(
            "/ui/",
            get(|h: HeaderMap| async move { file("index.html", &h) }),
        )
        .route(
            "/ui/{*path}",
            get(|Path(path): Path<String>, h: HeaderMap| async move { file(&path, &h) }),
        )
}

/// Whether the bundle holds `index.html` (false only in a build from a tree whose
/// `dist/` was removed).
pub fn bundled() -> bool {
    Assets::get("index.html").is_some()
}

fn file(path: &str, headers: &HeaderMap) -> Response {
    let Some(f) = Assets::get(path) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            format!(
                "{{\"error\":\"no console file {}\",\"code\":\"not_found\"}}",
                path.escape_default()
            ),
        )
            .into_response();
    };
    let etag = format!(
        "\"{}\"",
        f.metadata
            .sha256_hash()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let cache = if path == "index.html" {
        "no-cache"
    } else {
        "public, max-age=31536000, immutable"
    };
    let mut resp = if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, f.metadata.mimetype().to_string())],
            f.data.into_owned(),
        )
            .into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    async fn get(path: &str, etag: Option<&str>) -> Response {
        let mut req = Request::get(path);
        if let Some(e) = etag {
            req = req.header(header::IF_NONE_MATCH, e);
        }
        router::<()>()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn serves_the_bundle_with_its_headers() {
        assert!(
            bundled(),
            "dist/index.html is missing: run `npm run build` in console/"
        );
        let r = get("/", None).await;
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(r.headers()[header::LOCATION], "/ui/");
        let r = get("/ui", None).await;
        assert_eq!(r.headers()[header::LOCATION], "/ui/");

        let r = get("/ui/", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
        assert!(
            r.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("'self'")
        );
        let etag = r.headers()[header::ETAG].to_str().unwrap().to_string();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let html = String::from_utf8(body.to_vec()).unwrap();
        // Every file index.html names is served, cached for good.
        let script = html
            .split("src=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("index.html names its script");
        let r = get(&format!("/ui/{script}"), None).await;
        assert_eq!(r.status(), StatusCode::OK, "{script}");
        assert!(
            r.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .contains("javascript")
        );
        assert!(
            r.headers()[header::CACHE_CONTROL]
                .to_str()
                .unwrap()
                .contains("immutable")
        );

        let r = get("/ui/", Some(&etag)).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        let r = get("/ui/nothing-here.js", None).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}
