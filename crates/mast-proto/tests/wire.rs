//! Wire-compatibility checks: protobuf encodings, JSON renderings and gRPC
//! service names that etcd clients rely on.

use mast_proto::etcdserverpb::{
    self, Compare, LeaseGrantResponse, Member, PutRequest, RangeResponse, ResponseHeader,
    StatusResponse, WatchCreateRequest, WatchRequest, WatchResponse, compare, watch_request,
};
use mast_proto::mvccpb::{Event, KeyValue, event::EventType};
use mast_proto::{v3electionpb, v3lockpb};
use prost::Message;
use serde_json::{Value, json};
use tonic::server::NamedService;

fn kv(key: &[u8], value: &[u8], create: i64, modr: i64, version: i64) -> KeyValue {
    KeyValue {
        key: bytes::Bytes::copy_from_slice(key),
        create_revision: create,
        mod_revision: modr,
        version,
        value: bytes::Bytes::copy_from_slice(value),
        lease: 0,
    }
}

#[test]
fn put_request_exact_bytes() {
    let req = PutRequest {
        key: bytes::Bytes::from_static(b"foo"),
        value: bytes::Bytes::from_static(b"bar"),
        lease: 7,
        prev_kv: true,
        ..Default::default()
    };
    let expected: &[u8] = &[
        0x0a, 3, b'f', b'o', b'o', // 1: key, length-delimited
        0x12, 3, b'b', b'a', b'r', // 2: value, length-delimited
        0x18, 7, // 3: lease, varint
        0x20, 1, // 4: prev_kv, varint
    ];
    assert_eq!(req.encode_to_vec(), expected);
    assert_eq!(PutRequest::decode(expected).unwrap(), req);

    let req = PutRequest {
        ignore_value: true,
        ignore_lease: true,
        ..Default::default()
    };
    assert_eq!(req.encode_to_vec(), [0x28, 1, 0x30, 1]); // fields 5 and 6
}

#[test]
fn field_numbers_that_are_easy_to_get_wrong() {
    // WatchResponse.events is field 11, not 8.
    let resp = WatchResponse {
        events: vec![Event::default()],
        ..Default::default()
    };
    assert_eq!(resp.encode_to_vec(), [0x5a, 0]); // (11 << 3) | 2, empty message

    // Compare.range_end is field 64; the lease target is oneof member 8.
    let cmp = Compare {
        range_end: bytes::Bytes::from_static(b"z"),
        target_union: Some(compare::TargetUnion::Lease(5)),
        ..Default::default()
    };
    assert_eq!(cmp.encode_to_vec(), [0x40, 5, 0x82, 0x04, 1, b'z']);

    // WatchRequest oneof: create 1, cancel 2, progress 3.
    let progress = WatchRequest {
        request_union: Some(watch_request::RequestUnion::ProgressRequest(
            etcdserverpb::WatchProgressRequest {},
        )),
    };
    assert_eq!(progress.encode_to_vec(), [0x1a, 0]);
    let cancel = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CancelRequest(
            etcdserverpb::WatchCancelRequest { watch_id: 3 },
        )),
    };
    assert_eq!(cancel.encode_to_vec(), [0x12, 2, 0x08, 3]);

    // StatusResponse tail: dbSizeInUse 9, isLearner 10, storageVersion 11.
    let status = StatusResponse {
        db_size_in_use: 1,
        is_learner: true,
        storage_version: "3.6.0".into(),
        ..Default::default()
    };
    let mut expected = vec![0x48, 1, 0x50, 1, 0x5a, 5];
    expected.extend_from_slice(b"3.6.0");
    assert_eq!(status.encode_to_vec(), expected);

    // Event.type is field 1, kv 2, prev_kv 3.
    let ev = Event {
        r#type: EventType::Delete as i32,
        kv: Some(KeyValue::default()),
        prev_kv: Some(KeyValue::default()),
    };
    assert_eq!(ev.encode_to_vec(), [0x08, 1, 0x12, 0, 0x1a, 0]);
}

#[test]
fn range_response_json() {
    let resp = RangeResponse {
        header: Some(ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: 5,
            raft_term: 3,
        }),
        kvs: vec![kv(b"foo", b"bar", 2, 5, 4)],
        more: false,
        count: 1,
    };
    let value = serde_json::to_value(&resp).unwrap();
    assert_eq!(
        value,
        json!({
            "header": {
                "cluster_id": "1",
                "member_id": "2",
                "revision": "5",
                "raft_term": "3"
            },
            "kvs": [{
                "key": "Zm9v",
                "create_revision": "2",
                "mod_revision": "5",
                "version": "4",
                "value": "YmFy"
            }],
            "count": "1"
        })
    );
    let back: RangeResponse = serde_json::from_value(value).unwrap();
    assert_eq!(back, resp);
}

