//! Every KV, Watch, Lease, Maintenance, Cluster, Lock and Election RPC through the `etcd-client` crate (0.21),
//! as a Rust application would use them.
//!
//! Each check is one `async fn(ServerKind)`, and [`both!`] runs it against a real etcd 3.4 and
//! against Mast (tests named `<check>::etcd` and `<check>::mast`), so every expectation is proven
//! on etcd first; and again against 3 etcd members and 3 Mast members with the client given
//! every endpoint (`<check>::etcd_3`, `<check>::mast_3`). Filter with `cargo test -p mast-conformance --test etcd_client -- ::etcd`.
//! The Mast variants need the binary: `cargo build -p mast` first.

use std::time::Duration;

use etcd_client::{
    AlarmAction, AlarmType, Client, CompactionOptions, Compare, CompareOp, ConnectOptions,
    DeleteOptions, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, LockOptions,
    MemberAddOptions, ObserveStream, ProclaimOptions, PutOptions, ResignOptions, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions, WatchResponse,
    WatchStream,
};
use mast_conformance::{Server, ServerKind};
use tonic::Code;

/// Generates `mod $check { etcd, mast }` test pairs for each `async fn $check(ServerKind)`.
macro_rules! both {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            #[tokio::test]
            async fn etcd() {
                super::$check(super::ServerKind::Etcd).await
            }
            #[tokio::test]
            async fn mast() {
                super::$check(super::ServerKind::Mast).await
            }
            #[tokio::test]
            async fn etcd_3() {
                super::MEMBERS.scope(3, super::$check(super::ServerKind::Etcd)).await
            }
            #[tokio::test]
            async fn mast_3() {
                super::MEMBERS.scope(3, super::$check(super::ServerKind::Mast)).await
            }
        }
    )*};
}

both!(
    revisions_follow_etcd_rules,
    kv_put_options,
    kv_range_options,
    kv_range_sorting,
    kv_delete_range,
    kv_txn_compares,
    kv_txn_nested,
    kv_compact,
    watch_start_revision_and_prev_kv,
    watch_live_events_and_filters,
    watch_cancel_and_progress,
    watch_compacted_start_revision,
    lease_grant_and_revoke,
    lease_keep_alive,
    lease_time_to_live_and_leases,
    maintenance_rpcs,
    cluster_member_list_and_add,
    errors_invalid_argument,
    errors_out_of_range_and_not_found,
    lock_waits_for_the_holder,
    election_campaign_proclaim_observe_resign,
);

/// Every single RPC is bounded by this (a hung server fails the test instead of hanging it).
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

tokio::task_local! {
    /// Members a check runs against (1 when not set).
    static MEMBERS: usize;
}

/// The servers a check runs against; dropping it stops them by their PIDs.
struct Running {
    servers: Vec<Server>,
}

impl Running {
    /// Every member's client URL.
    fn endpoints(&self) -> Vec<String> {
        self.servers.iter().map(Server::endpoint).collect()
    }
}

/// Starts a server of `kind` (or [`MEMBERS`] of them as one cluster) and connects a client
/// to it, with every member's endpoint.
async fn start(kind: ServerKind) -> (Running, Client) {
    let n = MEMBERS.try_with(|n| *n).unwrap_or(1);
    // Starting blocks (it waits for the servers to answer); keep the runtime free meanwhile.
    let servers = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Server>> {
        if n <= 1 {
            Ok(vec![Server::try_start(kind)?])
        } else {
            Ok(mast_conformance::cluster::Cluster::start(kind, n)?.members)
        }
    })
    .await
    .expect("start task")
    .unwrap_or_else(|e| panic!("could not start {n} × {kind}: {e:#}"));
    let running = Running { servers };
    let options = ConnectOptions::new()
        .with_timeout(RPC_TIMEOUT)
        .with_connect_timeout(Duration::from_secs(5));
    let endpoints = running.endpoints();
    let client = Client::connect(endpoints.clone(), Some(options))
        .await
        .unwrap_or_else(|e| panic!("connecting to {kind} at {endpoints:?}: {e}"));
    (running, client)
}

/// Unwraps `r`, or panics naming `what`.
fn ok<T>(r: Result<T, etcd_client::Error>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: unexpected error: {e}"))
}

/// Asserts that `r` failed with gRPC status `code` and exactly `message`.
#[track_caller]
fn assert_status<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>, code: Code, message: &str) {
    match r {
        Err(etcd_client::Error::GRpcStatus(status)) => {
            assert_eq!(
                (status.code(), status.message()),
                (code, message),
                "wrong gRPC status (expected {code:?} {message:?})"
            );
        }
        Err(other) => {
            panic!("expected gRPC status {code:?} {message:?}, got another error: {other}")
        }
        Ok(v) => panic!("expected gRPC status {code:?} {message:?}, got success: {v:?}"),
    }
}

/// The store revision, read through a Range on a key nobody writes.
async fn revision(client: &mut Client) -> i64 {
    let r = ok(
        client.get("conformance/revision-probe", None).await,
        "revision probe",
    );
    r.header().expect("range header").revision()
}

/// Keys of `kvs` as strings.
fn keys(kvs: &[etcd_client::KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

/// The next watch response, within 5 s.
async fn next(stream: &mut WatchStream) -> WatchResponse {
    match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => panic!("watch stream ended"),
        Ok(Err(e)) => panic!("watch stream error: {e}"),
        Err(_) => panic!("no watch response within 5 s"),
    }
}

/// Collects watch events until `n` events have arrived (5 s per response at most).
async fn events(
    stream: &mut WatchStream,
    n: usize,
) -> Vec<(EventType, String, String, i64, Option<String>)> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = next(stream).await;
        assert!(
            !r.canceled(),
            "watch canceled unexpectedly: {:?}",
            r.cancel_reason()
        );
        for e in r.events() {
            let kv = e.kv().expect("event kv");
            out.push((
                e.event_type(),
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
                kv.mod_revision(),
                e.prev_kv()
                    .map(|p| String::from_utf8_lossy(p.value()).into_owned()),
            ));
        }
    }
    out
}

// --- Revisions -----------------------------------------------------------------------------

async fn revisions_follow_etcd_rules(kind: ServerKind) {
    let (_server, mut c) = start(kind).await;
    assert_eq!(revision(&mut c).await, 1, "a fresh store is at revision 1");
    let r = ok(c.put("a", "1", None).await, "put");
    assert_eq!(
        r.header().unwrap().revision(),
        2,
        "a put bumps the revision by one"
    );
    ok(c.put("a", "1", None).await, "same value");
    assert_eq!(
        revision(&mut c).await,
        3,
        "a put with the same value still bumps"
    );
    let d = ok(c.delete("missing", None).await, "delete nothing");
    assert_eq!(
        (d.deleted(), d.header().unwrap().revision()),
        (0, 3),
        "deleting nothing keeps the revision"
    );
    assert!(c.put("", "v", None).await.is_err());
    assert_eq!(
        revision(&mut c).await,
        3,
        "a failed request keeps the revision"
    );
    let t = ok(
        c.txn(Txn::new().and_then([TxnOp::get("a", None)])).await,
        "read-only txn",
    );
    assert_eq!(
        t.header().unwrap().revision(),
        3,
        "a read-only txn keeps the revision"
    );
    let t = ok(
        c.txn(Txn::new().and_then([
            TxnOp::put("x", "1", None),
            TxnOp::put("y", "2", None),
            TxnOp::delete("a", None),
        ]))
        .await,
        "writing txn",
    );
    assert_eq!(t.header().unwrap().revision(), 4, "one txn is one revision");
    let r = ok(
        c.get("", Some(GetOptions::new().with_all_keys())).await,
        "all keys",
    );
    assert_eq!(keys(r.kvs()), ["x", "y"]);
    assert!(
        r.kvs().iter().all(|kv| kv.mod_revision() == 4),
        "all writes of one txn share its revision"
    );
    let r = ok(
        c.get("a", Some(GetOptions::new().with_revision(2))).await,
        "historical",
    );
    assert_eq!(
        r.header().unwrap().revision(),
        4,
        "a historical read reports the current revision"
    );
    assert_eq!(r.kvs()[0].mod_revision(), 2);
}

