//! The permission matrix: every RPC, called by a user who lacks the permission it needs, is
//! refused with etcd's code and message and changes nothing; a user with `readwrite` on
//! `/services/app/` can register (a key with a lease) and watch there, and nowhere else.
//!
//! Each check is one `async fn(ServerKind)` run against a real etcd 3.4 and against Mast (tests
//! named `<check>::etcd` and `<check>::mast`), so every expectation is proven on etcd first.
//! Where Mast deliberately differs from etcd 3.4.23, the check says so and asserts each
//! server's own behaviour:
//! - Compact: etcd checks nothing (any authenticated user, even one without roles, may compact);
//!   Mast requires the root role.
//! - LeaseTimeToLive with keys of a lease holding keys the caller may not read: etcd 3.4.23
//!   lists them (CVE-2023-32082, fixed in 3.4.26 and 3.5.9); Mast refuses, as the fixed
//!   versions do.
//! - A Txn nested in a Txn: etcd 3.4.23 does not check the nested ops' permissions, so a user
//!   can write outside its range that way; Mast checks them (as etcd 3.5 does).
//!
//! The last test, [`gateway_honours_permissions`], sends the same JSON gateway requests
//! (`/v3/...`, token in the `Authorization` header, through `curl`) to both servers and compares
//! status codes and bodies.
//!
//! The Mast variants need the binary: `cargo build -p mast` first.

use std::process::Command;
use std::time::Duration;

use etcd_client::{
    AlarmAction, AlarmType, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType,
    GetOptions, LeaseTimeToLiveOptions, Permission, PutOptions, Txn, TxnOp, WatchOptions,
    WatchResponse, WatchStream,
};
use mast_conformance::{Server, ServerKind, ServerOptions};
use serde_json::{Value, json};
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
        }
    )*};
}

both!(
    refusals_change_nothing,
    app_user_registers_and_watches_its_prefix,
    tokens_missing_and_expired,
    where_mast_is_stricter,
);

/// Every single RPC is bounded by this (a hung server fails the test instead of hanging it).
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

const ROOT_PASSWORD: &str = "guang";
const APP_PASSWORD: &str = "apppw";
const NOBODY_PASSWORD: &str = "nobodypw";
/// The prefix `app` may read and write.
const APP_PREFIX: &str = "/services/app/";

const DENIED: &str = "etcdserver: permission denied";
/// A refused watch's `cancel_reason`: etcd 3.4 puts the whole gRPC status text there (and
/// etcdctl prints it as `watch was canceled (rpc error: ...)`).
const WATCH_DENIED: &str =
    "rpc error: code = PermissionDenied desc = etcdserver: permission denied";

/// A server with auth on: users `root`, `app` (role `app`: readwrite on [`APP_PREFIX`]) and
/// `nobody` (no roles), and a client for each.
struct Fixture {
    server: Server,
    root: Client,
    app: Client,
    nobody: Client,
    /// A lease of root's holding `/other/leased`, a key `app` may not touch.
    foreign_lease: i64,
}

/// Starts a server of `kind` with `options`, without blocking the runtime.
async fn start_server(kind: ServerKind, options: ServerOptions) -> Server {
    tokio::task::spawn_blocking(move || Server::try_start_with(kind, options))
        .await
        .expect("start task")
        .unwrap_or_else(|e| panic!("could not start {kind}: {e:#}"))
}

/// Connects to `server`, as `user` (name, password) if given.
async fn connect(server: &Server, user: Option<(&str, &str)>) -> Client {
    let mut options = ConnectOptions::new()
        .with_timeout(RPC_TIMEOUT)
        .with_connect_timeout(Duration::from_secs(5));
    if let Some((name, password)) = user {
        options = options.with_user(name, password);
    }
    Client::connect([server.endpoint()], Some(options))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "connecting to {} at {} as {user:?}: {e}",
                server.kind(),
                server.endpoint()
            )
        })
}

