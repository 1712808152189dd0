//! The Nacos v1 config API through real HTTP against an in-process server (the same
//! `Server::start_with` + `serve_router` the binary runs): headers and bodies as Nacos's, the
//! long-polling listener, the public namespace, and Nacos logins on Mast users.

use std::time::Duration;

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};

mod common;

use common::Nacos as Base;

/// The common server, with this file's helpers.
struct Nacos(Base);

impl std::ops::Deref for Nacos {
    type Target = Base;
    fn deref(&self) -> &Base {
        &self.0
    }
}

impl Nacos {
    async fn start(root_password: Option<&str>) -> Nacos {
        Nacos(Base::start_with(root_password).await)
    }

    async fn publish(&self, form: &[(&str, &str)]) -> (StatusCode, String) {
        let r = self
            .http
            .post(format!("{}/cs/configs", self.base))
            .form(form)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn get(&self, query: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .get(format!("{}/cs/configs", self.base))
            .query(query)
            .send()
            .await
            .unwrap()
    }

    fn listen(
        &self,
        listening: String,
        extra: &[(&'static str, &'static str)],
    ) -> impl Future<Output = (StatusCode, String)> + use<> {
        let mut req = self
            .http
            .post(format!("{}/cs/configs/listener", self.base))
            .form(&[("Listening-Configs", listening)]);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    }

    /// An etcd JSON gateway call.
    async fn etcd(&self, path: &str, body: Value, token: Option<&str>) -> Value {
        let mut r = self.http.post(format!("{}{path}", self.etcd)).json(&body);
        if let Some(t) = token {
            r = r.header("Authorization", t);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        r.json().await.unwrap()
    }
}

fn md5(s: &str) -> String {
    use md5::Digest;
    md5::Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn get_answers_content_with_nacos_headers_and_404_when_absent() {
    let n = Nacos::start(None).await;
    let form = [
        ("dataId", "app.json"),
        ("group", "DEFAULT_GROUP"),
        ("content", r#"{"a":1}"#),
        ("type", "json"),
    ];
    assert_eq!(n.publish(&form).await, (StatusCode::OK, "true".into()));
    // The public namespace is "" or "public"; the second read is answered from the kept
    // rendering, with the same headers.
    let mut modified = Vec::new();
    for tenant in ["", "public"] {
        let r = n
            .get(&[
                ("dataId", "app.json"),
                ("group", "DEFAULT_GROUP"),
                ("tenant", tenant),
            ])
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers();
        assert_eq!(h["config-type"], "json");
        assert_eq!(h["content-type"], "application/json;charset=UTF-8");
        assert_eq!(h["content-md5"].to_str().unwrap(), md5(r#"{"a":1}"#));
        assert_eq!(h["cache-control"], "no-cache,no-store");
        let lm = h["last-modified"].to_str().unwrap().to_string();
        assert!(lm.ends_with(" GMT"), "{lm}");
        modified.push(lm);
        assert_eq!(r.text().await.unwrap(), r#"{"a":1}"#);
    }
    assert_eq!(modified[0], modified[1]);
    let r = n
        .get(&[("dataId", "none"), ("group", "DEFAULT_GROUP")])
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.text().await.unwrap(), "config data not exist\n");

    // Content an etcd client put (no metadata) is served as text.
    n.etcd(
        "/v3/kv/put",
        json!({"key": b64("/configs/public/G/raw"), "value": b64("x=1")}),
        None,
    )
    .await;
    let r = n.get(&[("dataId", "raw"), ("group", "G")]).await;
    assert_eq!(r.headers()["config-type"], "text");
    assert_eq!(r.text().await.unwrap(), "x=1");

    // A path Mast does not serve says so.
    let r = n
        .http
        .get(format!("{}/cs/capacity", n.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_IMPLEMENTED);
}

#[tokio::test]
async fn the_listener_holds_until_a_listened_config_changes_and_names_it() {
    let n = Nacos::start(None).await;
    let form = [
        ("dataId", "live.yaml"),
        ("group", "G"),
        ("tenant", "dev"),
        ("content", "a: 1"),
    ];
    assert_eq!(n.publish(&form).await.0, StatusCode::OK);
    let current = format!("live.yaml\u{2}G\u{2}{}\u{2}dev\u{1}", md5("a: 1"));

    // Up to date: answered at once with No-Hangup, held otherwise.
    let quick = n.listen(
        current.clone(),
        &[
            ("Long-Pulling-Timeout", "30000"),
            ("Long-Pulling-Timeout-No-Hangup", "true"),
        ],
    );
    assert_eq!(
        tokio::time::timeout(WAIT, quick).await.unwrap(),
        (StatusCode::OK, String::new())
    );
    let mut held = Box::pin(n.listen(current.clone(), &[("Long-Pulling-Timeout", "30000")]));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut held)
            .await
            .is_err(),
        "an up-to-date listener is held"
    );
    // A change to another config does not answer it; a change to its own does.
    let other = [
        ("dataId", "other"),
        ("group", "G"),
        ("tenant", "dev"),
        ("content", "x"),
    ];
    assert_eq!(n.publish(&other).await.0, StatusCode::OK);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut held)
            .await
            .is_err()
    );
    let form = [
        ("dataId", "live.yaml"),
        ("group", "G"),
        ("tenant", "dev"),
        ("content", "a: 2"),
    ];
    assert_eq!(n.publish(&form).await.0, StatusCode::OK);
    let (status, body) = tokio::time::timeout(WAIT, held).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "live.yaml%02G%02dev%01\n");

    // An md5 that differs answers at once; an absent config's md5 is "".
    let stale = n.listen(current, &[("Long-Pulling-Timeout", "30000")]);
    assert_eq!(
        tokio::time::timeout(WAIT, stale).await.unwrap().1,
        "live.yaml%02G%02dev%01\n"
    );
    let absent = n.listen(
        "nothing\u{2}G\u{2}\u{1}".into(),
        &[
            ("Long-Pulling-Timeout", "30000"),
            ("Long-Pulling-Timeout-No-Hangup", "true"),
        ],
    );
    assert_eq!(tokio::time::timeout(WAIT, absent).await.unwrap().1, "");

    // A delete is a change too.
    let r = n
        .http
        .delete(format!("{}/cs/configs", n.base))
        .query(&[("dataId", "live.yaml"), ("group", "G"), ("tenant", "dev")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "true");
    let gone = n.listen(
        format!("live.yaml\u{2}G\u{2}{}\u{2}dev\u{1}", md5("a: 2")),
        &[("Long-Pulling-Timeout", "30000")],
    );
    assert_eq!(
        tokio::time::timeout(WAIT, gone).await.unwrap().1,
        "live.yaml%02G%02dev%01\n"
    );
    // Malformed: Nacos's words and status.
    let (s, body) = n
        .listen("a\u{2}b\u{1}".into(), &[("Long-Pulling-Timeout", "x")])
        .await;
    assert_eq!(
        (s, body.as_str()),
        (StatusCode::BAD_REQUEST, "caused: invalid probeModify;")
    );
    let (s, body) = n
        .listen("a\u{2}b\u{2}\u{1}".into(), &[("Long-Pulling-Timeout", "x")])
        .await;
    assert_eq!(
        (s, body.as_str()),
        (StatusCode::BAD_REQUEST, "caused: For input string: \"x\";")
    );
}

#[tokio::test]
async fn oversize_content_is_refused_and_nothing_is_stored() {
    let n = Nacos::start(None).await;
    // Past the content limit (the request limit, 1.5 MiB by default): Nacos's check and words.
    let huge = "a".repeat(2_000_000);
    let (s, body) = n
        .publish(&[("dataId", "big"), ("group", "G"), ("content", &huge)])
        .await;
    assert_eq!(
        (s, body.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "caused: invalid content, over 1638400;"
        )
    );
    // Under it, but content, metadata and history entry together are over the request limit.
    let large = "a".repeat(1_400_000);
    let (s, body) = n
        .publish(&[("dataId", "big"), ("group", "G"), ("content", &large)])
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.starts_with("caused: request is too large"), "{body}");
    let r = n.get(&[("dataId", "big"), ("group", "G")]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The server is fine: a normal publish goes through.
    assert_eq!(
        n.publish(&[("dataId", "big"), ("group", "G"), ("content", "small")])
            .await,
        (StatusCode::OK, "true".into())
    );
}

#[tokio::test]
async fn logins_are_mast_users_and_every_call_is_checked() {
    let n = Nacos::start(Some("guang")).await;
    let form = [("dataId", "a"), ("group", "G"), ("content", "x")];

    // No caller, a wrong token, a wrong password: Nacos's 403s.
    let r = n
        .http
        .post(format!("{}/cs/configs", n.base))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (
            v["status"].clone(),
            v["error"].clone(),
            v["message"].clone(),
            v["path"].clone()
        ),
        (
            json!(403),
            json!("Forbidden"),
            json!("user not found!"),
            json!("/nacos/v1/cs/configs")
        )
    );
    let r = n
        .get(&[("dataId", "a"), ("group", "G"), ("accessToken", "nope")])
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "token invalid!"
    );
    let r = n
        .http
        .post(format!("{}/auth/login", n.base))
        .form(&[("username", "root"), ("password", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.text().await.unwrap(), "user not found!");

    // A login's token works as accessToken and as a Bearer header.
    let r = n
        .http
        .post(format!("{}/auth/login", n.base))
        .form(&[("username", "root"), ("password", "guang")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let bearer = r.headers()["authorization"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    let token = v["accessToken"].as_str().unwrap().to_string();
    assert_eq!(bearer, format!("Bearer {token}"));
    assert_eq!(
        (v["globalAdmin"].clone(), v["username"].clone()),
        (json!(true), json!("root"))
    );
    assert!(v["tokenTtl"].as_u64().unwrap() > 0);
    let mut with_token = form.to_vec();
    with_token.push(("accessToken", &token));
    assert_eq!(
        n.publish(&with_token).await,
        (StatusCode::OK, "true".into())
    );
    let r = n
        .http
        .get(format!("{}/cs/configs?dataId=a&group=G", n.base))
        .header("Authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "x");

    // username / password on the call itself (the npm client's way).
    let r = n
        .get(&[
            ("dataId", "a"),
            ("group", "G"),
            ("username", "root"),
            ("password", "guang"),
        ])
        .await;
    assert_eq!(r.text().await.unwrap(), "x");

    // A user whose role reads only /configs/dev/: reads there, 403 elsewhere and on writes.
    let root = n
        .etcd(
            "/v3/auth/authenticate",
            json!({"name": "root", "password": "guang"}),
            None,
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    for (path, body) in [
        ("/v3/auth/role/add", json!({"name": "dev-reader"})),
        (
            "/v3/auth/role/grant",
            json!({"name": "dev-reader", "perm": {"permType": "READ",
                "key": b64("/configs/dev/"), "range_end": b64("/configs/dev0")}}),
        ),
        (
            "/v3/auth/user/add",
            json!({"name": "alice", "password": "pw"}),
        ),
        (
            "/v3/auth/user/grant",
            json!({"user": "alice", "role": "dev-reader"}),
        ),
    ] {
        n.etcd(path, body, Some(&root)).await;
    }
    let dev = [
        ("dataId", "d"),
        ("group", "G"),
        ("tenant", "dev"),
        ("content", "y"),
    ];
    let mut as_root = dev.to_vec();
    as_root.push(("accessToken", &token));
    assert_eq!(n.publish(&as_root).await.0, StatusCode::OK);
    let alice = [("username", "alice"), ("password", "pw")];
    let mut q = vec![("dataId", "d"), ("group", "G"), ("tenant", "dev")];
    q.extend(alice);
    assert_eq!(n.get(&q).await.text().await.unwrap(), "y");
    let mut q = vec![("dataId", "a"), ("group", "G")];
    q.extend(alice);
    let r = n.get(&q).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "authorization failed!"
    );
    let mut w = dev.to_vec();
    w.extend(alice);
    let (s, body) = n.publish(&w).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test]
async fn namespaces_are_listed_created_renamed_and_deleted() {
    let n = Nacos::start(None).await;
    let url = format!("{}/console/namespaces", n.base);
    let post = |form: Vec<(&'static str, &'static str)>| {
        let (http, url) = (n.http.clone(), url.clone());
        async move {
            http.post(url)
                .form(&form)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        post(vec![
            ("customNamespaceId", "dev"),
            ("namespaceName", "Development"),
            ("namespaceDesc", "d")
        ])
        .await,
        "true"
    );
    assert_eq!(
        post(vec![
            ("customNamespaceId", "dev"),
            ("namespaceName", "Again")
        ])
        .await,
        "false"
    );
    assert_eq!(
        post(vec![
            ("customNamespaceId", "bad id"),
            ("namespaceName", "x")
        ])
        .await,
        "false"
    );
    assert_eq!(
        post(vec![("customNamespaceId", "x"), ("namespaceName", "a@b")]).await,
        "false"
    );
    let form = [
        ("dataId", "a"),
        ("group", "G"),
        ("tenant", "dev"),
        ("content", "x"),
    ];
    assert_eq!(n.publish(&form).await.0, StatusCode::OK);

    let v: Value = n.http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["code"], 200);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data[0]["namespace"], "");
    assert_eq!(data[0]["namespaceShowName"], "public");
    assert_eq!(
        (
            data[1]["namespace"].clone(),
            data[1]["namespaceShowName"].clone(),
            data[1]["configCount"].clone(),
            data[1]["type"].clone()
        ),
        (json!("dev"), json!("Development"), json!(1), json!(2))
    );
    let r = n
        .http
        .put(&url)
        .form(&[
            ("namespace", "dev"),
            ("namespaceShowName", "Dev"),
            ("namespaceDesc", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "true");
    let one: Value = n
        .http
        .get(format!("{url}?show=all&namespaceId=dev"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["namespaceShowName"], "Dev");
    let r = n
        .http
        .delete(format!("{url}?namespaceId=dev"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "true");
    let v: Value = n.http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    // Its configs stay.
    let r = n
        .get(&[("dataId", "a"), ("group", "G"), ("tenant", "dev")])
        .await;
    assert_eq!(r.text().await.unwrap(), "x");
}

#[tokio::test]
async fn history_lists_every_version_newest_first_and_the_one_before() {
    let n = Nacos::start(None).await;
    for c in ["a=1", "a=2", "a=3"] {
        let form = [("dataId", "h.properties"), ("group", "G"), ("content", c)];
        assert_eq!(n.publish(&form).await.0, StatusCode::OK);
    }
    let r = n
        .http
        .delete(format!("{}/cs/configs?dataId=h.properties&group=G", n.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "true");
    let q = "dataId=h.properties&group=G&tenant=";
    let v: Value = n
        .http
        .get(format!(
            "{}/cs/history?search=accurate&{q}&pageNo=1&pageSize=3",
            n.base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["totalCount"].clone(), v["pagesAvailable"].clone()),
        (json!(4), json!(2))
    );
    let ops: Vec<&str> = v["pageItems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["opType"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["D", "U", "U"]);
    assert_eq!(v["pageItems"][1]["id"], "3");
    let one: Value = n
        .http
        .get(format!("{}/cs/history?nid=1&{q}", n.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (one["content"].clone(), one["opType"].clone()),
        (json!("a=1"), json!("I"))
    );
    let prev: Value = n
        .http
        .get(format!("{}/cs/history/previous?id=3&{q}", n.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(prev["content"], "a=2");
    let r = n
        .http
        .get(format!("{}/cs/history?nid=99&{q}", n.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// A long-polling client's listener MD5 is its report in the rollout view (`nacos-<ip>`).
#[tokio::test]
async fn listeners_are_counted_in_the_rollout_view() {
    let n = Nacos::start(None).await;
    let publish = |content: &'static str| {
        [
            ("dataId", "r.yaml"),
            ("group", "G"),
            ("tenant", "dev"),
            ("content", content),
        ]
    };
    assert_eq!(n.publish(&publish("a: 1")).await.0, StatusCode::OK);
    let rollout = format!("{}/mast/v1/configs/dev/G/r.yaml/rollout", n.etcd);
    // Reports are written beside the answer: look until the view shows `want` (10 s at most).
    let view_where = |want: fn(&Value) -> bool| {
        let (http, url) = (n.http.clone(), rollout.clone());
        async move {
            let deadline = std::time::Instant::now() + WAIT;
            loop {
                let v: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
                if want(&v) {
                    return v;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "rollout view stuck at {v}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let holds = |content: &str| format!("r.yaml\u{2}G\u{2}{}\u{2}dev\u{1}", md5(content));
    let quick = [
        ("Long-Pulling-Timeout", "30000"),
        ("Long-Pulling-Timeout-No-Hangup", "true"),
    ];
    n.listen(holds("a: 1"), &quick).await;
    let v = view_where(|v| v["onCurrent"] == 1).await;
    assert_eq!(v["complete"], true);
    assert_eq!(v["versions"][0]["clients"], json!(["nacos-127.0.0.1"]));

    // A new version: the client still says it holds the old one, so it lags...
    assert_eq!(n.publish(&publish("a: 2")).await.0, StatusCode::OK);
    let (_, changed) = n.listen(holds("a: 1"), &quick).await;
    assert_eq!(changed, "r.yaml%02G%02dev%01\n");
    let v = view_where(|v| v["version"] == 2).await;
    assert_eq!(v["lagging"][0]["clientId"], "nacos-127.0.0.1");
    assert_eq!(v["lagging"][0]["via"], "nacos");
    // ...until it listens with the new content's MD5.
    n.listen(holds("a: 2"), &quick).await;
    view_where(|v| v["complete"] == true && v["version"] == 2).await;
}

/// A gray release by address is Nacos's beta: the client at that address gets its content
/// (`isBeta`), its listener compares with the gray's MD5, and stopping the gray wakes it.
#[tokio::test]
async fn a_gray_release_by_address_is_a_nacos_beta() {
    let n = Nacos::start(None).await;
    let form = [
        ("dataId", "b.json"),
        ("group", "G"),
        ("tenant", "dev"),
        ("content", "{\"v\":1}"),
    ];
    assert_eq!(n.publish(&form).await.0, StatusCode::OK);
    let gray_url = format!("{}/mast/v1/configs/dev/G/b.json/gray/beta", n.etcd);
    let r = n
        .http
        .put(&gray_url)
        .json(&json!({"content": "{\"v\":2}", "rule": {"type": "ip", "ips": ["127.0.0.1"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = n
        .get(&[("dataId", "b.json"), ("group", "G"), ("tenant", "dev")])
        .await;
    assert_eq!(r.headers()["isBeta"], "true");
    assert_eq!(r.text().await.unwrap(), "{\"v\":2}");
    // Holding the normal content, the beta client is told to read again; holding the
    // gray's, it is held until the gray stops.
    let quick = [
        ("Long-Pulling-Timeout", "30000"),
        ("Long-Pulling-Timeout-No-Hangup", "true"),
    ];
    let holds = |c: &str| format!("b.json\u{2}G\u{2}{}\u{2}dev\u{1}", md5(c));
    assert_eq!(
        n.listen(holds("{\"v\":1}"), &quick).await.1,
        "b.json%02G%02dev%01\n"
    );
    let mut held = Box::pin(n.listen(holds("{\"v\":2}"), &[("Long-Pulling-Timeout", "30000")]));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut held)
            .await
            .is_err(),
        "up to date with its beta"
    );
    let r = n.http.delete(&gray_url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (_, body) = tokio::time::timeout(WAIT, held).await.unwrap();
    assert_eq!(body, "b.json%02G%02dev%01\n");
    let r = n
        .get(&[("dataId", "b.json"), ("group", "G"), ("tenant", "dev")])
        .await;
    assert!(r.headers().get("isBeta").is_none());
    assert_eq!(r.text().await.unwrap(), "{\"v\":1}");
}
