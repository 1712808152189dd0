//! Nacos's user / role / permission management on Mast's users and roles: a Nacos permission
//! becomes key ranges of a Mast role, and the same check then applies to the Nacos API and to
//! etcd's.

mod common;

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Admin {
    n: common::Nacos,
    root: String,
}

impl Admin {
    async fn start() -> Admin {
        let n = common::Nacos::start_with(Some("guang")).await;
        let r = n
            .http
            .post(format!("{}/auth/login", n.base))
            .form(&[("username", "root"), ("password", "guang")])
            .send()
            .await
            .unwrap();
        let root = r.json::<Value>().await.unwrap()["accessToken"]
            .as_str()
            .unwrap()
            .to_string();
        Admin { n, root }
    }

    /// `method` on `/nacos/v1<path>` with `params` (query for GET / DELETE, form otherwise)
    /// and root's token.
    async fn call(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
    ) -> (StatusCode, String) {
        self.call_as(method, path, params, &[("accessToken", &self.root)])
            .await
    }

    async fn call_as(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
        who: &[(&str, &str)],
    ) -> (StatusCode, String) {
        let url = format!("{}{path}", self.n.base);
        let mut all = params.to_vec();
        all.extend_from_slice(who);
        let req = match method {
            "GET" => self.n.http.get(url).query(&all),
            "DELETE" => self.n.http.delete(url).query(&all),
            "PUT" => self.n.http.put(url).form(&all),
            _ => self.n.http.post(url).form(&all),
        };
        let r = req.send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    }