/// Starts a server, creates the users, roles and data of [`Fixture`] with auth off (the same
/// RPCs on both servers), enables auth and connects one client per user.
///
/// Revisions: `/services/app/seed` 2, `/other/key` 3, `/other/leased` 4.
async fn fixture(kind: ServerKind, options: ServerOptions) -> Fixture {
    let server = start_server(kind, options).await;
    let mut admin = connect(&server, None).await;
    ok(
        admin.user_add("root", ROOT_PASSWORD, None).await,
        "add root",
    );
    ok(admin.role_add("root").await, "add role root");
    ok(admin.user_grant_role("root", "root").await, "grant root");
    ok(admin.user_add("app", APP_PASSWORD, None).await, "add app");
    ok(admin.role_add("app").await, "add role app");
    ok(
        admin
            .role_grant_permission("app", Permission::read_write(APP_PREFIX).with_prefix())
            .await,
        "grant app",
    );
    ok(admin.user_grant_role("app", "app").await, "grant app");
    ok(
        admin.user_add("nobody", NOBODY_PASSWORD, None).await,
        "add nobody",
    );
    ok(admin.put("/services/app/seed", "s", None).await, "put"); // 2
    ok(admin.put("/other/key", "o", None).await, "put"); // 3
    let foreign_lease = ok(admin.lease_grant(600, None).await, "grant").id();
    ok(
        admin
            .put(
                "/other/leased",
                "l",
                Some(PutOptions::new().with_lease(foreign_lease)),
            )
            .await,
        "put with lease",
    ); // 4
    ok(admin.auth_enable().await, "auth enable");
    let root = connect(&server, Some(("root", ROOT_PASSWORD))).await;
    let app = connect(&server, Some(("app", APP_PASSWORD))).await;
    let nobody = connect(&server, Some(("nobody", NOBODY_PASSWORD))).await;
    Fixture {
        server,
        root,
        app,
        nobody,
        foreign_lease,
    }
}

/// Unwraps `r`, or panics naming `what`.
#[track_caller]
fn ok<T>(r: Result<T, etcd_client::Error>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: unexpected error: {e}"))
}

/// Asserts that `r` failed with gRPC status `code` and exactly `message`.
#[track_caller]
fn assert_status<T: std::fmt::Debug>(
    r: Result<T, etcd_client::Error>,
    code: Code,
    message: &str,
    what: &str,
) {
    match r {
        Err(etcd_client::Error::GRpcStatus(status)) => {
            assert_eq!(
                (status.code(), status.message()),
                (code, message),
                "{what}: wrong gRPC status (expected {code:?} {message:?})"
            );
        }
        Err(other) => {
            panic!("{what}: expected gRPC status {code:?} {message:?}, got another error: {other}")
        }
        Ok(v) => panic!("{what}: expected gRPC status {code:?} {message:?}, got success: {v:?}"),
    }
}

/// Asserts `etcdserver: permission denied` (PermissionDenied).
#[track_caller]
fn assert_denied<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>, what: &str) {
    assert_status(r, Code::PermissionDenied, DENIED, what);
}