#[test]
fn event_json() {
    let delete = Event {
        r#type: EventType::Delete as i32,
        kv: Some(kv(b"foo", b"", 0, 9, 0)),
        prev_kv: Some(kv(b"foo", b"bar", 2, 5, 4)),
    };
    let value = serde_json::to_value(&delete).unwrap();
    assert_eq!(value["type"], "DELETE");
    assert_eq!(value["kv"], json!({"key": "Zm9v", "mod_revision": "9"}));
    assert_eq!(value["prev_kv"]["create_revision"], "2");

    // A PUT is the zero value, so it is left out.
    let put = Event {
        r#type: EventType::Put as i32,
        kv: Some(kv(b"a", b"b", 1, 1, 1)),
        prev_kv: None,
    };
    let value = serde_json::to_value(&put).unwrap();
    let obj = value.as_object().unwrap();
    assert!(!obj.contains_key("type"), "{value}");
    assert!(!obj.contains_key("prev_kv"), "{value}");

    // Enums parse by name and by number.
    let parsed: Event = serde_json::from_str(r#"{"type":"DELETE"}"#).unwrap();
    assert_eq!(parsed.r#type(), EventType::Delete);
    let parsed: Event = serde_json::from_str(r#"{"type":1}"#).unwrap();
    assert_eq!(parsed.r#type(), EventType::Delete);
}

#[test]
fn watch_request_json() {
    let parsed: WatchRequest =
        serde_json::from_str(r#"{"create_request":{"key":"Zm9v","start_revision":"3"}}"#).unwrap();
    let expected = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: bytes::Bytes::from_static(b"foo"),
                start_revision: 3,
                ..Default::default()
            },
        )),
    };
    assert_eq!(parsed, expected);

    // 64-bit integers are also accepted as JSON numbers.
    let parsed: WatchCreateRequest = serde_json::from_str(r#"{"start_revision": 3}"#).unwrap();
    assert_eq!(parsed.start_revision, 3);

    // lowerCamelCase names are accepted on input too, and unknown fields are
    // ignored (as etcd's gateway does).
    let parsed: WatchCreateRequest =
        serde_json::from_str(r#"{"startRevision": 4, "prevKv": true, "bogus": 1}"#).unwrap();
    assert_eq!(parsed.start_revision, 4);
    assert!(parsed.prev_kv);

    // Filters are enums rendered by name.
    let create = WatchCreateRequest {
        filters: vec![etcdserverpb::watch_create_request::FilterType::Nodelete as i32],
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_value(&create).unwrap(),
        json!({"filters": ["NODELETE"]})
    );
}

#[test]
fn names_as_written_in_the_proto() {
    let grant = LeaseGrantResponse {
        id: 42,
        ttl: 60,
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_value(&grant).unwrap(),
        json!({"ID": "42", "TTL": "60"})
    );

    let member = Member {
        id: 1,
        name: "m1".into(),
        peer_ur_ls: vec!["http://127.0.0.1:2380".into()],
        client_ur_ls: vec!["http://127.0.0.1:2379".into()],
        is_learner: true,
    };
    let value: Value = serde_json::to_value(&member).unwrap();
    assert_eq!(
        value,
        json!({
            "ID": "1",
            "name": "m1",
            "peerURLs": ["http://127.0.0.1:2380"],
            "clientURLs": ["http://127.0.0.1:2379"],
            "isLearner": true
        })
    );
}

#[test]
fn service_names() {
    use etcdserverpb::{
        auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
        lease_server::LeaseServer, maintenance_server::MaintenanceServer,
        watch_server::WatchServer,
    };
    assert_eq!(<KvServer<()> as NamedService>::NAME, "etcdserverpb.KV");
    assert_eq!(
        <WatchServer<()> as NamedService>::NAME,
        "etcdserverpb.Watch"
    );
    assert_eq!(
        <LeaseServer<()> as NamedService>::NAME,
        "etcdserverpb.Lease"
    );
    assert_eq!(
        <ClusterServer<()> as NamedService>::NAME,
        "etcdserverpb.Cluster"
    );
    assert_eq!(
        <MaintenanceServer<()> as NamedService>::NAME,
        "etcdserverpb.Maintenance"
    );
    assert_eq!(<AuthServer<()> as NamedService>::NAME, "etcdserverpb.Auth");
    assert_eq!(
        <v3lockpb::lock_server::LockServer<()> as NamedService>::NAME,
        "v3lockpb.Lock"
    );
    assert_eq!(
        <v3electionpb::election_server::ElectionServer<()> as NamedService>::NAME,
        "v3electionpb.Election"
    );
}

#[test]
fn descriptor_set_has_every_file_and_method() {
    let fds = prost_types::FileDescriptorSet::decode(mast_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut names: Vec<&str> = fds.file.iter().map(|f| f.name()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "authpb/auth.proto",
            "etcdserverpb/rpc.proto",
            "leasepb/lease.proto",
            "mastraftpb/peer.proto",
            "mvccpb/kv.proto",
            "v3electionpb/v3election.proto",
            "v3lockpb/v3lock.proto",
        ]
    );

    // (service, method, client streaming, server streaming)
    let mut methods = Vec::new();
    for file in &fds.file {
        for svc in &file.service {
            for m in &svc.method {
                methods.push((
                    format!("{}.{}", file.package(), svc.name()),
                    m.name().to_string(),
                    m.client_streaming(),
                    m.server_streaming(),
                ));
            }
        }
    }
    let count = |svc: &str| methods.iter().filter(|m| m.0 == svc).count();
    assert_eq!(count("etcdserverpb.KV"), 5);
    assert_eq!(count("etcdserverpb.Watch"), 1);
    assert_eq!(count("etcdserverpb.Lease"), 5);
    assert_eq!(count("etcdserverpb.Cluster"), 5);
    assert_eq!(count("etcdserverpb.Maintenance"), 8);
    assert_eq!(count("etcdserverpb.Auth"), 17);
    assert_eq!(count("v3lockpb.Lock"), 2);
    assert_eq!(count("v3electionpb.Election"), 5);
    assert_eq!(count("mastraftpb.Peer"), 8);

    let streaming: Vec<(&str, bool, bool)> = methods
        .iter()
        .filter(|m| m.2 || m.3)
        .map(|m| (m.1.as_str(), m.2, m.3))
        .collect();
    assert_eq!(
        streaming,
        [
            ("Watch", true, true),
            ("LeaseKeepAlive", true, true),
            ("Snapshot", false, true),
            ("Observe", false, true),
            ("InstallSnapshot", true, false),
        ]
    );
}
