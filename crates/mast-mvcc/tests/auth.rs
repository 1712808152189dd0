//! Auth commands through the store: results, persistence across reopen, snapshots, and the
//! key-space revision left alone.

use bytes::Bytes;
use mast_mvcc::{
    AuthCommand, AuthError, AuthState, Command, CommandResult, LoggedStore, MvccError,
};
use mast_proto::authpb::{Permission, permission::Type};
use mast_proto::etcdserverpb::PutRequest;

fn auth(c: AuthCommand) -> Command {
    Command::Auth(c)
}

fn put(k: &str) -> Command {
    Command::Put(PutRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::from_static(b"v"),
        ..Default::default()
    })
}

/// A realistic setup: root, two users, roles with permissions, auth on.
fn setup() -> Vec<Command> {
    let user = |name: &str, no_password| {
        auth(AuthCommand::UserAdd {
            name: name.into(),
            password_hash: format!("$2a$10$hash-of-{name}"),
            no_password,
        })
    };
    let grant = |user: &str, role: &str| {
        auth(AuthCommand::UserGrantRole {
            user: user.into(),
            role: role.into(),
        })
    };
    let perm = |role: &str, t: Type, key: &[u8], end: &[u8]| {
        auth(AuthCommand::RoleGrantPermission {
            role: role.into(),
            perm: Permission {
                perm_type: t as i32,
                key: Bytes::copy_from_slice(key),
                range_end: Bytes::copy_from_slice(end),
            },
        })
    };
    vec![
        user("root", false),
        grant("root", "root"),
        user("alice", false),
        user("svc", true),
        auth(AuthCommand::RoleAdd {
            name: "reader".into(),
        }),
        auth(AuthCommand::RoleAdd {
            name: "writer".into(),
        }),
        perm("reader", Type::Read, b"/app/", b"/app0"),
        perm("writer", Type::Readwrite, b"/app/cfg", b""),
        perm("writer", Type::Write, b"/tmp", b"\0"),
        grant("alice", "reader"),
        grant("alice", "writer"),
        grant("svc", "reader"),
        auth(AuthCommand::Enable),
    ]
}

fn open(dir: &std::path::Path) -> LoggedStore {
    LoggedStore::open(dir, Default::default(), Default::default()).unwrap()
}

fn results(store: &LoggedStore, cmds: &[Command]) -> Vec<Result<CommandResult, MvccError>> {
    store.apply(cmds).expect("disk").results
}

#[test]
fn auth_commands_apply_persist_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(*store.store().auth(), AuthState::new());

    let cmds = setup();
    for r in results(&store, &cmds) {
        r.unwrap();
    }
    let expected = {
        let mut s = AuthState::new();
        for c in &cmds {
            let Command::Auth(c) = c else { unreachable!() };
            s.apply(c).unwrap();
        }
        s
    };
    assert_eq!(*store.store().auth(), expected);
    {
        let a = store.store().auth();
        assert!(a.enabled());
        // 12 changes on top of revision 1; enabling moves nothing.
        assert_eq!(a.revision(), 13);
        assert!(a.is_permitted("alice", b"/app/x", b"", false));
        assert!(a.is_permitted("alice", b"/app/", b"/app0", false));
        assert!(!a.is_permitted("alice", b"/app/x", b"", true));
        assert!(a.is_permitted("alice", b"/app/cfg", b"", true));
        assert!(a.is_permitted("alice", b"/tmp/a", b"\0", true));
        assert!(a.is_admin("root"));
        assert_eq!(a.password_hash("svc"), None);
    }
    // Auth commands leave the key space alone.
    assert_eq!(store.store().revision(), 1);

    // Delete a role: users lose it, on disk too.
    let r = results(
        &store,
        &[auth(AuthCommand::RoleDelete {
            name: "writer".into(),
        })],
    );
    assert_eq!(r, vec![Ok(CommandResult::Auth { revision: 14 })]);
    let before = (*store.store().auth()).clone();
    store.close().unwrap();
    drop(store);

    let store = open(dir.path());
    assert_eq!(*store.store().auth(), before);
    assert_eq!(
        store.store().auth().user("alice").unwrap().roles,
        vec!["reader"]
    );
    assert!(store.store().auth().role("writer").is_none());
    assert!(
        !store
            .store()
            .auth()
            .is_permitted("alice", b"/app/cfg", b"", true)
    );

    // A user deleted is gone after reopening.
    results(
        &store,
        &[auth(AuthCommand::UserDelete { name: "svc".into() })],
    )[0]
    .clone()
    .unwrap();
    store.close().unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.store().auth().user_names(), vec!["alice", "root"]);
    assert_eq!(store.store().auth().revision(), 15);
    assert!(store.store().auth().enabled());
}