/// Asserts how etcd 3.4 refuses Defragment, Hash, HashKV and Snapshot to a user without the
/// root role: its maintenance server returns the auth store's own error, which gRPC sends as
/// code Unknown with the text `auth: permission denied` (not the usual PermissionDenied
/// `etcdserver: permission denied` of every other RPC).
#[track_caller]
fn assert_maintenance_refused<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>, what: &str) {
    assert_status(r, Code::Unknown, "auth: permission denied", what);
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

/// Asserts that a watch on `key` (with `options`) by `client` is refused the way etcd refuses
/// it: one response that is both created and canceled, watch_id -1, and `reason`.
async fn assert_watch_refused(
    client: &mut Client,
    key: &str,
    options: Option<WatchOptions>,
    reason: &str,
) {
    let mut stream = ok(client.watch(key, options).await, "watch");
    let r = next(&mut stream).await;
    assert_eq!(
        (r.created(), r.canceled(), r.watch_id(), r.cancel_reason()),
        (true, true, -1, reason),
        "watch on {key:?}: created, canceled, watch_id, cancel_reason"
    );
    assert!(r.events().is_empty(), "a refused watch sends no events");
}

/// Everything a refused request could have changed, read as root: the revision, every key,
/// users, roles and app's permissions, and the leases.
async fn state(root: &mut Client) -> Value {
    let all = ok(
        root.get("", Some(GetOptions::new().with_all_keys())).await,
        "read all",
    );
    let kvs: Vec<Value> = all
        .kvs()
        .iter()
        .map(|kv| {
            json!([
                String::from_utf8_lossy(kv.key()),
                String::from_utf8_lossy(kv.value()),
                kv.mod_revision(),
                kv.lease()
            ])
        })
        .collect();
    let users = ok(root.user_list().await, "user list").users().to_vec();
    let roles = ok(root.role_list().await, "role list").roles().to_vec();
    let perms: Vec<Value> = ok(root.role_get("app").await, "role get")
        .permissions()
        .iter()
        .map(|p| {
            json!([
                String::from_utf8_lossy(p.key()),
                String::from_utf8_lossy(p.range_end())
            ])
        })
        .collect();
    let mut leases: Vec<i64> = ok(root.leases().await, "lease list")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    leases.sort_unstable();
    json!({
        "revision": all.header().expect("header").revision(),
        "kvs": kvs,
        "users": users,
        "roles": roles,
        "app_perms": perms,
        "leases": leases,
    })
}

/// Every RPC a user without the needed permission may not call.
async fn refusals_change_nothing(kind: ServerKind) {
    let mut f = fixture(kind, ServerOptions::default()).await;
    let before = state(&mut f.root).await;
    assert_eq!(before["revision"], 4, "{before}");
    let foreign = f.foreign_lease;

    for (who, c) in [("app", &mut f.app), ("nobody", &mut f.nobody)] {
        let w = |what: &str| format!("{who}: {what}");
        // KV.
        assert_denied(c.get("/other/key", None).await, &w("get outside"));
        assert_denied(
            c.get("", Some(GetOptions::new().with_all_keys())).await,
            &w("get every key"),
        );
        assert_denied(
            c.get("/services/", Some(GetOptions::new().with_prefix()))
                .await,
            &w("get a range wider than the prefix"),
        );
        assert_denied(
            c.get("/other/key", Some(GetOptions::new().with_count_only()))
                .await,
            &w("count only"),
        );
        assert_denied(
            c.get("/other/key", Some(GetOptions::new().with_revision(3)))
                .await,
            &w("historical get"),
        );
        assert_denied(c.put("/other/key", "x", None).await, &w("put outside"));
        assert_denied(c.put("/other/new", "x", None).await, &w("put a new key"));
        assert_denied(c.delete("/other/key", None).await, &w("delete outside"));
        assert_denied(
            c.delete("/other/", Some(DeleteOptions::new().with_prefix()))
                .await,
            &w("delete a prefix outside"),
        );
        // Txn: compares and both branches are checked, nested txns too.
        let inside_put = || TxnOp::put("/services/app/t", "t", None);
        let txns = [
            (
                "a compare outside",
                Txn::new()
                    .when([Compare::value("/other/key", CompareOp::Equal, "o")])
                    .and_then([inside_put()]),
            ),
            (
                "a put outside",
                Txn::new().and_then([inside_put(), TxnOp::put("/other/key", "x", None)]),
            ),
            (
                "a get outside in the failure branch",
                Txn::new()
                    .when([Compare::version("/services/app/seed", CompareOp::Equal, 1)])
                    .and_then([inside_put()])
                    .or_else([TxnOp::get("/other/key", None)]),
            ),
            (
                "a delete outside",
                Txn::new().and_then([TxnOp::delete("/other/key", None)]),
            ),
        ];
        for (what, txn) in txns {
            assert_denied(c.txn(txn).await, &w(&format!("txn: {what}")));
        }
        // Watch.
        assert_watch_refused(c, "/other/key", None, WATCH_DENIED).await;
        assert_watch_refused(
            c,
            "/services/",
            Some(WatchOptions::new().with_prefix()),
            WATCH_DENIED,
        )
        .await;
        // Lease: revoking deletes the keys, so it needs write on each.
        assert_denied(
            c.lease_revoke(foreign).await,
            &w("revoke a lease holding a foreign key"),
        );
        assert_denied(
            c.put(
                "/other/key2",
                "x",
                Some(PutOptions::new().with_lease(foreign)),
            )
            .await,
            &w("put outside with a lease"),
        );
        // Maintenance that reads or rewrites the whole store needs the root role.
        assert_maintenance_refused(c.defragment().await, &w("defragment"));
        assert_maintenance_refused(c.hash_kv(0).await, &w("hash_kv"));
        assert_maintenance_refused(c.hash().await, &w("hash"));
        match c.snapshot().await {
            Err(e) => assert_maintenance_refused(Err::<(), _>(e), &w("snapshot")),
            Ok(mut stream) => {
                let first = tokio::time::timeout(RPC_TIMEOUT, stream.message())
                    .await
                    .expect("snapshot answer in time");
                assert_maintenance_refused(first, &w("snapshot stream"));
            }
        }
        // Auth management needs the root role.
        assert_denied(c.user_list().await, &w("user list"));
        assert_denied(c.user_get("root").await, &w("user get root"));
        assert_denied(c.user_add("eve", "pw", None).await, &w("user add"));
        assert_denied(c.user_delete("app").await, &w("user delete"));
        assert_denied(
            c.user_change_password("root", "stolen").await,
            &w("change root's password"),
        );
        assert_denied(
            c.user_change_password(who, "mine").await,
            &w("change one's own password"),
        );
        assert_denied(c.user_grant_role(who, "root").await, &w("grant root"));
        assert_denied(c.user_revoke_role("app", "app").await, &w("revoke role"));
        assert_denied(c.role_list().await, &w("role list"));
        assert_denied(c.role_get("root").await, &w("role get root"));
        assert_denied(c.role_add("mine").await, &w("role add"));
        assert_denied(c.role_delete("app").await, &w("role delete"));
        assert_denied(
            c.role_grant_permission("app", Permission::read_write("/").with_prefix())
                .await,
            &w("grant a permission"),
        );
        assert_denied(
            c.role_revoke_permission("app", APP_PREFIX, None).await,
            &w("revoke a permission"),
        );
        assert_denied(c.auth_disable().await, &w("auth disable"));
        assert_denied(c.auth_enable().await, &w("auth enable"));
        // What any authenticated user may do.
        ok(c.status().await, &w("status"));
        ok(c.user_get(who).await, &w("user get of oneself"));
        let alarms = ok(
            c.alarm(AlarmAction::Get, AlarmType::None, None).await,
            &w("alarm list"),
        );
        assert!(alarms.alarms().is_empty());
    }
    // app may read its own role, nobody may not.
    ok(f.app.role_get("app").await, "app: role get of its own role");
    assert_denied(f.nobody.role_get("app").await, "nobody: role get app");
    // nobody has no permission even inside app's prefix.
    assert_denied(
        f.nobody.get("/services/app/seed", None).await,
        "nobody: get inside app's prefix",
    );
    assert_denied(
        f.nobody.put("/services/app/x", "x", None).await,
        "nobody: put inside app's prefix",
    );
    assert_watch_refused(
        &mut f.nobody,
        APP_PREFIX,
        Some(WatchOptions::new().with_prefix()),
        WATCH_DENIED,
    )
    .await;

    let after = state(&mut f.root).await;
    assert_eq!(after, before, "refused requests changed something");
    // An auth change (a new auth revision) does not invalidate simple tokens.
    ok(f.root.role_add("unrelated").await, "root: role add");
    ok(
        f.app.get("/services/app/seed", None).await,
        "app: a token from before an auth change",
    );
    // Root still may do everything (the root role needs no key permission).
    ok(f.root.put("/other/key", "root", None).await, "root: put"); // 5
    ok(f.root.hash_kv(0).await, "root: hash_kv");
    ok(f.root.defragment().await, "root: defragment");
    drop(f.server);
}

/// The service-registry use: `app` registers an instance under its prefix with a lease, keeps
/// it alive, watches the prefix and sees its own and others' changes there, and cannot read or
/// watch anywhere else.
async fn app_user_registers_and_watches_its_prefix(kind: ServerKind) {
    let mut f = fixture(kind, ServerOptions::default()).await;
    let c = &mut f.app;
    let lease = ok(c.lease_grant(30, None).await, "app: lease grant").id();
    let mut watch = ok(
        c.watch(APP_PREFIX, Some(WatchOptions::new().with_prefix()))
            .await,
        "app: watch its prefix",
    );
    let created = next(&mut watch).await;
    assert!(
        created.created() && !created.canceled(),
        "app's watch is created: {:?}",
        created.cancel_reason()
    );
    let put = ok(
        c.put(
            "/services/app/instance-1",
            "10.0.0.1:8080",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await,
        "app: register",
    );
    assert_eq!(put.header().unwrap().revision(), 5);
    let (mut keeper, mut acks) = ok(c.lease_keep_alive(lease).await, "app: keep alive");
    ok(keeper.keep_alive().await, "app: second keep-alive");
    let ack = tokio::time::timeout(RPC_TIMEOUT, acks.message())
        .await
        .expect("keep-alive answer in time");
    assert_eq!(ok(ack, "keep-alive").expect("an answer").ttl(), 30);
    let ttl = ok(
        c.lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await,
        "app: time to live of its own lease",
    );
    assert_eq!(ttl.keys(), [b"/services/app/instance-1".to_vec()]);
    // Root writes inside and outside the prefix: app's watch sees only the former.
    ok(
        f.root.put("/other/key", "x", None).await,
        "root: put outside",
    ); // 6
    ok(
        f.root
            .put("/services/app/instance-2", "10.0.0.2:8080", None)
            .await,
        "root: put inside",
    ); // 7
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let r = next(&mut watch).await;
        assert!(!r.canceled(), "watch canceled: {}", r.cancel_reason());
        for e in r.events() {
            let kv = e.kv().expect("kv");
            seen.push((
                e.event_type(),
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.mod_revision(),
            ));
        }
    }
    assert_eq!(
        seen,
        [
            (EventType::Put, "/services/app/instance-1".to_owned(), 5),
            (EventType::Put, "/services/app/instance-2".to_owned(), 7),
        ]
    );
    let list = ok(
        c.get(APP_PREFIX, Some(GetOptions::new().with_prefix()))
            .await,
        "app: list instances",
    );
    assert_eq!(list.count(), 3);
    let txn = ok(
        c.txn(
            Txn::new()
                .when([Compare::create_revision(
                    "/services/app/leader",
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put("/services/app/leader", "instance-1", None)]),
        )
        .await,
        "app: txn inside its prefix",
    );
    assert!(txn.succeeded()); // 8
    // Revoking its lease deletes its key: allowed, and seen by its watch.
    ok(c.lease_revoke(lease).await, "app: revoke its lease"); // 9
    let mut deleted = Vec::new();
    while deleted.len() < 2 {
        let r = next(&mut watch).await;
        deleted.extend(
            r.events()
                .iter()
                .map(|e| (e.event_type(), e.kv().map(|kv| kv.mod_revision()))),
        );
    }
    assert_eq!(
        deleted,
        [(EventType::Put, Some(8)), (EventType::Delete, Some(9))],
        "the leader txn, then the lease's key deleted"
    );
    // Elsewhere: nothing.
    assert_denied(c.get("/other/key", None).await, "app: get outside");
    assert_watch_refused(
        c,
        "/other/",
        Some(WatchOptions::new().with_prefix()),
        WATCH_DENIED,
    )
    .await;
    assert_watch_refused(c, "/services/app", None, WATCH_DENIED).await;
    // A refused watch on the same stream leaves the good one running.
    watch
        .watch("/other/key", None)
        .await
        .expect("second watch on the stream");
    let refused = next(&mut watch).await;
    assert_eq!(
        (
            refused.created(),
            refused.canceled(),
            refused.watch_id(),
            refused.cancel_reason()
        ),
        (true, true, -1, WATCH_DENIED)
    );
    ok(
        f.root.put("/services/app/instance-3", "x", None).await,
        "root: put inside",
    ); // 10
    let r = next(&mut watch).await;
    assert_eq!(r.events().len(), 1, "the first watch still runs");
    assert_eq!(r.events()[0].kv().unwrap().mod_revision(), 10);
}

/// No token, and a token the server no longer knows (simple tokens expire when idle for
/// `--auth-token-ttl`).
async fn tokens_missing_and_expired(kind: ServerKind) {
    let options = ServerOptions::default().args(&["--auth-token-ttl", "2"]);
    let mut f = fixture(kind, options).await;
    let mut anonymous = connect(&f.server, None).await;
    let empty = (Code::InvalidArgument, "etcdserver: user name is empty");
    assert_status(
        anonymous.get("/services/app/seed", None).await,
        empty.0,
        empty.1,
        "get",
    );
    assert_status(
        anonymous.put("/x", "x", None).await,
        empty.0,
        empty.1,
        "put",
    );
    assert_status(anonymous.user_list().await, empty.0, empty.1, "user list");
    assert_watch_refused(
        &mut anonymous,
        "/x",
        None,
        "rpc error: code = InvalidArgument desc = etcdserver: user name is empty",
    )
    .await;
    // What etcd lets through without a token.
    ok(anonymous.status().await, "status without a token");
    let lease = ok(
        anonymous.lease_grant(60, None).await,
        "lease grant without a token",
    );
    ok(anonymous.member_list().await, "member list without a token");
    ok(
        anonymous.lease_revoke(lease.id()).await,
        "revoking a lease without keys, without a token",
    );
    assert_status(
        anonymous
            .auth_client()
            .authenticate("root".into(), "wrong".into())
            .await,
        Code::InvalidArgument,
        "etcdserver: authentication failed, invalid user ID or password",
        "wrong password",
    );

    // The fixture's token may have expired meanwhile (TTL 2 s): take a fresh one.
    ok(f.app.refresh_token().await, "authenticate");
    ok(
        f.app.get("/services/app/seed", None).await,
        "a fresh token works",
    );
    // etcd drops idle simple tokens on a 1 s tick; 4.5 s is past any rounding.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let invalid = (Code::Unauthenticated, "etcdserver: invalid auth token");
    assert_status(
        f.app.get("/services/app/seed", None).await,
        invalid.0,
        invalid.1,
        "get with an expired token",
    );
    assert_watch_refused(
        &mut f.app,
        APP_PREFIX,
        Some(WatchOptions::new().with_prefix()),
        "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token",
    )
    .await;
    // Re-authenticating is what clients do on that code.
    ok(f.app.refresh_token().await, "authenticate again");
    ok(
        f.app.get("/services/app/seed", None).await,
        "the new token works",
    );
    let mut refreshing = Client::connect(
        [f.server.endpoint()],
        Some(
            ConnectOptions::new()
                .with_user("app", APP_PASSWORD)
                .with_auto_token_refresh(true)
                .with_timeout(RPC_TIMEOUT),
        ),
    )
    .await
    .expect("connect");
    tokio::time::sleep(Duration::from_millis(4500)).await;
    ok(
        refreshing.get("/services/app/seed", None).await,
        "a client that refreshes on `invalid auth token` recovers by itself",
    );
}

/// Where Mast deliberately differs from etcd 3.4.23 (see the module doc).
async fn where_mast_is_stricter(kind: ServerKind) {
    let mut f = fixture(kind, ServerOptions::default()).await;
    let with_keys = || Some(LeaseTimeToLiveOptions::new().with_keys());
    let nested = Txn::new().and_then([
        TxnOp::put("/services/app/t", "t", None),
        TxnOp::txn(Txn::new().and_then([TxnOp::put("/other/key", "nested", None)])),
    ]);
    match kind {
        ServerKind::Etcd => {
            // etcd 3.4.23 checks the ops of a txn but not those of a txn nested in it.
            let r = ok(
                f.app.txn(nested).await,
                "etcd: a nested txn writing outside",
            );
            assert_eq!(r.header().unwrap().revision(), 5);
            let other = ok(f.root.get("/other/key", None).await, "root: get");
            assert_eq!(other.kvs()[0].value(), b"nested");
            // etcd 3.4 checks no permission for Compact.
            ok(
                f.nobody.compact(2, None).await,
                "etcd: compact by a user without roles",
            );
            let ttl = ok(
                f.app.lease_time_to_live(f.foreign_lease, with_keys()).await,
                "etcd 3.4.23 lists a foreign lease's keys",
            );
            assert_eq!(ttl.keys(), [b"/other/leased".to_vec()]);
        }
        ServerKind::Mast => {
            assert_denied(
                f.app.txn(nested).await,
                "mast: a nested txn writing outside",
            );
            assert_eq!(
                ok(f.root.get("/other/key", None).await, "root: get").kvs()[0].value(),
                b"o"
            );
            assert_denied(
                f.nobody.compact(2, None).await,
                "mast: compact without root",
            );
            assert_denied(f.app.compact(2, None).await, "mast: compact without root");
            assert_denied(
                f.app.lease_time_to_live(f.foreign_lease, with_keys()).await,
                "mast: time to live with keys the user may not read",
            );
            // Without keys there is nothing to hide.
            let ttl = ok(
                f.app.lease_time_to_live(f.foreign_lease, None).await,
                "mast: time to live without keys",
            );
            assert_eq!(ttl.granted_ttl(), 600);
            let r = ok(f.root.compact(2, None).await, "mast: compact by root");
            assert_eq!(r.header().unwrap().revision(), 4);
        }
    }
}

// --- The JSON gateway ------------------------------------------------------------------------

/// One gateway request through `curl`: POST `path` with `body` (and `Authorization: token`).
/// Returns the HTTP status and the body as JSON (`Value::String` if it is not JSON).
fn gateway(server: &Server, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(["-X", "POST", "-H", "Content-Type: application/json"])
        .args(["--data-binary", &body.to_string()]);
    if let Some(token) = token {
        cmd.args(["-H", &format!("Authorization: {token}")]);
    }
    let url = format!("{}{path}", server.endpoint());
    let out = cmd
        .arg(&url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status: u16 = status.trim().parse().unwrap_or_else(|_| {
        panic!(
            "curl {url}: no status:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    if status == 0 {
        // No HTTP answer at all: say what curl saw.
        return (
            0,
            Value::String(format!(
                "curl: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        );
    }
    let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    (status, body)
}

/// Placeholders for what differs between two servers: IDs, the Raft term, the token.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                match k.as_str() {
                    "cluster_id" | "member_id" | "raft_term" | "token" => {
                        *val = Value::from(format!("<{k}>"))
                    }
                    _ => normalize(val),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

fn b64(s: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The gateway requests and what each must answer (HTTP status); both servers must answer the
/// same status and the same normalized body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_honours_permissions() {
    let etcd = fixture(ServerKind::Etcd, ServerOptions::default()).await;
    let mast = fixture(ServerKind::Mast, ServerOptions::default()).await;
    let run = |server: &Server| -> Vec<(String, u16, Value)> {
        let mut out = Vec::new();
        let mut call = |what: &str, path: &str, token: Option<&str>, body: Value| {
            let (status, mut body) = gateway(server, path, token, &body);
            let token = body["token"].as_str().map(str::to_owned);
            normalize(&mut body);
            out.push((what.to_owned(), status, body));
            token
        };
        let auth = |name: &str, password: &str| json!({"name": name, "password": password});
        let token = call(
            "authenticate app",
            "/v3/auth/authenticate",
            None,
            auth("app", APP_PASSWORD),
        )
        .expect("a token");
        let t = Some(token.as_str());
        call(
            "wrong password",
            "/v3/auth/authenticate",
            None,
            auth("app", "nope"),
        );
        let key = |k: &str| json!({"key": b64(k)});
        call("range inside", "/v3/kv/range", t, key("/services/app/seed"));
        call("range outside", "/v3/kv/range", t, key("/other/key"));
        call(
            "range over the prefix",
            "/v3/kv/range",
            t,
            json!({"key": b64(APP_PREFIX), "range_end": b64("/services/app0")}),
        );
        call(
            "put inside",
            "/v3/kv/put",
            t,
            json!({"key": b64("/services/app/gw"), "value": b64("v")}),
        );
        call(
            "put outside",
            "/v3/kv/put",
            t,
            json!({"key": b64("/other/gw"), "value": b64("v")}),
        );
        call("delete outside", "/v3/kv/deleterange", t, key("/other/key"));
        call(
            "txn with an op outside",
            "/v3/kv/txn",
            t,
            json!({"success": [{"request_put": {"key": b64("/other/key"), "value": b64("x")}}]}),
        );
        call(
            "range without a token",
            "/v3/kv/range",
            None,
            key("/services/app/seed"),
        );
        call(
            "range with a garbage token",
            "/v3/kv/range",
            // Not `<random>.<number>`: etcd 3.4 reads the number of a simple token as a Raft
            // index and waits (10 s) for it to be applied before it finds the token unknown.
            Some("garbage"),
            key("/services/app/seed"),
        );
        call("user list as app", "/v3/auth/user/list", t, json!({}));
        call("auth disable as app", "/v3/auth/disable", t, json!({}));
        let root = call(
            "authenticate root",
            "/v3/auth/authenticate",
            None,
            auth("root", ROOT_PASSWORD),
        )
        .expect("a token");
        call(
            "user list as root",
            "/v3/auth/user/list",
            Some(&root),
            json!({}),
        );
        call(
            "range as root",
            "/v3/kv/range",
            Some(&root),
            key("/other/key"),
        );
        out
    };
    let etcd_out = tokio::task::block_in_place(|| run(&etcd.server));
    let mast_out = tokio::task::block_in_place(|| run(&mast.server));
    // What etcd answers (so the comparison below checks something meaningful).
    let statuses: Vec<(&str, u16)> = etcd_out.iter().map(|(w, s, _)| (w.as_str(), *s)).collect();
    assert_eq!(
        statuses,
        [
            ("authenticate app", 200),
            ("wrong password", 400),
            ("range inside", 200),
            ("range outside", 403),
            ("range over the prefix", 200),
            ("put inside", 200),
            ("put outside", 403),
            ("delete outside", 403),
            ("txn with an op outside", 403),
            ("range without a token", 400),
            ("range with a garbage token", 401),
            ("user list as app", 403),
            ("auth disable as app", 403),
            ("authenticate root", 200),
            ("user list as root", 200),
            ("range as root", 200),
        ],
        "etcd's answers: {etcd_out:#?}"
    );
    let mut differences = Vec::new();
    for (e, m) in etcd_out.iter().zip(&mast_out) {
        if e != m {
            differences.push(format!(
                "{}:\n  etcd: {} {}\n  mast: {} {}",
                e.0, e.1, e.2, m.1, m.2
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "the gateway answers differ:\n{}",
        differences.join("\n")
    );
}