    /// An etcd put of `key` as `user` through the JSON gateway: whether it was allowed.
    async fn etcd_put_as(&self, user: &str, password: &str, key: &str) -> bool {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let auth: Value = self
            .n
            .http
            .post(format!("{}/v3/auth/authenticate", self.n.etcd))
            .json(&json!({"name": user, "password": password}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = auth["token"].as_str().unwrap();
        let r = self
            .n
            .http
            .post(format!("{}/v3/kv/put", self.n.etcd))
            .header("Authorization", token)
            .json(&json!({"key": b64(key), "value": b64("v")}))
            .send()
            .await
            .unwrap();
        r.status() == StatusCode::OK
    }
}

fn ok(data: &str) -> (StatusCode, String) {
    (
        StatusCode::OK,
        json!({"code": 200, "message": null, "data": data}).to_string(),
    )
}

fn items(body: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(body).unwrap();
    v["pageItems"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_nacos_permission_is_a_mast_role_on_the_keys_it_names() {
    let a = Admin::start().await;
    let bob = [("username", "bob"), ("password", "pw")];
    assert_eq!(
        a.call("POST", "/auth/users", &bob).await,
        ok("create user ok!")
    );
    assert_eq!(
        a.call("POST", "/auth/users", &bob).await,
        (
            StatusCode::BAD_REQUEST,
            "caused: user 'bob' already exist!;".into()
        )
    );
    let bind = [("role", "dev-rw"), ("username", "bob")];
    assert_eq!(
        a.call("POST", "/auth/roles", &bind).await,
        ok("add role ok!")
    );
    assert_eq!(
        a.call(
            "POST",
            "/auth/roles",
            &[("role", "ROLE_ADMIN"), ("username", "bob")]
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        a.call(
            "POST",
            "/auth/roles",
            &[("role", "x"), ("username", "nobody")]
        )
        .await,
        (
            StatusCode::BAD_REQUEST,
            "caused: user 'nobody' not found!;".into()
        )
    );
    let grant = [
        ("role", "dev-rw"),
        ("resource", "dev:*:*"),
        ("action", "rw"),
    ];
    assert_eq!(
        a.call("POST", "/auth/permissions", &grant).await,
        ok("add permission ok!")
    );
    assert_eq!(
        a.call(
            "POST",
            "/auth/permissions",
            &[("role", "nosuch"), ("resource", "dev:*:*"), ("action", "r")]
        )
        .await,
        (
            StatusCode::BAD_REQUEST,
            "caused: role nosuch not found!;".into()
        )
    );
    assert_eq!(
        a.call(
            "POST",
            "/auth/permissions",
            &[
                ("role", "dev-rw"),
                ("resource", "dev:G*:*"),
                ("action", "r")
            ]
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    let (s, body) = a
        .call(
            "GET",
            "/auth/permissions",
            &[("pageNo", "1"), ("pageSize", "10"), ("role", "dev-rw")],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        items(&body),
        vec![json!({"role": "dev-rw", "resource": "dev:*:*", "action": "rw"})]
    );

    // bob: configs and services of `dev`, nothing else — through Nacos and through etcd.
    let publish = |tenant: &'static str| {
        [
            ("dataId", "app.yaml"),
            ("group", "DEFAULT_GROUP"),
            ("tenant", tenant),
            ("content", "a: 1"),
        ]
    };
    assert_eq!(
        a.call_as("POST", "/cs/configs", &publish("dev"), &bob)
            .await,
        (StatusCode::OK, "true".into())
    );
    let (s, body) = a.call_as("POST", "/cs/configs", &publish(""), &bob).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("authorization failed!"), "{body}");
    let register = |ns: &'static str| {
        [
            ("serviceName", "pay"),
            ("ip", "10.1.0.1"),
            ("port", "80"),
            ("namespaceId", ns),
        ]
    };
    assert_eq!(
        a.call_as("POST", "/ns/instance", &register("dev"), &bob)
            .await,
        (StatusCode::OK, "ok".into())
    );
    assert_eq!(
        a.call_as("POST", "/ns/instance", &register("public"), &bob)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // Lists: an answer kept from an earlier request (root's, twice, so the second is served
    // from the kept bytes) still asks each caller for permission.
    assert_eq!(
        a.call("POST", "/ns/instance", &register("public")).await,
        (StatusCode::OK, "ok".into())
    );
    let list = |ns: &'static str| [("serviceName", "pay"), ("namespaceId", ns)];
    for ns in ["public", "public", "dev", "dev"] {
        let (s, body) = a.call("GET", "/ns/instance/list", &list(ns)).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert!(body.contains("\"ip\":\"10.1.0.1\""), "{body}");
    }
    let (s, body) = a
        .call_as("GET", "/ns/instance/list", &list("public"), &bob)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (s, body) = a
        .call_as("GET", "/ns/instance/list", &list("dev"), &bob)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body.contains("\"ip\":\"10.1.0.1\""), "{body}");
    assert!(
        a.etcd_put_as("bob", "pw", "/configs/dev/DEFAULT_GROUP/other")
            .await
    );
    assert!(
        !a.etcd_put_as("bob", "pw", "/configs/public/DEFAULT_GROUP/other")
            .await
    );
    // Not an admin: no user management.
    assert_eq!(
        a.call_as(
            "POST",
            "/auth/users",
            &[("username", "eve"), ("password", "x")],
            &bob
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );

    // r then w on one config: rw; taking r back leaves w, and a publish still works (it reads
    // the metadata, which w implies).
    let carol = [("username", "carol"), ("password", "pw")];
    a.call("POST", "/auth/users", &carol).await;
    a.call(
        "POST",
        "/auth/roles",
        &[("role", "app-editor"), ("username", "carol")],
    )
    .await;
    let one = |action: &'static str| {
        [
            ("role", "app-editor"),
            ("resource", ":DEFAULT_GROUP:config/app.yaml"),
            ("action", action),
        ]
    };
    for action in ["r", "w"] {
        assert_eq!(
            a.call("POST", "/auth/permissions", &one(action)).await,
            ok("add permission ok!")
        );
    }
    let list = [("pageNo", "1"), ("pageSize", "10"), ("role", "app-editor")];
    assert_eq!(
        items(&a.call("GET", "/auth/permissions", &list).await.1),
        vec![json!({"role": "app-editor",
            "resource": "public:DEFAULT_GROUP:config/app.yaml", "action": "rw"})]
    );
    assert_eq!(
        a.call_as("POST", "/cs/configs", &publish(""), &carol).await,
        (StatusCode::OK, "true".into())
    );
    let read = [("dataId", "app.yaml"), ("group", "DEFAULT_GROUP")];
    assert_eq!(
        a.call_as("GET", "/cs/configs", &read, &carol).await,
        (StatusCode::OK, "a: 1".into())
    );
    assert_eq!(
        a.call("DELETE", "/auth/permissions", &one("r")).await,
        ok("delete permission ok!")
    );
    assert_eq!(
        items(&a.call("GET", "/auth/permissions", &list).await.1),
        vec![json!({"role": "app-editor",
            "resource": "public:DEFAULT_GROUP:config/app.yaml", "action": "w"})]
    );
    assert_eq!(
        a.call_as("GET", "/cs/configs", &read, &carol).await.0,
        StatusCode::FORBIDDEN
    );
    let mut again = publish("").to_vec();
    again[3] = ("content", "a: 2");
    assert_eq!(
        a.call_as("POST", "/cs/configs", &again, &carol).await,
        (StatusCode::OK, "true".into())
    );

    // Taking dev:*:* back: bob is refused again.
    assert_eq!(
        a.call("DELETE", "/auth/permissions", &grant).await,
        ok("delete permission ok!")
    );
    assert_eq!(
        a.call_as("POST", "/cs/configs", &publish("dev"), &bob)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert!(
        !a.etcd_put_as("bob", "pw", "/configs/dev/DEFAULT_GROUP/other")
            .await
    );

    // Users and roles, paged.
    let (_, body) = a
        .call(
            "GET",
            "/auth/users",
            &[("pageNo", "1"), ("pageSize", "2"), ("search", "accurate")],
        )
        .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["totalCount"].clone(), v["pagesAvailable"].clone()),
        (json!(3), json!(2))
    );
    let (_, body) = a
        .call(
            "GET",
            "/auth/users",
            &[
                ("pageNo", "1"),
                ("pageSize", "10"),
                ("search", "blur"),
                ("username", "*ob*"),
            ],
        )
        .await;
    assert_eq!(
        items(&body),
        vec![json!({"username": "bob", "password": ""})]
    );
    let (s, body) = a.call("GET", "/auth/users", &[("pageSize", "10")]).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("pageNo"), "{body}");
    let (_, body) = a
        .call(
            "GET",
            "/auth/roles",
            &[("pageNo", "1"), ("pageSize", "10"), ("username", "bob")],
        )
        .await;
    assert_eq!(
        items(&body),
        vec![json!({"role": "dev-rw", "username": "bob"})]
    );
    assert_eq!(
        a.call("DELETE", "/auth/roles", &bind).await,
        ok("delete role of user bob ok!")
    );
    assert_eq!(
        a.call("DELETE", "/auth/users", &[("username", "root")])
            .await,
        (
            StatusCode::BAD_REQUEST,
            "caused: cannot delete admin: root;".into()
        )
    );

    // A new password: the old one no longer logs in (nor serves calls).
    assert_eq!(
        a.call(
            "PUT",
            "/auth/users",
            &[("username", "carol"), ("newPassword", "pw2")]
        )
        .await,
        ok("update user ok!")
    );
    assert_eq!(
        a.call_as("GET", "/cs/configs", &read, &carol).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        a.call(
            "PUT",
            "/auth/users",
            &[("username", "nobody"), ("newPassword", "x")]
        )
        .await,
        (
            StatusCode::BAD_REQUEST,
            "caused: user nobody not exist!;".into()
        )
    );
    assert_eq!(
        a.call("DELETE", "/auth/users", &[("username", "carol")])
            .await,
        ok("delete user ok!")
    );
}
