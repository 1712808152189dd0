//! The Nacos 2.x gRPC protocol at the wire, with tonic's client: payload classes and codes
//! as Nacos's (ServerCheck before setup, 301 for a connection never set up, 300 for an absent
//! config), a config change pushed down the bi-stream, and a connection's instances going with
//! it.

use std::collections::HashMap;
use std::time::Duration;

use mast_proto::nacospb::bi_request_stream_client::BiRequestStreamClient;
use mast_proto::nacospb::request_client::RequestClient;
use mast_proto::nacospb::{Metadata, Payload};
use mast_server::{Server, ServerConfig};
use serde_json::{Value, json};

fn payload(kind: &str, body: Value) -> Payload {
    Payload {
        metadata: Some(Metadata {
            r#type: kind.into(),
            client_ip: "127.0.0.1".into(),
            headers: HashMap::new(),
        }),
        body: Some(prost_types::Any {
            type_url: String::new(),
            value: serde_json::to_vec(&body).unwrap(),
        }),
    }
}

fn decode(p: &Payload) -> (String, Value) {
    (
        p.metadata.as_ref().unwrap().r#type.clone(),
        serde_json::from_slice(&p.body.as_ref().unwrap().value).unwrap(),
    )
}

#[tokio::test]
async fn the_protocol_as_nacos_clients_see_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path());
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let mut server = Server::start_with(cfg, mast_registry::router)
        .await
        .unwrap();
    let (_, grpc) = mast_nacos::routers(server.node().clone(), 100);
    let addr = server
        .serve_router("127.0.0.1:0".parse().unwrap(), grpc)
        .await
        .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut unary = RequestClient::new(channel.clone());
    let mut call = async |kind: &str, body: Value| {
        decode(
            &unary
                .request(payload(kind, body))
                .await
                .unwrap()
                .into_inner(),
        )
    };

    let (kind, v) = call("ServerCheckRequest", json!({"requestId": "1"})).await;
    assert_eq!(kind, "ServerCheckResponse");
    assert_eq!(
        (v["resultCode"].clone(), v["success"].clone()),
        (json!(200), json!(true))
    );
    assert!(v["connectionId"].as_str().unwrap().contains("_127.0.0.1_"));
    // Before the stream's setup, other requests are refused as Nacos refuses them (after the
    // bounded wait for a setup that may be on its way).
    let (kind, v) = call("HealthCheckRequest", json!({"requestId": "2"})).await;
    assert_eq!(kind, "ErrorResponse");
    assert_eq!(
        (v["errorCode"].clone(), v["message"].clone()),
        (json!(301), json!("Connection is unregistered."))
    );

    // Set up the connection; pushes come down the stream.
    let (up_tx, up_rx) = tokio::sync::mpsc::channel(16);
    up_tx
        .send(payload(
            "ConnectionSetupRequest",
            json!({"clientVersion": "test", "tenant": "", "labels": {}}),
        ))
        .await
        .unwrap();
    let mut down = BiRequestStreamClient::new(channel.clone())
        .request_bi_stream(tokio_stream::wrappers::ReceiverStream::new(up_rx))
        .await
        .unwrap()
        .into_inner();
    let (kind, v) = call("HealthCheckRequest", json!({"requestId": "3"})).await;
    assert_eq!(
        (kind.as_str(), v["resultCode"].clone()),
        ("HealthCheckResponse", json!(200))
    );

    let id = json!({"dataId": "g.yaml", "group": "G", "tenant": "dev"});
    let (kind, v) = call("ConfigQueryRequest", id.clone()).await;
    assert_eq!(kind, "ConfigQueryResponse");
    assert_eq!(
        (v["resultCode"].clone(), v["errorCode"].clone()),
        (json!(500), json!(300))
    );
    let mut listen = json!({"listen": true, "configListenContexts": [{"dataId": "g.yaml", "group": "G", "tenant": "dev", "md5": ""}]});
    let (kind, v) = call("ConfigBatchListenRequest", listen.clone()).await;
    assert_eq!(
        (kind.as_str(), v["changedConfigs"].clone()),
        ("ConfigChangeBatchListenResponse", json!([]))
    );
    let mut publish = id.clone();
    publish["content"] = json!("a: 1");
    publish["additionMap"] = json!({"type": "yaml", "desc": null});
    let (kind, v) = call("ConfigPublishRequest", publish.clone()).await;
    assert_eq!(
        (kind.as_str(), v["success"].clone()),
        ("ConfigPublishResponse", json!(true))
    );
    let pushed = tokio::time::timeout(Duration::from_secs(10), down.message())
        .await
        .expect("a push")
        .unwrap()
        .unwrap();
    let (kind, v) = decode(&pushed);
    assert_eq!(kind, "ConfigChangeNotifyRequest");
    assert_eq!(
        (v["dataId"].clone(), v["group"].clone(), v["tenant"].clone()),
        (json!("g.yaml"), json!("G"), json!("dev"))
    );
    assert!(v["requestId"].as_str().unwrap().parse::<u64>().is_ok());
    let (_, v) = call("ConfigQueryRequest", id.clone()).await;
    assert_eq!(
        (
            v["content"].clone(),
            v["contentType"].clone(),
            v["beta"].clone()
        ),
        (json!("a: 1"), json!("yaml"), json!(false))
    );
    listen["configListenContexts"][0]["md5"] = json!("stale");
    let (_, v) = call("ConfigBatchListenRequest", listen).await;
    assert_eq!(v["changedConfigs"].as_array().unwrap().len(), 1);
    // What the connection says it holds is its report for the rollout view, on its lease.
    let reports = mast_server::api::kv::range(
        server.node(),
        &Default::default(),
        mast_proto::etcdserverpb::RangeRequest {
            key: "/config-clients/dev/G/g.yaml/".into(),
            range_end: "/config-clients/dev/G/g.yaml0".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(reports.kvs.len(), 1);
    assert_ne!(reports.kvs[0].lease, 0);
    let r: Value = serde_json::from_slice(&reports.kvs[0].value).unwrap();
    assert!(r["clientId"].as_str().unwrap().starts_with("nacos-"), "{r}");
    assert_eq!(
        (r["md5"].as_str(), r["via"].as_str()),
        (Some("stale"), Some("nacos"))
    );
    publish["content"] = json!("a: [1");
    let (_, v) = call("ConfigPublishRequest", publish).await;
    assert_eq!(
        (v["resultCode"].clone(), v["errorCode"].clone()),
        (json!(500), json!(400))
    );

    // An ephemeral instance lives on the connection's lease.
    let inst = json!({"namespace": "", "serviceName": "s", "groupName": "DEFAULT_GROUP", "type": "registerInstance",
        "instance": {"ip": "10.0.0.1", "port": 80, "weight": 1.0, "healthy": true, "enabled": true, "ephemeral": true, "clusterName": "DEFAULT", "metadata": {}}});
    let (kind, v) = call("InstanceRequest", inst).await;
    assert_eq!(
        (kind.as_str(), v["type"].clone()),
        ("InstanceResponse", json!("registerInstance"))
    );
    let (kind, v) = call("ServiceQueryRequest", json!({"namespace": "", "serviceName": "s", "groupName": "DEFAULT_GROUP", "cluster": "", "healthyOnly": false})).await;
    assert_eq!(kind, "QueryServiceResponse");
    assert_eq!(v["serviceInfo"]["hosts"][0]["ip"], "10.0.0.1");
    assert_eq!(v["serviceInfo"]["name"], "s");
    let node = server.node().clone();
    let count = || {
        let (_, n, _) = node
            .range_summary(&None, b"/services/s/", b"/services/s0")
            .unwrap();
        n
    };
    assert_eq!(count(), 1);
    // The client goes: its stream ends, and so do its ephemeral instances.
    drop(up_tx);
    drop(down);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the instance outlived its connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}