#[test]
fn refused_auth_commands_change_nothing_and_the_batch_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let applied = store
        .apply(&[
            put("a"),
            auth(AuthCommand::Enable),
            auth(AuthCommand::RoleAdd { name: "r".into() }),
            auth(AuthCommand::RoleAdd { name: "r".into() }),
            put("b"),
        ])
        .unwrap();
    let r = applied.results;
    assert!(matches!(r[0], Ok(CommandResult::Put(_))));
    assert_eq!(
        r[1],
        Err(MvccError::Auth(AuthError::RootUserNotExist)),
        "etcd's message without the prefix"
    );
    assert_eq!(
        r[1].as_ref().unwrap_err().to_string(),
        "root user does not exist"
    );
    assert_eq!(r[2], Ok(CommandResult::Auth { revision: 2 }));
    assert_eq!(r[3], Err(MvccError::Auth(AuthError::RoleAlreadyExist)));
    assert_eq!(
        r[3].as_ref().unwrap_err().to_string(),
        "role name already exists"
    );
    assert!(matches!(r[4], Ok(CommandResult::Put(_))));
    // Two puts, two revisions; the auth commands took none.
    assert_eq!(applied.revision, 3);
    assert_eq!(applied.events.len(), 2);
    assert_eq!(store.store().auth().revision(), 2);
    assert!(!store.store().auth().enabled());
}

#[test]
fn a_no_op_answers_the_current_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let r = results(&store, &[auth(AuthCommand::Disable)]);
    assert_eq!(r, vec![Ok(CommandResult::Auth { revision: 1 })]);
}

#[test]
fn snapshot_holds_the_auth_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for r in results(&store, &setup()) {
        r.unwrap();
    }
    results(&store, &[put("k")])[0].clone().unwrap();
    let snap = tempfile::tempdir().unwrap();
    store
        .store()
        .snapshot_to(&snap.path().join("mast.redb"))
        .unwrap();
    let restored = open(snap.path());
    assert_eq!(*restored.store().auth(), *store.store().auth());
    assert_eq!(restored.store().revision(), 2);
}

#[test]
fn bootstrap_root_is_one_command_and_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let boot = |h: &str| {
        auth(AuthCommand::BootstrapRoot {
            password_hash: h.into(),
        })
    };
    // Three members starting with the root password propose it three times: only the first
    // changes anything.
    let r = results(
        &store,
        &[boot("$2a$first"), boot("$2a$second"), boot("$2a$third")],
    );
    let revisions: Vec<u64> = r
        .iter()
        .map(|x| match x {
            Ok(CommandResult::Auth { revision }) => *revision,
            other => panic!("{other:?}"),
        })
        .collect();
    // UserAdd, RoleAdd and UserGrantRole each commit a revision (Enable does not), as the
    // steps would one by one; the later bootstraps are no-ops.
    assert_eq!(revisions, vec![4, 4, 4]);
    let a = store.store().auth();
    assert!(a.enabled());
    assert_eq!(a.user("root").unwrap().roles, vec!["root"]);
    assert_eq!(a.password_hash("root"), Some(&b"$2a$first"[..]));
    assert!(a.role("root").is_some());
    // An existing role root is kept, and the bootstrap is refused whole when a step fails.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    results(
        &store,
        &[auth(AuthCommand::RoleAdd {
            name: "root".into(),
        })],
    );
    let r = results(&store, &[boot("$2a$x")]);
    assert!(r[0].is_ok(), "{r:?}");
    assert_eq!(store.store().auth().revision(), 4);
}