// --- KV --------------------------------------------------------------------------------------

async fn kv_put_options(kind: ServerKind) {
    let (_server, mut c) = start(kind).await;
    let r = ok(
        c.put("k", "v1", Some(PutOptions::new().with_prev_key()))
            .await,
        "put prev_kv new",
    );
    assert!(r.prev_key().is_none(), "no prev_kv for a new key");
    let r = ok(
        c.put("k", "v2", Some(PutOptions::new().with_prev_key()))
            .await,
        "put prev_kv",
    );
    let prev = r.prev_key().expect("prev_kv");
    assert_eq!(
        (
            prev.value(),
            prev.version(),
            prev.mod_revision(),
            prev.create_revision()
        ),
        (&b"v1"[..], 1, 2, 2)
    );
    let r = ok(c.put("k", "v3", None).await, "put without prev_kv");
    assert!(r.prev_key().is_none(), "prev_kv only when asked");

    let lease = ok(c.lease_grant(60, None).await, "grant").id();
    ok(
        c.put("k", "v4", Some(PutOptions::new().with_lease(lease)))
            .await,
        "put with lease",
    );
    let kv = ok(c.get("k", None).await, "get").kvs()[0].clone();
    assert_eq!(
        (kv.lease(), kv.version(), kv.value()),
        (lease, 4, &b"v4"[..])
    );

    assert_status(
        c.put("k", "v", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    ok(
        c.put("k", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        "ignore_value",
    );
    let kv = ok(c.get("k", None).await, "get").kvs()[0].clone();
    assert_eq!(
        (kv.value(), kv.version(), kv.lease()),
        (&b"v4"[..], 5, 0),
        "ignore_value keeps the value, drops the lease"
    );

    ok(
        c.put("k", "v6", Some(PutOptions::new().with_lease(lease)))
            .await,
        "put with lease",
    );
    ok(
        c.put("k", "v7", Some(PutOptions::new().with_ignore_lease()))
            .await,
        "ignore_lease",
    );
    let kv = ok(c.get("k", None).await, "get").kvs()[0].clone();
    assert_eq!(
        (kv.value(), kv.lease(), kv.version()),
        (&b"v7"[..], lease, 7),
        "ignore_lease keeps the lease"
    );

    assert_status(
        c.put("missing", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_status(
        c.put("missing", "v", Some(PutOptions::new().with_ignore_lease()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_status(
        c.put(
            "k",
            "v",
            Some(PutOptions::new().with_lease(lease).with_ignore_lease()),
        )
        .await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
}

async fn kv_range_options(kind: ServerKind) {
    let (_server, mut c) = start(kind).await;
    for (k, v) in [
        ("a", "1"),
        ("b/1", "2"),
        ("b/2", "3"),
        ("b/3", "4"),
        ("c", "5"),
    ] {
        ok(c.put(k, v, None).await, "put");
    } // revisions 2..=6
    ok(c.put("b/2", "33", None).await, "update"); // 7

    let r = ok(c.get("b/2", None).await, "single key");
    assert_eq!(
        (keys(r.kvs()), r.count(), r.more()),
        (vec!["b/2".to_owned()], 1, false)
    );
    let kv = &r.kvs()[0];
    assert_eq!(
        (
            kv.create_revision(),
            kv.mod_revision(),
            kv.version(),
            kv.value()
        ),
        (4, 7, 2, &b"33"[..])
    );

    let r = ok(
        c.get("b/", Some(GetOptions::new().with_prefix())).await,
        "prefix",
    );
    assert_eq!(keys(r.kvs()), ["b/1", "b/2", "b/3"]);
    let r = ok(
        c.get("b/2", Some(GetOptions::new().with_from_key())).await,
        "from key",
    );
    assert_eq!(keys(r.kvs()), ["b/2", "b/3", "c"]);
    let r = ok(
        c.get("b/1", Some(GetOptions::new().with_range("b/3")))
            .await,
        "range",
    );
    assert_eq!(keys(r.kvs()), ["b/1", "b/2"], "range_end is exclusive");
    let r = ok(
        c.get("", Some(GetOptions::new().with_all_keys())).await,
        "all keys",
    );
    assert_eq!(r.count(), 5);

    let r = ok(
        c.get("", Some(GetOptions::new().with_all_keys().with_limit(2)))
            .await,
        "limit",
    );
    assert_eq!(
        (keys(r.kvs()), r.count(), r.more()),
        (vec!["a".to_owned(), "b/1".to_owned()], 5, true),
        "count ignores limit"
    );
    let r = ok(
        c.get("", Some(GetOptions::new().with_all_keys().with_limit(5)))
            .await,
        "limit = count",
    );
    assert!(!r.more(), "more only when the limit cut something");

    let r = ok(
        c.get("b/2", Some(GetOptions::new().with_revision(4))).await,
        "at revision",
    );
    assert_eq!(
        (r.kvs()[0].value(), r.header().unwrap().revision()),
        (&b"3"[..], 7)
    );
    let r = ok(
        c.get("b/2", Some(GetOptions::new().with_revision(3))).await,
        "before creation",
    );
    assert!(r.kvs().is_empty());

    let r = ok(
        c.get("b/", Some(GetOptions::new().with_prefix().with_keys_only()))
            .await,
        "keys only",
    );
    assert_eq!(keys(r.kvs()), ["b/1", "b/2", "b/3"]);
    assert!(
        r.kvs()
            .iter()
            .all(|kv| kv.value().is_empty() && kv.version() > 0),
        "keys_only drops values only"
    );

    let r = ok(
        c.get(
            "b/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await,
        "count only",
    );
    assert_eq!((r.kvs().len(), r.count()), (0, 3));

    let r = ok(
        c.get(
            "b/",
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await,
        "serializable",
    );
    assert_eq!(r.count(), 3);

    let r = ok(
        c.get(
            "",
            Some(GetOptions::new().with_all_keys().with_min_mod_revision(5)),
        )
        .await,
        "min mod",
    );
    assert_eq!(keys(r.kvs()), ["b/2", "b/3", "c"]);
    let r = ok(
        c.get(
            "",
            Some(GetOptions::new().with_all_keys().with_max_mod_revision(3)),
        )
        .await,
        "max mod",
    );
    assert_eq!(keys(r.kvs()), ["a", "b/1"]);
    let r = ok(
        c.get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_min_create_revision(4),
            ),
        )
        .await,
        "min create",
    );
    assert_eq!(keys(r.kvs()), ["b/2", "b/3", "c"]);
    let r = ok(
        c.get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_max_create_revision(4),
            ),
        )
        .await,
        "max create",
    );
    assert_eq!(keys(r.kvs()), ["a", "b/1", "b/2"]);
}

async fn kv_range_sorting(kind: ServerKind) {
    let (_server, mut c) = start(kind).await;
    // Key, create, mod, value and version orders all differ.
    for (k, v) in [
        ("s/b", "v1"),
        ("s/a", "v3"),
        ("s/c", "v2"),
        ("s/a", "v0"),
        ("s/b", "v4"),
        ("s/b", "v5"),
        ("s/d", "a"),
    ] {
        ok(c.put(k, v, None).await, "put");
    }
    let sorted = |target, order| GetOptions::new().with_prefix().with_sort(target, order);
    let cases = [
        (
            SortTarget::Key,
            SortOrder::Ascend,
            ["s/a", "s/b", "s/c", "s/d"],
        ),
        (
            SortTarget::Key,
            SortOrder::Descend,
            ["s/d", "s/c", "s/b", "s/a"],
        ),
        (
            SortTarget::Create,
            SortOrder::Ascend,
            ["s/b", "s/a", "s/c", "s/d"],
        ),
        (
            SortTarget::Create,
            SortOrder::Descend,
            ["s/d", "s/c", "s/a", "s/b"],
        ),
        (
            SortTarget::Mod,
            SortOrder::Ascend,
            ["s/c", "s/a", "s/b", "s/d"],
        ),
        (
            SortTarget::Mod,
            SortOrder::Descend,
            ["s/d", "s/b", "s/a", "s/c"],
        ),
        (
            SortTarget::Value,
            SortOrder::Ascend,
            ["s/d", "s/a", "s/c", "s/b"],
        ),
        (
            SortTarget::Value,
            SortOrder::Descend,
            ["s/b", "s/c", "s/a", "s/d"],
        ),
        (
            SortTarget::Version,
            SortOrder::Descend,
            ["s/b", "s/a", "s/c", "s/d"],
        ),
        // A sort target with order NONE sorts ascending.
        (
            SortTarget::Value,
            SortOrder::None,
            ["s/d", "s/a", "s/c", "s/b"],
        ),
    ];
    for (target, order, expected) in cases {
        let r = ok(c.get("s/", Some(sorted(target, order))).await, "sorted get");
        assert_eq!(keys(r.kvs()), expected, "sort by {target:?} {order:?}");
    }
    // Versions tie (s/c and s/d are both at 1): the tie keeps key order.
    let r = ok(
        c.get("s/", Some(sorted(SortTarget::Version, SortOrder::Ascend)))
            .await,
        "version asc",
    );
    assert_eq!(keys(r.kvs()), ["s/c", "s/d", "s/a", "s/b"]);
    // With a limit and an explicit order, the whole range is sorted, then cut.
    let r = ok(
        c.get(
            "s/",
            Some(sorted(SortTarget::Value, SortOrder::Ascend).with_limit(2)),
        )
        .await,
        "limit",
    );
    assert_eq!(
        (keys(r.kvs()), r.more(), r.count()),
        (vec!["s/d".to_owned(), "s/a".to_owned()], true, 4)
    );
    // With order NONE, etcd 3.4 reads limit+1 keys in key order, then sorts and cuts: s/d, the
    // smallest value, is not among the first three keys.
    let r = ok(
        c.get(
            "s/",
            Some(sorted(SortTarget::Value, SortOrder::None).with_limit(2)),
        )
        .await,
        "limit, order none",
    );
    assert_eq!(
        (keys(r.kvs()), r.more()),
        (vec!["s/a".to_owned(), "s/c".to_owned()], true)
    );
}

async fn kv_delete_range(kind: ServerKind) {
    let (_server, mut c) = start(kind).await;
    for k in ["d/1", "d/2", "d/3", "e"] {
        ok(c.put(k, format!("v-{k}"), None).await, "put");
    } // 2..=5
    let r = ok(
        c.delete("d/1", Some(DeleteOptions::new().with_prev_key()))
            .await,
        "delete one",
    );
    assert_eq!((r.deleted(), r.header().unwrap().revision()), (1, 6));
    assert_eq!(keys(r.prev_kvs()), ["d/1"]);
    assert_eq!(r.prev_kvs()[0].value(), b"v-d/1");
    let r = ok(
        c.delete("d/", Some(DeleteOptions::new().with_prefix()))
            .await,
        "delete prefix",
    );
    assert_eq!(
        (
            r.deleted(),
            r.prev_kvs().len(),
            r.header().unwrap().revision()
        ),
        (2, 0, 7),
        "no prev_kvs unless asked"
    );
    let r = ok(
        c.delete(
            "d/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await,
        "delete nothing",
    );
    assert_eq!((r.deleted(), r.header().unwrap().revision()), (0, 7));
    let r = ok(
        c.delete(
            "a",
            Some(DeleteOptions::new().with_from_key().with_prev_key()),
        )
        .await,
        "from key",
    );
    assert_eq!((r.deleted(), keys(r.prev_kvs())), (1, vec!["e".to_owned()]));
    // The history keeps the deleted values.
    let r = ok(
        c.get("d/2", Some(GetOptions::new().with_revision(6))).await,
        "history",
    );
    assert_eq!(r.kvs()[0].value(), b"v-d/2");
    // Re-creating a deleted key restarts create_revision and version.
    ok(c.put("d/2", "again", None).await, "recreate");
    let kv = ok(c.get("d/2", None).await, "get").kvs()[0].clone();
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (9, 9, 1)
    );
}

async fn kv_txn_compares(kind: ServerKind) {
    let (_server, mut c) = start(kind).await;
    let lease = ok(c.lease_grant(60, None).await, "grant").id();
    ok(c.put("t", "v1", None).await, "put"); // 2
    ok(
        c.put("t", "v2", Some(PutOptions::new().with_lease(lease)))
            .await,
        "put",
    ); // 3: create 2, mod 3, version 2
    ok(c.put("p/1", "x", None).await, "put"); // 4
    ok(c.put("p/2", "y", None).await, "put"); // 5

    let cases: Vec<(Compare, bool)> = vec![
        (Compare::value("t", CompareOp::Equal, "v2"), true),
        (Compare::value("t", CompareOp::NotEqual, "v2"), false),
        (Compare::value("t", CompareOp::Greater, "v1"), true),
        (Compare::value("t", CompareOp::Less, "v1"), false),
        (Compare::version("t", CompareOp::Equal, 2), true),
        (Compare::version("t", CompareOp::Greater, 2), false),
        (Compare::create_revision("t", CompareOp::Equal, 2), true),
        (Compare::create_revision("t", CompareOp::Less, 3), true),
        (Compare::mod_revision("t", CompareOp::Equal, 3), true),
        (Compare::mod_revision("t", CompareOp::NotEqual, 3), false),
        (Compare::lease("t", CompareOp::Equal, lease), true),
        (Compare::lease("t", CompareOp::Equal, 0), false),
        // A missing key: every target but VALUE compares against 0; VALUE is false.
        (Compare::version("missing", CompareOp::Equal, 0), true),
        (
            Compare::create_revision("missing", CompareOp::Equal, 0),
            true,
        ),
        (Compare::mod_revision("missing", CompareOp::Less, 1), true),
        (Compare::lease("missing", CompareOp::Equal, 0), true),
        (Compare::value("missing", CompareOp::NotEqual, "x"), false),
        (Compare::value("missing", CompareOp::Equal, ""), false),
        // A range compare holds for every key in the range.
        (
            Compare::version("p/", CompareOp::Equal, 1).with_prefix(),
            true,
        ),
        (
            Compare::value("p/", CompareOp::Equal, "x").with_prefix(),
            false,
        ),
        (
            Compare::mod_revision("p/1", CompareOp::Greater, 3).with_range("p/3"),
            true,
        ),
    ];
    for (i, (cmp, expected)) in cases.into_iter().enumerate() {
        let t = ok(
            c.txn(
                Txn::new()
                    .when([cmp])
                    .and_then([TxnOp::get("t", None)])
                    .or_else([TxnOp::get("p/1", None)]),
            )
            .await,
            "txn",
        );
        assert_eq!(t.succeeded(), expected, "compare #{i}");
        let expected_key = if expected { "t" } else { "p/1" };
        match &t.op_responses()[..] {
            [TxnOpResponse::Get(g)] => {
                assert_eq!(keys(g.kvs()), [expected_key], "compare #{i}: branch")
            }
            other => panic!("compare #{i}: unexpected responses {other:?}"),
        }
        assert_eq!(
            t.header().unwrap().revision(),
            5,
            "read-only txns keep the revision"
        );
    }
    // Several compares: all must hold.
    let t = ok(
        c.txn(
            Txn::new()
                .when([
                    Compare::version("t", CompareOp::Equal, 2),
                    Compare::value("t", CompareOp::Equal, "nope"),
                ])
                .and_then([TxnOp::put("t", "never", None)])
                .or_else([
                    TxnOp::put("t", "failure", Some(PutOptions::new().with_prev_key())),
                    TxnOp::get("t", None),
                ]),
        )
        .await,
        "txn",
    );
    assert!(!t.succeeded());
    assert_eq!(t.header().unwrap().revision(), 6);
    match &t.op_responses()[..] {
        [TxnOpResponse::Put(p), TxnOpResponse::Get(g)] => {
            assert_eq!(p.prev_key().map(|kv| kv.value()), Some(&b"v2"[..]));
            assert_eq!(p.header().unwrap().revision(), 6);
            // A Range after a Put in the same txn sees the Put.
            assert_eq!(g.kvs()[0].value(), b"failure");
            assert_eq!(g.kvs()[0].mod_revision(), 6);
        }
        other => panic!("unexpected responses {other:?}"),
    }
    // Put then delete of different keys in one txn: one revision, one mod_revision.
    let t = ok(
        c.txn(Txn::new().and_then([
            TxnOp::get("p/1", None),
            TxnOp::put("p/3", "z", None),
            TxnOp::delete("p/1", Some(DeleteOptions::new().with_prev_key())),
        ]))
        .await,
        "txn",
    );
    assert!(t.succeeded(), "no compares: success");
    match &t.op_responses()[..] {
        [
            TxnOpResponse::Get(g),
            TxnOpResponse::Put(_),
            TxnOpResponse::Delete(d),
        ] => {
            // etcd 3.4: a get before the first write reports the revision from before the txn.
            assert_eq!(g.header().unwrap().revision(), 6);
            assert_eq!((d.deleted(), d.header().unwrap().revision()), (1, 7));
        }
        other => panic!("unexpected responses {other:?}"),
    }
}

async fn kv_txn_nested(kind: ServerKind) {
    let (_server, mut c) = start(kind).await;
    ok(c.put("n", "0", None).await, "put"); // 2
    let inner_ok = Txn::new()
        .when([Compare::value("n", CompareOp::Equal, "0")])
        .and_then([TxnOp::put("n", "1", None), TxnOp::get("n", None)])
        .or_else([TxnOp::get("n", None)]);
    let inner_other = Txn::new().and_then([TxnOp::put("m", "1", None)]);
    let t = ok(
        c.txn(
            Txn::new()
                .when([Compare::version("n", CompareOp::Greater, 0)])
                .and_then([TxnOp::txn(inner_ok), TxnOp::txn(inner_other)]),
        )
        .await,
        "nested txn",
    );
    assert!(t.succeeded());
    assert_eq!(
        t.header().unwrap().revision(),
        3,
        "a nested txn is part of one revision"
    );
    match &t.op_responses()[..] {
        [TxnOpResponse::Txn(a), TxnOpResponse::Txn(b)] => {
            assert!(a.succeeded() && b.succeeded());
            match &a.op_responses()[..] {
                [TxnOpResponse::Put(_), TxnOpResponse::Get(g)] => {
                    assert_eq!(g.kvs()[0].value(), b"1")
                }
                other => panic!("unexpected inner responses {other:?}"),
            }
        }
        other => panic!("unexpected responses {other:?}"),
    }
    let r = ok(
        c.get("", Some(GetOptions::new().with_all_keys())).await,
        "get",
    );
    assert!(r.kvs().iter().all(|kv| kv.mod_revision() == 3));
    // Two nested txns writing the same key conflict like two puts.
    let t = c
        .txn(Txn::new().and_then([
            TxnOp::txn(Txn::new().and_then([TxnOp::put("n", "a", None)])),
            TxnOp::txn(Txn::new().and_then([TxnOp::put("n", "b", None)])),
        ]))
        .await;
    assert_status(
        t,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
}

async fn kv_compact(kind: ServerKind) {
    let (_server, mut c) = start(kind).await;
    for v in ["1", "2", "3", "4"] {
        ok(c.put("k", v, None).await, "put");
    } // 2..=5
    let r = ok(c.compact(3, None).await, "compact");
    assert_eq!(
        r.header().unwrap().revision(),
        5,
        "compaction keeps the revision"
    );
    let r = ok(
        c.get("k", Some(GetOptions::new().with_revision(3))).await,
        "at the compact revision",
    );
    assert_eq!(r.kvs()[0].value(), b"2");
    assert_status(
        c.get("k", Some(GetOptions::new().with_revision(2))).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_status(
        c.compact(3, None).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_status(
        c.compact(2, None).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_status(
        c.compact(6, None).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    ok(
        c.compact(5, Some(CompactionOptions::new().with_physical()))
            .await,
        "physical compaction",
    );
    let r = ok(c.get("k", None).await, "latest survives compaction");
    assert_eq!((r.kvs()[0].value(), r.kvs()[0].version()), (&b"4"[..], 4));
}

// --- Watch -----------------------------------------------------------------------------------

async fn watch_start_revision_and_prev_kv(kind: ServerKind) {
    let (_server, mut c) = start(kind).await;
    ok(c.put("w/a", "1", None).await, "put"); // 2
    ok(c.put("w/a", "2", None).await, "put"); // 3
    ok(c.delete("w/a", None).await, "delete"); // 4
    ok(c.put("w/b", "3", None).await, "put"); // 5
    let mut s = ok(
        c.watch(
            "w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(2)
                    .with_prev_key(),
            ),
        )
        .await,
        "watch",
    );
    let created = next(&mut s).await;
    assert!(
        created.created() && !created.canceled(),
        "first response: created"
    );
    // The member's current revision: with one member 5; in a cluster the client's watch may
    // land on a follower still applying the last puts (etcd's followers do), so at most 5.
    let rev = created.header().unwrap().revision();
    if MEMBERS.try_with(|n| *n).unwrap_or(1) > 1 {
        assert!(
            (1..=5).contains(&rev),
            "created carries the member's revision: {rev}"
        );
    } else {
        assert_eq!(rev, 5, "created carries the current revision");
    }
    let ev = events(&mut s, 4).await;
    let put = EventType::Put;
    assert_eq!(
        ev,
        [
            (put, "w/a".into(), "1".into(), 2, None),
            (put, "w/a".into(), "2".into(), 3, Some("1".into())),
            (
                EventType::Delete,
                "w/a".into(),
                "".into(),
                4,
                Some("2".into())
            ),
            (put, "w/b".into(), "3".into(), 5, None),
        ]
    );
    // Replay and live events continue on one watcher.
    ok(c.put("w/c", "4", None).await, "put"); // 6
    assert_eq!(
        events(&mut s, 1).await,
        [(put, "w/c".into(), "4".into(), 6, None)]
    );
    // A DELETE event's kv has only key and mod_revision.
    let mut s = ok(
        c.watch("w/a", Some(WatchOptions::new().with_start_revision(4)))
            .await,
        "watch",
    );
    assert!(next(&mut s).await.created());
    let r = next(&mut s).await;
    let kv = r.events()[0].kv().unwrap();
    assert_eq!(
        (
            kv.key(),
            kv.mod_revision(),
            kv.create_revision(),
            kv.version()
        ),
        (&b"w/a"[..], 4, 0, 0)
    );
}

async fn watch_live_events_and_filters(kind: ServerKind) {
    let (_server, mut c) = start(kind).await;
    let mut all = ok(c.watch("f", None).await, "watch");
    assert!(next(&mut all).await.created());
    let mut no_put = ok(
        c.watch(
            "f",
            Some(WatchOptions::new().with_filters([WatchFilterType::NoPut])),
        )
        .await,
        "watch",
    );
    assert!(next(&mut no_put).await.created());
    let mut no_del = ok(
        c.watch(
            "f",
            Some(WatchOptions::new().with_filters([WatchFilterType::NoDelete])),
        )
        .await,
        "watch",
    );
    assert!(next(&mut no_del).await.created());
    ok(c.put("f", "1", None).await, "put"); // 2
    ok(c.delete("f", None).await, "delete"); // 3
    ok(c.put("f", "2", None).await, "put"); // 4
    let types = |ev: Vec<(EventType, String, String, i64, Option<String>)>| {
        ev.into_iter()
            .map(|(t, _, _, rev, _)| (t, rev))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        types(events(&mut all, 3).await),
        [
            (EventType::Put, 2),
            (EventType::Delete, 3),
            (EventType::Put, 4)
        ]
    );
    assert_eq!(
        types(events(&mut no_put, 1).await),
        [(EventType::Delete, 3)]
    );
    assert_eq!(
        types(events(&mut no_del, 2).await),
        [(EventType::Put, 2), (EventType::Put, 4)]
    );
    // One txn: events share the revision and arrive in one response.
    let mut pre = ok(
        c.watch("g/", Some(WatchOptions::new().with_prefix())).await,
        "watch",
    );
    assert!(next(&mut pre).await.created());
    ok(
        c.txn(Txn::new().and_then([TxnOp::put("g/1", "a", None), TxnOp::put("g/2", "b", None)]))
            .await,
        "txn",
    ); // 5
    let r = next(&mut pre).await;
    let revs: Vec<i64> = r
        .events()
        .iter()
        .map(|e| e.kv().unwrap().mod_revision())
        .collect();
    assert_eq!(revs, [5, 5]);
}

async fn watch_cancel_and_progress(kind: ServerKind) {
    let (_server, mut c) = start(kind).await;
    let mut s = ok(c.watch("x", None).await, "watch");
    let created = next(&mut s).await;
    assert!(created.created());
    let first_id = created.watch_id();
    // A second watcher on the same stream gets its own id.
    ok(s.watch("y", None).await, "second watch");
    let created = next(&mut s).await;
    assert!(created.created());
    let second_id = created.watch_id();
    assert_ne!(first_id, second_id);

    ok(c.put("z", "1", None).await, "put"); // 2
    // A progress response reports the revision the watching member has applied. With several
    // members the put may have been answered by another one, so ask until the watching
    // member has caught up (it never reports more than there is).
    let cluster = MEMBERS.try_with(|n| *n).unwrap_or(1) > 1;
    for attempt in 0.. {
        ok(s.request_progress().await, "progress request");
        let r = next(&mut s).await;
        assert!(
            r.events().is_empty() && !r.created() && !r.canceled(),
            "progress response is empty: {r:?}"
        );
        assert_eq!(r.watch_id(), -1, "progress responses carry watch_id -1");
        let rev = r.header().unwrap().revision();
        if cluster && rev == 1 && attempt < 50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        assert_eq!(rev, 2, "progress reports the current revision");
        break;
    }

    ok(s.cancel(first_id).await, "cancel");
    let r = next(&mut s).await;
    assert!(r.canceled(), "cancel is answered with canceled: {r:?}");
    assert_eq!(r.watch_id(), first_id);
    ok(c.put("x", "after cancel", None).await, "put"); // 3
    ok(c.put("y", "still watched", None).await, "put"); // 4
    let r = next(&mut s).await;
    assert_eq!(r.watch_id(), second_id, "no events for a canceled watcher");
    assert_eq!(r.events()[0].kv().unwrap().mod_revision(), 4);
}

async fn watch_compacted_start_revision(kind: ServerKind) {
    let (_server, mut c) = start(kind).await;
    for v in ["1", "2", "3"] {
        ok(c.put("k", v, None).await, "put");
    } // 2..=4
    ok(c.compact(3, None).await, "compact");
    let mut s = ok(
        c.watch("k", Some(WatchOptions::new().with_start_revision(2)))
            .await,
        "watch",
    );
    // etcd 3.4 first confirms the creation, then cancels with the compact revision.
    let mut r = next(&mut s).await;
    if r.created() && !r.canceled() {
        r = next(&mut s).await;
    }
    assert!(
        r.canceled(),
        "watch from a compacted revision is canceled: {r:?}"
    );
    assert_eq!(r.compact_revision(), 3);
    assert_eq!(
        r.header().map_or(0, |h| h.revision()),
        0,
        "a compaction cancel carries no revision"
    );
    // From exactly the compact revision: allowed.
    let mut s = ok(
        c.watch("k", Some(WatchOptions::new().with_start_revision(3)))
            .await,
        "watch",
    );
    assert!(next(&mut s).await.created());
    let ev = events(&mut s, 2).await;
    assert_eq!(ev.iter().map(|e| e.3).collect::<Vec<_>>(), [3, 4]);
}

// --- Lease -----------------------------------------------------------------------------------

async fn lease_grant_and_revoke(kind: ServerKind) {
    let (_server, mut c) = start(kind).await;
    let g = ok(c.lease_grant(60, None).await, "grant");
    assert!(g.id() > 0, "the server picks a positive id");
    assert_eq!(
        (g.ttl(), g.header().unwrap().revision()),
        (60, 1),
        "a grant keeps the revision"
    );
    let g2 = ok(
        c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(4242)))
            .await,
        "grant with id",
    );
    assert_eq!(g2.id(), 4242);
    assert_status(
        c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(4242)))
            .await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );
    assert_eq!(
        ok(c.lease_grant(1, None).await, "grant 1").ttl(),
        2,
        "TTL below the minimum is raised"
    );
    assert_eq!(
        ok(c.lease_grant(9_000_000_000, None).await, "max ttl").ttl(),
        9_000_000_000
    );
    assert_status(
        c.lease_grant(9_000_000_001, None).await,
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    );

    ok(
        c.put("l/1", "a", Some(PutOptions::new().with_lease(g.id())))
            .await,
        "put",
    ); // 2
    ok(
        c.put("l/2", "b", Some(PutOptions::new().with_lease(g.id())))
            .await,
        "put",
    ); // 3
    // From revision 4 on: in a cluster the watch may land on a member still applying the
    // puts, and a watch without a start revision begins at that member's revision.
    let mut s = ok(
        c.watch(
            "l/",
            Some(WatchOptions::new().with_prefix().with_start_revision(4)),
        )
        .await,
        "watch",
    );
    assert!(next(&mut s).await.created());
    let r = ok(c.lease_revoke(g.id()).await, "revoke");
    assert_eq!(
        r.header().unwrap().revision(),
        4,
        "revoke deletes the keys in one revision"
    );
    let ev = events(&mut s, 2).await;
    assert!(
        ev.iter().all(|e| e.0 == EventType::Delete && e.3 == 4),
        "one DELETE per key at one revision: {ev:?}"
    );
    assert_eq!(
        ok(
            c.get("l/", Some(GetOptions::new().with_prefix())).await,
            "get"
        )
        .count(),
        0
    );
    assert_status(
        c.lease_revoke(g.id()).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    assert_status(
        c.lease_revoke(777).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    let r = ok(c.lease_revoke(4242).await, "revoke without keys");
    assert_eq!(
        r.header().unwrap().revision(),
        4,
        "revoking a lease without keys keeps the revision"
    );
}

async fn lease_keep_alive(kind: ServerKind) {
    let (_server, mut c) = start(kind).await;
    let id = ok(c.lease_grant(30, None).await, "grant").id();
    let (mut keeper, mut stream) = ok(c.lease_keep_alive(id).await, "keep_alive");
    assert_eq!(keeper.id(), id);
    for _ in 0..3 {
        ok(keeper.keep_alive().await, "send keep-alive");
        let r = tokio::time::timeout(RPC_TIMEOUT, stream.message())
            .await
            .expect("keep-alive answer in time");
        let r = ok(r, "keep-alive stream").expect("keep-alive response");
        assert_eq!(
            (r.id(), r.ttl()),
            (id, 30),
            "a keep-alive answers the full granted TTL"
        );
    }
    ok(c.lease_revoke(id).await, "revoke");
    ok(keeper.keep_alive().await, "send keep-alive after revoke");
    let r = tokio::time::timeout(RPC_TIMEOUT, stream.message())
        .await
        .expect("answer in time");
    let r = ok(r, "keep-alive stream").expect("keep-alive response");
    assert_eq!(
        r.ttl(),
        0,
        "an unknown lease gets TTL 0 on the stream, not an error"
    );
    // The crate turns that TTL 0 into its own error when opening a keeper.
    match c.lease_keep_alive(id).await {
        Err(etcd_client::Error::LeaseKeepAliveError(_)) => {}
        other => panic!("expected the crate's lease-not-found error, got {other:?}"),
    }
    // An expired lease: TTL 2 (the minimum), keys gone after expiry.
    let short = ok(c.lease_grant(1, None).await, "grant").id();
    ok(
        c.put("short", "v", Some(PutOptions::new().with_lease(short)))
            .await,
        "put",
    ); // 2
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let r = ok(c.get("short", None).await, "get");
    assert_eq!(
        (r.count(), r.header().unwrap().revision()),
        (0, 3),
        "expiry deletes the keys in one revision"
    );
    let t = ok(c.lease_time_to_live(short, None).await, "ttl of expired");
    assert_eq!(t.ttl(), -1);
}

async fn lease_time_to_live_and_leases(kind: ServerKind) {
    let (_server, mut c) = start(kind).await;
    let long = ok(c.lease_grant(300, None).await, "grant").id();
    let short = ok(c.lease_grant(100, None).await, "grant").id();
    ok(
        c.put("k1", "v", Some(PutOptions::new().with_lease(short)))
            .await,
        "put",
    );
    ok(
        c.put("k2", "v", Some(PutOptions::new().with_lease(short)))
            .await,
        "put",
    );
    let t = ok(
        c.lease_time_to_live(short, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await,
        "ttl",
    );
    assert_eq!((t.id(), t.granted_ttl()), (short, 100));
    assert!(t.ttl() > 90 && t.ttl() <= 100, "remaining TTL {}", t.ttl());
    let mut ks: Vec<&[u8]> = t.keys().iter().map(Vec::as_slice).collect();
    ks.sort_unstable(); // etcd lists them in Go map order
    assert_eq!(ks, [&b"k1"[..], b"k2"]);
    let t = ok(c.lease_time_to_live(short, None).await, "ttl without keys");
    assert!(t.keys().is_empty(), "keys only when asked");
    let t = ok(
        c.lease_time_to_live(123_456, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await,
        "unknown",
    );
    assert_eq!(
        (t.ttl(), t.granted_ttl(), t.keys().len()),
        (-1, 0, 0),
        "unknown lease: TTL -1, no error"
    );
    let l = ok(c.leases().await, "leases");
    let mut ids: Vec<i64> = l.leases().iter().map(|s| s.id()).collect();
    if MEMBERS.try_with(|n| *n).unwrap_or(1) > 1 {
        // A member that did not grant them lists them in its own order.
        ids.sort_unstable();
        let mut want = [short, long];
        want.sort_unstable();
        assert_eq!(ids, want);
    } else {
        assert_eq!(ids, [short, long], "etcd 3.4 lists leases by expiry");
    }
}

// --- Maintenance and Cluster -----------------------------------------------------------------

async fn maintenance_rpcs(kind: ServerKind) {
    let (_server, mut c) = start(kind).await;
    ok(c.put("m", "1", None).await, "put"); // 2
    let s = ok(c.status().await, "status");
    let header = s.header().expect("status header");
    assert!(
        semver::Version::parse(s.version()).is_ok(),
        "version {:?} must be a semver (etcdctl parses it)",
        s.version()
    );
    if MEMBERS.try_with(|n| *n).unwrap_or(1) <= 1 {
        assert_eq!(
            s.leader(),
            header.member_id(),
            "a single member leads itself"
        );
    } else {
        let l = ok(c.member_list().await, "member_list");
        assert!(
            l.members().iter().any(|m| m.id() == s.leader()),
            "the leader {:x} is a member: {:?}",
            s.leader(),
            l.members()
        );
    }
    assert_ne!(header.member_id(), 0);
    assert_ne!(header.cluster_id(), 0);
    // Status and HashKV answer from the member asked, which in a cluster may still be
    // applying the put; one member has it.
    let cluster = MEMBERS.try_with(|n| *n).unwrap_or(1) > 1;
    let at_most_2 = |rev: i64, what: &str| {
        if cluster {
            assert!((1..=2).contains(&rev), "{what}: {rev}");
        } else {
            assert_eq!(rev, 2, "{what}");
        }
    };
    at_most_2(header.revision(), "status revision");

    let h = ok(c.hash_kv(0).await, "hash_kv");
    assert_eq!(
        h.compact_version(),
        -1,
        "compact_revision is -1 before any compaction"
    );
    at_most_2(h.header().unwrap().revision(), "hash_kv revision");
    if !cluster {
        let again = ok(c.hash_kv(0).await, "hash_kv").hash();
        assert_eq!(h.hash(), again, "the hash is stable while nothing changes");
    }
    ok(c.compact(2, None).await, "compact");
    // In a cluster the HashKV may reach a member still applying the compaction (the client
    // spreads calls over the endpoints; etcd's followers lag the same way): it sees it soon.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v = ok(c.hash_kv(0).await, "hash_kv").compact_version();
        if v == 2 || MEMBERS.try_with(|n| *n).unwrap_or(1) <= 1 {
            assert_eq!(v, 2);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "compaction never seen: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let a = ok(
        c.alarm(AlarmAction::Get, AlarmType::None, None).await,
        "alarm list",
    );
    assert!(a.alarms().is_empty());
    let d = ok(c.defragment().await, "defragment");
    assert!(
        d.header().is_none(),
        "etcd's Defragment answer has no header"
    );

    let mut snap = ok(c.snapshot().await, "snapshot");
    let mut total = 0usize;
    let mut last_remaining = None;
    for _ in 0..100_000 {
        let msg = tokio::time::timeout(RPC_TIMEOUT, snap.message())
            .await
            .expect("snapshot chunk in time");
        match ok(msg, "snapshot stream") {
            Some(chunk) => {
                total += chunk.blob().len();
                last_remaining = Some(chunk.remaining_bytes());
            }
            None => break,
        }
    }
    assert!(total > 0, "the snapshot stream is not empty");
    assert_eq!(
        last_remaining,
        Some(0),
        "the last chunk says 0 bytes remain"
    );
    ok(c.put("m", "2", None).await, "still serving"); // 3
}

async fn cluster_member_list_and_add(kind: ServerKind) {
    let (running, mut c) = start(kind).await;
    let l = ok(c.member_list().await, "member_list");
    let header = l.header().expect("header");
    let n = running.servers.len();
    assert_eq!(l.members().len(), n, "{:?}", l.members());
    assert!(l.members().iter().any(|m| m.id() == header.member_id()));
    for server in &running.servers {
        let m = l
            .members()
            .iter()
            .find(|m| m.name() == server.name())
            .unwrap_or_else(|| panic!("{} not listed: {:?}", server.name(), l.members()));
        assert_eq!(m.client_urls(), [server.endpoint()]);
        assert!(!m.is_learner());
    }
    if n == 1 {
        assert_eq!(l.members()[0].id(), header.member_id());
    }
    // Adding a member as a learner (so the voters keep quorum) lists it, unstarted, and it
    // can be removed again, as etcd's `MemberAdd` / `MemberRemove`.
    let peer = format!("http://127.0.0.1:{}", mast_conformance::free_port());
    // Until every voter has answered the leader for 5 s (etcd's HealthInterval), an add is
    // refused with "unhealthy cluster"; ask again until then.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let r = loop {
        match c
            .member_add(
                [peer.as_str()],
                Some(MemberAddOptions::new().with_is_learner()),
            )
            .await
        {
            Ok(r) => break r,
            Err(etcd_client::Error::GRpcStatus(s))
                if s.code() == Code::Unavailable
                    && s.message() == "etcdserver: unhealthy cluster"
                    && n > 1
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("member_add: {e}"),
        }
    };
    let added = r.member().expect("added member");
    assert_eq!(added.peer_urls(), [peer.as_str()]);
    assert!(added.is_learner());
    // MemberList answers from the member asked, which in a cluster may still be applying the
    // change (etcd's followers do too): it shows it soon.
    async fn listed(c: &mut etcd_client::Client, want: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = ok(c.member_list().await, "member_list").members().len();
            if got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "member list has {got} members, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    listed(&mut c, n + 1).await;
    ok(c.member_remove(added.id()).await, "member_remove");
    listed(&mut c, n).await;
}

// --- Errors ----------------------------------------------------------------------------------

async fn errors_invalid_argument(kind: ServerKind) {
    let (_server, mut c) = start(kind).await;
    const NO_KEY: &str = "etcdserver: key is not provided";
    assert_status(c.put("", "v", None).await, Code::InvalidArgument, NO_KEY);
    assert_status(c.get("", None).await, Code::InvalidArgument, NO_KEY);
    assert_status(c.delete("", None).await, Code::InvalidArgument, NO_KEY);
    assert_status(
        c.txn(Txn::new().and_then([TxnOp::put("", "v", None)]))
            .await,
        Code::InvalidArgument,
        NO_KEY,
    );

    let ops = |n: usize| {
        (0..n)
            .map(|i| TxnOp::put(format!("op/{i}"), "v", None))
            .collect::<Vec<_>>()
    };
    let r = ok(c.txn(Txn::new().and_then(ops(128))).await, "128 ops");
    assert_eq!(
        r.header().unwrap().revision(),
        2,
        "128 ops: allowed, one revision"
    );
    assert_status(
        c.txn(Txn::new().and_then(ops(129))).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    assert_status(
        c.txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]))
            .await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    assert_status(
        c.txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::delete("d", None)]))
            .await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    // The same key in both branches is fine: only one runs.
    ok(
        c.txn(
            Txn::new()
                .and_then([TxnOp::put("d", "1", None)])
                .or_else([TxnOp::put("d", "2", None)]),
        )
        .await,
        "same key in both branches",
    );
    // Over 1.5 MiB: refused by the server (under the client's 2 MiB limit).
    assert_status(
        c.put("big", vec![b'x'; 1_677_722], None).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    ok(
        c.put("big", vec![b'x'; 1_363_149], None).await,
        "1.3 MiB fits",
    );
}

async fn errors_out_of_range_and_not_found(kind: ServerKind) {
    let (_server, mut c) = start(kind).await;
    ok(c.put("k", "1", None).await, "put"); // 2
    ok(c.put("k", "2", None).await, "put"); // 3
    assert_status(
        c.get("k", Some(GetOptions::new().with_revision(4))).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    ok(
        c.get("k", Some(GetOptions::new().with_revision(3))).await,
        "current revision",
    );
    ok(c.compact(3, None).await, "compact");
    assert_status(
        c.get("k", Some(GetOptions::new().with_revision(2))).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_status(
        c.put("k", "v", Some(PutOptions::new().with_lease(0x1234)))
            .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    assert_status(
        c.lease_grant(9_000_000_001, None).await,
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    );
    assert_eq!(
        revision(&mut c).await,
        3,
        "failed requests keep the revision"
    );
}

/// `--max-txn-ops`, given to both servers: a txn with more compares, or more ops in a branch,
/// than allowed is refused with etcd's error; one at the limit goes through.
async fn max_txn_ops_flag(kind: ServerKind) {
    let options = mast_conformance::ServerOptions {
        args: vec!["--max-txn-ops=2".into()],
        ..Default::default()
    };
    let server = tokio::task::spawn_blocking(move || Server::try_start_with(kind, options))
        .await
        .expect("start task")
        .unwrap_or_else(|e| panic!("could not start {kind}: {e:#}"));
    let mut c = Client::connect(
        [server.endpoint()],
        Some(ConnectOptions::new().with_timeout(RPC_TIMEOUT)),
    )
    .await
    .expect("connect");
    let puts = |n: usize| {
        (0..n)
            .map(|i| TxnOp::put(format!("t/{i}"), "v", None))
            .collect::<Vec<_>>()
    };
    const TOO_MANY: &str = "etcdserver: too many operations in txn request";
    assert_status(
        c.txn(Txn::new().and_then(puts(3))).await,
        Code::InvalidArgument,
        TOO_MANY,
    );
    assert_status(
        c.txn(Txn::new().or_else(puts(3))).await,
        Code::InvalidArgument,
        TOO_MANY,
    );
    let r = ok(
        c.txn(Txn::new().and_then(puts(2))).await,
        "txn at the limit",
    );
    assert!(r.succeeded());
    drop(server);
}

mod max_txn_ops_flag {
    #[tokio::test]
    async fn etcd() {
        super::max_txn_ops_flag(super::ServerKind::Etcd).await
    }
    #[tokio::test]
    async fn mast() {
        super::max_txn_ops_flag(super::ServerKind::Mast).await
    }
}

/// Alarm options naming `member`.
fn for_member(member: u64) -> Option<etcd_client::AlarmOptions> {
    let mut o = etcd_client::AlarmOptions::new();
    o.with_member(member);
    Some(o)
}

/// `--quota-backend-bytes`, given to both servers (8 MiB): puts of 60 kB to one key are
/// refused once the database file reaches the quota, with etcd's error, and the member's
/// `NOSPACE` alarm is raised; reads, deletes and compaction still work; after compaction and
/// defragmentation writes stay refused until the alarm is disarmed, then succeed. An alarm
/// raised by hand (`CORRUPT`) refuses writes until it is cleared.
async fn quota_and_alarms(kind: ServerKind) {
    const NOSPACE: &str = "etcdserver: mvcc: database space exceeded";
    let options = mast_conformance::ServerOptions {
        args: vec![format!("--quota-backend-bytes={}", 8 * 1024 * 1024)],
        ..Default::default()
    };
    let server = tokio::task::spawn_blocking(move || Server::try_start_with(kind, options))
        .await
        .expect("start task")
        .unwrap_or_else(|e| panic!("could not start {kind}: {e:#}"));
    let mut c = Client::connect(
        [server.endpoint()],
        Some(ConnectOptions::new().with_timeout(RPC_TIMEOUT)),
    )
    .await
    .expect("connect");
    let member = ok(c.status().await, "status")
        .header()
        .expect("header")
        .member_id();
    let value = "v".repeat(60_000);
    let mut refused = None;
    for i in 0..400 {
        if let Err(e) = c.put("big", value.as_str(), None).await {
            refused = Some((i, e));
            break;
        }
    }
    let (accepted, e) = refused.expect("a put refused within 400 puts of 60 kB");
    assert!(accepted > 20, "only {accepted} puts before the quota");
    assert_status(Err::<(), _>(e), Code::ResourceExhausted, NOSPACE);

    let alarms = ok(
        c.alarm(AlarmAction::Get, AlarmType::None, None).await,
        "alarm list",
    );
    let raised: Vec<_> = alarms
        .alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm()))
        .collect();
    assert_eq!(raised, vec![(member, AlarmType::Nospace)]);
    let status = ok(c.status().await, "status");
    assert!(
        status
            .errors()
            .contains(&format!("memberID:{member} alarm:NOSPACE ")),
        "status errors: {:?}",
        status.errors()
    );
    // What does not grow the store still works; what does is refused.
    let got = ok(c.get("big", None).await, "get");
    assert_eq!(got.kvs()[0].value().len(), value.len());
    assert_status(
        c.lease_grant(60, None).await,
        Code::ResourceExhausted,
        NOSPACE,
    );
    assert_status(
        c.txn(Txn::new().and_then([TxnOp::put("t", "1", None)]))
            .await,
        Code::ResourceExhausted,
        NOSPACE,
    );
    ok(
        c.txn(Txn::new().and_then([TxnOp::get("big", None)])).await,
        "read-only txn",
    );
    ok(c.delete("nothing", None).await, "delete");
    let rev = ok(c.get("big", None).await, "get")
        .header()
        .expect("header")
        .revision();
    ok(c.compact(rev, None).await, "compact");
    ok(c.defragment().await, "defragment");
    assert_status(
        c.put("small", "x", None).await,
        Code::ResourceExhausted,
        NOSPACE,
    );

    let disarmed = ok(
        c.alarm(
            AlarmAction::Deactivate,
            AlarmType::Nospace,
            for_member(member),
        )
        .await,
        "disarm",
    );
    assert_eq!(disarmed.alarms().len(), 1, "disarm answers the alarm");
    ok(c.put("small", "x", None).await, "put after disarm");
    assert!(
        ok(
            c.alarm(AlarmAction::Get, AlarmType::None, None).await,
            "alarm list"
        )
        .alarms()
        .is_empty()
    );

    // An alarm raised by hand.
    let raised = ok(
        c.alarm(
            AlarmAction::Activate,
            AlarmType::Corrupt,
            for_member(member),
        )
        .await,
        "activate",
    );
    assert_eq!(raised.alarms().len(), 1);
    assert_status(
        c.put("small", "y", None).await,
        Code::DataLoss,
        "etcdserver: corrupt cluster",
    );
    ok(
        c.alarm(
            AlarmAction::Deactivate,
            AlarmType::Corrupt,
            for_member(member),
        )
        .await,
        "deactivate",
    );
    ok(c.put("small", "y", None).await, "put after deactivate");
    drop(server);
}

mod quota_and_alarms {
    #[tokio::test]
    async fn etcd() {
        super::quota_and_alarms(super::ServerKind::Etcd).await
    }
    #[tokio::test]
    async fn mast() {
        super::quota_and_alarms(super::ServerKind::Mast).await
    }
}

// --- Lock and Election ---------------------------------------------------------------------

/// Waits (bounded: 5 s) until `key` exists: a waiter has put its key and is queued.
async fn wait_key(c: &mut Client, key: &str) {
    for _ in 0..500 {
        if !ok(c.get(key, None).await, "get").kvs().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{key} never appeared");
}

/// The result of a spawned call, within 10 s.
async fn joined<T>(task: tokio::task::JoinHandle<T>, what: &str) -> T {
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within 10 s"))
        .expect("task")
}

async fn lock_waits_for_the_holder(kind: ServerKind) {
    let (_server, mut c) = start(kind).await;
    let a = ok(c.lease_grant(60, None).await, "grant a").id();
    let b = ok(c.lease_grant(60, None).await, "grant b").id();
    let d = ok(c.lease_grant(60, None).await, "grant d").id();
    let la = ok(
        c.lock("L", Some(LockOptions::new().with_lease(a))).await,
        "lock a",
    );
    assert_eq!(
        la.key(),
        format!("L/{a:x}").as_bytes(),
        "the key is name/lease"
    );
    // The lease's key is a plain key, attached to the lease.
    let held = ok(c.get(la.key(), None).await, "get lock key");
    assert_eq!(held.kvs()[0].lease(), a);

    // b queues behind a: its key is there, its call does not return until a unlocks.
    let mut cb = c.clone();
    let waiting_b =
        tokio::spawn(async move { cb.lock("L", Some(LockOptions::new().with_lease(b))).await });
    wait_key(&mut c, &format!("L/{b:x}")).await;
    assert!(!waiting_b.is_finished(), "b got the lock a holds");
    ok(c.unlock(la.key()).await, "unlock a");
    let lb = ok(joined(waiting_b, "lock b").await, "lock b");
    assert_eq!(lb.key(), format!("L/{b:x}").as_bytes());

    // d queues behind b; b's lease is revoked (its owner died): d gets the lock.
    let mut cd = c.clone();
    let waiting_d =
        tokio::spawn(async move { cd.lock("L", Some(LockOptions::new().with_lease(d))).await });
    wait_key(&mut c, &format!("L/{d:x}")).await;
    assert!(!waiting_d.is_finished(), "d got the lock b holds");
    ok(c.lease_revoke(b).await, "revoke b");
    let ld = ok(joined(waiting_d, "lock d").await, "lock d");
    assert_eq!(ld.key(), format!("L/{d:x}").as_bytes());
    // Locking again with the holder's lease returns at once with the same key.
    let again = ok(
        c.lock("L", Some(LockOptions::new().with_lease(d))).await,
        "lock d again",
    );
    assert_eq!(again.key(), ld.key());
    ok(c.unlock(ld.key()).await, "unlock d");
    assert!(
        ok(
            c.get("L/", Some(GetOptions::new().with_prefix())).await,
            "get"
        )
        .kvs()
        .is_empty()
    );
}

/// The next leader value an observer sees, within 5 s.
async fn observed(stream: &mut ObserveStream) -> String {
    match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
        Ok(Ok(Some(r))) => String::from_utf8_lossy(r.kv().expect("leader kv").value()).into_owned(),
        Ok(Ok(None)) => panic!("observe stream ended"),
        Ok(Err(e)) => panic!("observe stream error: {e}"),
        Err(_) => panic!("no leader change observed within 5 s"),
    }
}

async fn election_campaign_proclaim_observe_resign(kind: ServerKind) {
    let (_server, mut c) = start(kind).await;
    let a = ok(c.lease_grant(60, None).await, "grant a").id();
    let b = ok(c.lease_grant(60, None).await, "grant b").id();
    assert_status(c.leader("E").await, Code::Unknown, "election: no leader");

    let ca = ok(c.campaign("E", "va", a).await, "campaign a");
    let leader_a = ca.leader().expect("leader key").clone();
    assert_eq!(
        (leader_a.name(), leader_a.key(), leader_a.lease()),
        ("E".as_bytes(), format!("E/{a:x}").as_bytes(), a)
    );
    let l = ok(c.leader("E").await, "leader");
    let kv = l.kv().expect("leader kv");
    assert_eq!((kv.key(), kv.value()), (leader_a.key(), "va".as_bytes()));
    assert_eq!(kv.create_revision(), leader_a.rev());

    let mut obs = ok(c.observe("E").await, "observe");
    assert_eq!(observed(&mut obs).await, "va");
    ok(
        c.proclaim(
            "va2",
            Some(ProclaimOptions::new().with_leader(leader_a.clone())),
        )
        .await,
        "proclaim",
    );
    assert_eq!(observed(&mut obs).await, "va2");

    // b campaigns and waits; a resigns; b leads.
    let mut cb = c.clone();
    let waiting_b = tokio::spawn(async move { cb.campaign("E", "vb", b).await });
    wait_key(&mut c, &format!("E/{b:x}")).await;
    assert!(!waiting_b.is_finished(), "b leads while a does");
    ok(
        c.resign(Some(ResignOptions::new().with_leader(leader_a.clone())))
            .await,
        "resign a",
    );
    let cb = ok(joined(waiting_b, "campaign b").await, "campaign b");
    assert_eq!(
        cb.leader().expect("leader key").key(),
        format!("E/{b:x}").as_bytes()
    );
    assert_eq!(observed(&mut obs).await, "vb");
    let l = ok(c.leader("E").await, "leader");
    assert_eq!(l.kv().expect("leader kv").value(), "vb".as_bytes());
    // a is no leader any more.
    assert_status(
        c.proclaim("x", Some(ProclaimOptions::new().with_leader(leader_a)))
            .await,
        Code::Unknown,
        "election: not leader",
    );
}
