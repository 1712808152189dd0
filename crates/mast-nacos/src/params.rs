//! Request parameters as Nacos reads them: the query string and, for a form body
//! (`application/x-www-form-urlencoded`), the body's fields, merged (Spring's
//! `getParameter`: the first value of a name wins, query first). Nacos clients send the same
//! operation either way — `nacos-naming` puts every parameter of a POST in the query string,
//! `nacos-config` in the body.

use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;

use crate::AppState;
use crate::error::NacosError;

/// Bytes a form body may carry beyond the node's request limit (names, other fields).
const FORM_OVERHEAD_BYTES: usize = 64 * 1024;

/// The merged parameters of one request, in arrival order.
#[derive(Debug, Default, Clone)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parameters from a query string and an optional form body (both URL-encoded).
    pub fn parse(query: Option<&str>, form: Option<&[u8]>) -> Params {
        let mut all: Vec<(String, String)> = Vec::new();
        if let Some(q) = query {
            all.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
        }
        if let Some(body) = form {
            all.extend(form_urlencoded::parse(body).into_owned());
        }
        Params(all)
    }

    /// These parameters with `name` = `value` added when `name` is absent or blank.
    pub fn with_default(mut self, name: &str, value: &str) -> Params {
        if self.opt(name).is_none() {
            self.0.retain(|(k, _)| k != name);
            self.0.push((name.to_string(), value.to_string()));
        }
        self
    }

    /// These parameters with `name` = `value`, replacing whatever was given.
    pub fn set(mut self, name: &str, value: &str) -> Params {
        self.0.retain(|(k, _)| k != name);
        self.0.push((name.to_string(), value.to_string()));
        self
    }

    /// These parameters without `name`.
    pub fn without(mut self, name: &str) -> Params {
        self.0.retain(|(k, _)| k != name);
        self
    }

    /// These parameters with `to` set from `from` when `to` is absent (a v2 name for a v1 one).
    pub fn alias(mut self, from: &str, to: &str) -> Params {
        if self.get(to).is_none()
            && let Some(v) = self.get(from).map(str::to_string)
        {
            self.0.push((to.to_string(), v));
        }
        self
    }

    /// The first value of `name`, if given (possibly empty).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `name`, with surrounding blanks removed; `None` when absent or blank.
    pub fn opt(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|v| !v.is_empty())
    }

    /// The value of `name`, which must be present (it may be blank: the caller checks that
    /// with Nacos's words for the parameter).
    ///
    /// # Errors
    /// [`NacosError::MissingParam`] naming the parameter, as Nacos.
    pub fn required(&self, name: &str) -> Result<&str, NacosError> {
        self.get(name).ok_or_else(|| NacosError::missing(name))
    }
}

impl FromRequest<AppState> for Params {
    type Rejection = NacosError;

    async fn from_request(req: Request, st: &AppState) -> Result<Params, NacosError> {
        let query = req.uri().query().map(str::to_string);
        let is_form = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            });
        let limit = st.node.max_request_bytes() + FORM_OVERHEAD_BYTES;
        let body = if is_form {
            let bytes = axum::body::to_bytes(req.into_body(), limit)
                .await
                .map_err(|_| NacosError::caused(format!("invalid content, over {limit}")))?;
            Some(bytes)
        } else {
            None
        };
        Ok(Params::parse(query.as_deref(), body.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_comes_first_and_form_fields_are_decoded() {
        let p = Params::parse(
            Some("dataId=a.json&group="),
            Some(b"dataId=b&content=x%3Dy+z&tenant=dev"),
        );
        assert_eq!(p.get("dataId"), Some("a.json"));
        assert_eq!(p.get("content"), Some("x=y z"));
        assert_eq!(p.opt("group"), None);
        assert_eq!(p.get("group"), Some(""));
        assert_eq!(p.required("tenant").unwrap(), "dev");
        assert_eq!(p.required("group").unwrap(), "");
        assert!(matches!(p.required("x"), Err(NacosError::MissingParam(_))));
    }
}
