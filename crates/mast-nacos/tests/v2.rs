//! The Nacos v2 open API: the same operations as v1 in the `{code, message, data}` envelope,
//! with v2's parameter names and error codes.

mod common;

use reqwest::StatusCode;
use serde_json::{Value, json};

async fn call(
    n: &common::Nacos,
    method: reqwest::Method,
    path: &str,
    q: &[(&str, &str)],
) -> (StatusCode, Value) {
    let base = n.base.replace("/nacos/v1", "/nacos/v2");
    let r = n
        .http
        .request(method, format!("{base}{path}"))
        .query(q)
        .send()
        .await
        .unwrap();
    let s = r.status();
    let text = r.text().await.unwrap();
    (
        s,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

#[tokio::test]
async fn configs_and_instances_in_the_envelope() {
    let n = common::Nacos::start_with(None).await;
    use reqwest::Method;
    let cfg = [
        ("dataId", "v2.json"),
        ("group", "G"),
        ("namespaceId", "dev"),
    ];
    let mut publish = cfg.to_vec();
    publish.extend([("content", r#"{"a":1}"#), ("type", "json")]);
    assert_eq!(
        call(&n, Method::POST, "/cs/config", &publish).await,
        (
            StatusCode::OK,
            json!({"code": 0, "message": "success", "data": true})
        )
    );
    assert_eq!(
        call(&n, Method::GET, "/cs/config", &cfg).await,
        (
            StatusCode::OK,
            json!({"code": 0, "message": "success", "data": r#"{"a":1}"#})
        )
    );
    // The same config for v1 (tenant) and etcd.
    let r = n
        .http
        .get(format!(
            "{}/cs/configs?dataId=v2.json&group=G&tenant=dev",
            n.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), r#"{"a":1}"#);
    assert_eq!(
        call(
            &n,
            Method::GET,
            "/cs/config",
            &[("dataId", "none"), ("group", "G")]
        )
        .await,
        (
            StatusCode::NOT_FOUND,
            json!({"code": 20004, "message": "resource not found", "data": "config data not exist"})
        )
    );
    assert_eq!(
        call(&n, Method::GET, "/cs/config", &[("dataId", "x")]).await,
        (
            StatusCode::BAD_REQUEST,
            json!({"code": 10000, "message": "parameter missing", "data": "Required parameter 'group' type String is not present"})
        )
    );
    assert_eq!(
        call(
            &n,
            Method::GET,
            "/cs/config",
            &[("dataId", "x"), ("group", "")]
        )
        .await,
        (
            StatusCode::BAD_REQUEST,
            json!({"code": 20002, "message": "parameter validate error", "data": "invalid group : "})
        )
    );
    assert_eq!(
        call(&n, Method::DELETE, "/cs/config", &cfg).await.1["data"],
        true
    );

    let inst = [
        ("serviceName", "svc"),
        ("groupName", "G"),
        ("ip", "10.0.0.1"),
        ("port", "80"),
    ];
    assert_eq!(
        call(&n, Method::POST, "/ns/instance", &inst).await.1["data"],
        "ok"
    );
    let (s, v) = call(
        &n,
        Method::GET,
        "/ns/instance/list",
        &[("serviceName", "svc"), ("groupName", "G")],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["data"]["name"], "G@@svc");
    assert_eq!(v["data"]["hosts"][0]["ip"], "10.0.0.1");
    let (_, v) = call(&n, Method::GET, "/ns/instance", &inst).await;
    assert_eq!(v["data"]["serviceName"], "G@@svc");
    let (_, v) = call(&n, Method::GET, "/ns/service/list", &[("groupName", "G")]).await;
    assert_eq!(v["data"], json!({"count": 1, "services": ["svc"]}));
    let (s, v) = call(
        &n,
        Method::GET,
        "/ns/instance",
        &[
            ("serviceName", "svc"),
            ("groupName", "G"),
            ("ip", "9.9.9.9"),
            ("port", "1"),
        ],
    )
    .await;
    assert_eq!(
        (s, v),
        (
            StatusCode::NOT_FOUND,
            json!({"code": 20004, "message": "resource not found", "data": "no matched ip found!"})
        )
    );
    assert_eq!(
        call(&n, Method::DELETE, "/ns/instance", &inst).await.1["data"],
        "ok"
    );
    let (_, v) = call(&n, Method::GET, "/console/namespace/list", &[]).await;
    assert_eq!(v["data"][0]["namespaceShowName"], "public");
}

#[tokio::test]
async fn services_are_created_read_changed_and_deleted_with_v2_codes() {
    use reqwest::Method;
    let n = common::Nacos::start_with(None).await;
    let svc = [
        ("serviceName", "pay"),
        ("namespaceId", "dev"),
        ("groupName", "G"),
    ];
    let ok = json!({"code": 0, "message": "success", "data": "ok"});
    let mut create = svc.to_vec();
    create.push(("protectThreshold", "0.5"));
    create.push(("metadata", r#"{"team":"a"}"#));
    assert_eq!(
        call(&n, Method::POST, "/ns/service", &create).await,
        (StatusCode::OK, ok.clone())
    );
    assert_eq!(
        call(&n, Method::POST, "/ns/service", &create).await,
        (
            StatusCode::BAD_REQUEST,
            json!({"code": 21007, "message": "service already exist",
                "data": "specified service G@@pay already exists!"})
        )
    );
    let (s, v) = call(&n, Method::GET, "/ns/service", &svc).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["data"],
        json!({"namespace": "dev", "serviceName": "pay", "groupName": "G", "clusterMap": {},
            "metadata": {"team": "a"}, "protectThreshold": 0.5,
            "selector": {"type": "none"}, "ephemeral": false})
    );
    // PUT without protectThreshold resets it to 0, as v2's form.
    assert_eq!(
        call(&n, Method::PUT, "/ns/service", &svc).await,
        (StatusCode::OK, ok.clone())
    );
    let (_, v) = call(&n, Method::GET, "/ns/service", &svc).await;
    assert_eq!(v["data"]["protectThreshold"], json!(0.0));

    // An instance in it: not deletable (21009); without it, deleted; then unknown (21008).
    let mut inst = svc.to_vec();
    inst.extend([("ip", "10.2.0.1"), ("port", "80")]);
    assert_eq!(
        call(&n, Method::POST, "/ns/instance", &inst).await,
        (StatusCode::OK, ok.clone())
    );
    let (s, v) = call(&n, Method::DELETE, "/ns/service", &svc).await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(21009))
    );
    let (_, v) = call(&n, Method::GET, "/ns/service", &svc).await;
    assert_eq!(v["data"]["clusterMap"]["DEFAULT"]["clusterName"], "DEFAULT");
    assert_eq!(
        call(&n, Method::DELETE, "/ns/instance", &inst).await,
        (StatusCode::OK, ok.clone())
    );
    assert_eq!(
        call(&n, Method::DELETE, "/ns/service", &svc).await,
        (StatusCode::OK, ok)
    );
    assert_eq!(
        call(&n, Method::GET, "/ns/service", &svc).await,
        (
            StatusCode::BAD_REQUEST,
            json!({"code": 21008, "message": "service not exist",
                "data": "service not found, namespace: dev, serviceName: G@@pay"})
        )
    );
    let (s, v) = call(&n, Method::PUT, "/ns/service", &svc).await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(21008))
    );
}

#[tokio::test]
async fn config_history_in_the_envelope() {
    use reqwest::Method;
    let n = common::Nacos::start_with(None).await;
    let cfg = [("dataId", "h.txt"), ("group", "G"), ("namespaceId", "dev")];
    for content in ["one", "two", "three"] {
        let mut publish = cfg.to_vec();
        publish.push(("content", content));
        let (s, _) = call(&n, Method::POST, "/cs/config", &publish).await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, v) = call(&n, Method::GET, "/cs/history/list", &cfg).await;
    assert_eq!((s, v["code"].clone()), (StatusCode::OK, json!(0)), "{v}");
    let page = &v["data"];
    assert_eq!(page["totalCount"], json!(3));
    let items = page["pageItems"].as_array().unwrap();
    let ids: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["3", "2", "1"], "newest first");
    assert_eq!(
        (items[0]["tenant"].clone(), items[0]["publishType"].clone()),
        (json!("dev"), json!("formal"))
    );
    let mut one = cfg.to_vec();
    one.push(("nid", "2"));
    let (_, v) = call(&n, Method::GET, "/cs/history", &one).await;
    assert_eq!(v["data"]["content"], json!("two"));
    // A version not kept: 200 with data null, as v2.
    let mut gone = cfg.to_vec();
    gone.push(("nid", "99"));
    assert_eq!(
        call(&n, Method::GET, "/cs/history", &gone).await,
        (
            StatusCode::OK,
            json!({"code": 0, "message": "success", "data": null})
        )
    );
    let mut prev = cfg.to_vec();
    prev.push(("id", "3"));
    let (_, v) = call(&n, Method::GET, "/cs/history/previous", &prev).await;
    assert_eq!(v["data"]["content"], json!("two"));
    let mut first = cfg.to_vec();
    first.push(("id", "1"));
    let (s, v) = call(&n, Method::GET, "/cs/history/previous", &first).await;
    assert_eq!((s, v["data"].clone()), (StatusCode::OK, Value::Null));
    // nid is required.
    let (s, v) = call(&n, Method::GET, "/cs/history", &cfg).await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(10000))
    );
}

#[tokio::test]
async fn namespaces_are_written_with_v2_codes() {
    use reqwest::Method;
    let n = common::Nacos::start_with(None).await;
    let yes = json!({"code": 0, "message": "success", "data": true});
    let create = [
        ("namespaceId", "qa"),
        ("namespaceName", "QA"),
        ("namespaceDesc", "for testing"),
    ];
    assert_eq!(
        call(&n, Method::POST, "/console/namespace", &create).await,
        (StatusCode::OK, yes.clone())
    );
    assert_eq!(
        call(&n, Method::POST, "/console/namespace", &create).await,
        (
            StatusCode::BAD_REQUEST,
            json!({"code": 22000, "message": "illegal namespace",
                "data": "the namespaceId is existed, namespaceId: qa"})
        )
    );
    let (s, v) = call(
        &n,
        Method::POST,
        "/console/namespace",
        &[("namespaceId", "a b"), ("namespaceName", "x")],
    )
    .await;
    assert_eq!(
        (s, v["data"].clone()),
        (
            StatusCode::BAD_REQUEST,
            json!("namespaceId [a b] mismatch the pattern")
        )
    );
    let (s, v) = call(
        &n,
        Method::POST,
        "/console/namespace",
        &[("namespaceName", "x")],
    )
    .await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(10000))
    );

    let (s, v) = call(
        &n,
        Method::GET,
        "/console/namespace",
        &[("namespaceId", "qa")],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (
            v["data"]["namespaceShowName"].clone(),
            v["data"]["type"].clone()
        ),
        (json!("QA"), json!(2))
    );
    let (_, v) = call(
        &n,
        Method::GET,
        "/console/namespace",
        &[("namespaceId", "")],
    )
    .await;
    assert_eq!(v["data"]["namespaceShowName"], json!("public"));
    assert_eq!(
        call(
            &n,
            Method::GET,
            "/console/namespace",
            &[("namespaceId", "nope")]
        )
        .await,
        (
            StatusCode::NOT_FOUND,
            json!({"code": 22001, "message": "namespace not exist",
                "data": "namespaceId [ nope ] not exist"})
        )
    );
    assert_eq!(
        call(
            &n,
            Method::PUT,
            "/console/namespace",
            &[("namespaceId", "qa"), ("namespaceName", "Quality")]
        )
        .await,
        (StatusCode::OK, yes.clone())
    );
    let (_, v) = call(
        &n,
        Method::GET,
        "/console/namespace",
        &[("namespaceId", "qa")],
    )
    .await;
    assert_eq!(v["data"]["namespaceShowName"], json!("Quality"));
    assert_eq!(
        call(
            &n,
            Method::DELETE,
            "/console/namespace",
            &[("namespaceId", "qa")]
        )
        .await,
        (StatusCode::OK, yes)
    );
    let (s, _) = call(
        &n,
        Method::GET,
        "/console/namespace",
        &[("namespaceId", "qa")],
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
