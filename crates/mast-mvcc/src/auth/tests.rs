//! Every auth command's success and error paths, and the permission check against etcd's
//! range conventions.

use bytes::Bytes;
use mast_proto::authpb::{Permission, permission::Type};
use proptest::prelude::*;

use super::*;

fn user_add(name: &str) -> AuthCommand {
    AuthCommand::UserAdd {
        name: name.into(),
        password_hash: format!("hash-of-{name}"),
        no_password: false,
    }
}

fn grant(user: &str, role: &str) -> AuthCommand {
    AuthCommand::UserGrantRole {
        user: user.into(),
        role: role.into(),
    }
}

fn role_add(name: &str) -> AuthCommand {
    AuthCommand::RoleAdd { name: name.into() }
}

fn perm(t: Type, key: &[u8], range_end: &[u8]) -> Permission {
    Permission {
        perm_type: t as i32,
        key: Bytes::copy_from_slice(key),
        range_end: Bytes::copy_from_slice(range_end),
    }
}

fn grant_perm(role: &str, t: Type, key: &[u8], range_end: &[u8]) -> AuthCommand {
    AuthCommand::RoleGrantPermission {
        role: role.into(),
        perm: perm(t, key, range_end),
    }
}

fn revoke_perm(role: &str, key: &[u8], range_end: &[u8]) -> AuthCommand {
    AuthCommand::RoleRevokePermission {
        role: role.into(),
        key: Bytes::copy_from_slice(key),
        range_end: Bytes::copy_from_slice(range_end),
    }
}

fn ok(s: &mut AuthState, cmds: &[AuthCommand]) {
    for c in cmds {
        s.apply(c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    }
}

/// Applies `cmd`, expecting `err`, and checks that nothing changed.
fn refused(s: &mut AuthState, cmd: AuthCommand, err: AuthError) {
    let before = s.clone();
    assert_eq!(s.apply(&cmd), Err(err), "{cmd:?}");
    assert_eq!(*s, before, "refused {cmd:?} changed the state");
}

/// Root user with root role, and auth on.
fn enabled_with_root() -> AuthState {
    let mut s = AuthState::new();
    ok(
        &mut s,
        &[user_add("root"), grant("root", "root"), AuthCommand::Enable],
    );
    s
}

#[test]
fn fresh_state() {
    let s = AuthState::new();
    assert!(!s.enabled());
    assert_eq!(s.revision(), 1);
    assert!(s.user_names().is_empty());
    assert!(s.role_names().is_empty());
    assert!(!s.is_admin("root"));
    assert!(!s.is_permitted("root", b"a", b"", false));
}

#[test]
fn enable_needs_root_user_with_root_role() {
    let mut s = AuthState::new();
    refused(&mut s, AuthCommand::Enable, AuthError::RootUserNotExist);
    ok(&mut s, &[user_add("root")]);
    refused(&mut s, AuthCommand::Enable, AuthError::RootRoleNotExist);
    // Role "root" may be granted though no role of that name exists.
    ok(&mut s, &[grant("root", "root")]);
    assert!(s.role("root").is_none());
    let rev = s.revision();
    assert_eq!(
        s.apply(&AuthCommand::Enable),
        Ok(rev),
        "enable bumps no revision"
    );
    assert!(s.enabled());
    assert_eq!(
        s.apply(&AuthCommand::Enable),
        Ok(rev),
        "enable twice is a no-op"
    );
}

#[test]
fn disable_bumps_revision_once() {
    let mut s = AuthState::new();
    assert_eq!(
        s.apply(&AuthCommand::Disable),
        Ok(1),
        "disable while off: no-op"
    );
    let mut s = enabled_with_root();
    let rev = s.revision();
    assert_eq!(s.apply(&AuthCommand::Disable), Ok(rev + 1));
    assert!(!s.enabled());
    assert_eq!(s.apply(&AuthCommand::Disable), Ok(rev + 1));
}

#[test]
fn user_add_creates_user() {
    let mut s = AuthState::new();
    assert_eq!(s.apply(&user_add("alice")), Ok(2));
    let u = s.user("alice").unwrap();
    assert_eq!(u.name, Bytes::from_static(b"alice"));
    assert_eq!(s.password_hash("alice"), Some(&b"hash-of-alice"[..]));
    assert_eq!(u.options, Some(UserAddOptions { no_password: false }));
    assert!(u.roles.is_empty());
    refused(&mut s, user_add("alice"), AuthError::UserAlreadyExist);
    refused(&mut s, user_add(""), AuthError::UserEmpty);

    ok(
        &mut s,
        &[AuthCommand::UserAdd {
            name: "svc".into(),
            password_hash: "ignored".into(),
            no_password: true,
        }],
    );
    assert_eq!(s.password_hash("svc"), None);
    assert!(s.user("svc").unwrap().password.is_empty());
    assert_eq!(s.password_hash("nobody"), None);
    assert_eq!(s.user_names(), vec!["alice", "svc"]);
    assert_eq!(s.revision(), 3);
}

#[test]
fn user_delete() {
    let mut s = AuthState::new();
    refused(
        &mut s,
        AuthCommand::UserDelete { name: "x".into() },
        AuthError::UserNotFound,
    );
    ok(&mut s, &[user_add("root"), user_add("bob")]);
    // Root may go while auth is off.
    ok(
        &mut s,
        &[AuthCommand::UserDelete {
            name: "root".into(),
        }],
    );
    let mut s = enabled_with_root();
    refused(
        &mut s,
        AuthCommand::UserDelete {
            name: "root".into(),
        },
        AuthError::InvalidAuthMgmt,
    );
    ok(&mut s, &[user_add("bob")]);
    let rev = s.revision();
    assert_eq!(
        s.apply(&AuthCommand::UserDelete { name: "bob".into() }),
        Ok(rev + 1)
    );
    assert!(s.user("bob").is_none());
    assert!(!s.is_permitted("bob", b"k", b"", false));
}

#[test]
fn user_change_password() {
    let mut s = AuthState::new();
    let change = |name: &str| AuthCommand::UserChangePassword {
        name: name.into(),
        password_hash: "new-hash".into(),
    };
    refused(&mut s, change("alice"), AuthError::UserNotFound);
    ok(&mut s, &[user_add("alice"), grant("alice", "root")]);
    assert_eq!(s.apply(&change("alice")), Ok(4));
    assert_eq!(s.password_hash("alice"), Some(&b"new-hash"[..]));
    assert_eq!(s.user("alice").unwrap().roles, vec!["root"], "roles kept");

    // A no-password user keeps an empty password, and the revision still moves.
    ok(
        &mut s,
        &[AuthCommand::UserAdd {
            name: "svc".into(),
            password_hash: String::new(),
            no_password: true,
        }],
    );
    let rev = s.revision();
    assert_eq!(s.apply(&change("svc")), Ok(rev + 1));
    assert_eq!(s.password_hash("svc"), None);
    assert!(s.user("svc").unwrap().password.is_empty());
}

#[test]
fn user_grant_role() {
    let mut s = AuthState::new();
    refused(&mut s, grant("alice", "r"), AuthError::UserNotFound);
    ok(&mut s, &[user_add("alice")]);
    refused(&mut s, grant("alice", "r"), AuthError::RoleNotFound);
    ok(&mut s, &[role_add("zeta"), role_add("alpha")]);
    ok(&mut s, &[grant("alice", "zeta"), grant("alice", "alpha")]);
    assert_eq!(
        s.user("alice").unwrap().roles,
        vec!["alpha", "zeta"],
        "sorted"
    );
    let rev = s.revision();
    assert_eq!(
        s.apply(&grant("alice", "zeta")),
        Ok(rev),
        "regrant is a no-op"
    );
    assert!(!s.is_admin("alice"));
    ok(&mut s, &[grant("alice", "root")]);
    assert!(s.is_admin("alice"));
    assert_eq!(
        s.user("alice").unwrap().roles,
        vec!["alpha", "root", "zeta"]
    );
}

#[test]
fn user_revoke_role() {
    let revoke = |u: &str, r: &str| AuthCommand::UserRevokeRole {
        user: u.into(),
        role: r.into(),
    };
    let mut s = enabled_with_root();
    refused(&mut s, revoke("root", "root"), AuthError::InvalidAuthMgmt);
    refused(&mut s, revoke("alice", "r"), AuthError::UserNotFound);
    ok(&mut s, &[user_add("alice"), role_add("r")]);
    refused(&mut s, revoke("alice", "r"), AuthError::RoleNotGranted);
    ok(
        &mut s,
        &[grant("alice", "r"), grant_perm("r", Type::Read, b"k", b"")],
    );
    assert!(s.is_permitted("alice", b"k", b"", false));
    let rev = s.revision();
    assert_eq!(s.apply(&revoke("alice", "r")), Ok(rev + 1));
    assert!(s.user("alice").unwrap().roles.is_empty());
    assert!(
        !s.is_permitted("alice", b"k", b"", false),
        "cache invalidated"
    );

    // While auth is off, root may lose the root role.
    ok(&mut s, &[AuthCommand::Disable, revoke("root", "root")]);
    assert!(!s.is_admin("root"));
}

#[test]
fn role_add_creates_role() {
    let mut s = AuthState::new();
    assert_eq!(s.apply(&role_add("r")), Ok(2));
    assert_eq!(s.role("r").unwrap().name, Bytes::from_static(b"r"));
    assert!(s.role("r").unwrap().key_permission.is_empty());
    refused(&mut s, role_add("r"), AuthError::RoleAlreadyExist);
    refused(&mut s, role_add(""), AuthError::RoleEmpty);
    ok(&mut s, &[role_add("root")]);
    assert_eq!(s.role_names(), vec!["r", "root"]);
}

#[test]
fn role_delete_revokes_from_users() {
    let delete = |r: &str| AuthCommand::RoleDelete { name: r.into() };
    let mut s = enabled_with_root();
    ok(&mut s, &[role_add("root")]);
    refused(&mut s, delete("root"), AuthError::InvalidAuthMgmt);
    refused(&mut s, delete("nope"), AuthError::RoleNotFound);
    ok(
        &mut s,
        &[
            role_add("r"),
            role_add("other"),
            user_add("a"),
            user_add("b"),
            grant("a", "r"),
            grant("a", "other"),
            grant("b", "other"),
            grant_perm("r", Type::Readwrite, b"k", b""),
        ],
    );
    assert!(s.is_permitted("a", b"k", b"", true));
    let rev = s.revision();
    let mut probe = s.clone();
    let touched = probe.apply_tracked(&delete("r")).unwrap();
    assert_eq!(touched.roles, vec!["r"]);
    assert_eq!(touched.users, vec!["a"], "only users that had the role");
    assert_eq!(s.apply(&delete("r")), Ok(rev + 1));
    assert!(s.role("r").is_none());
    assert_eq!(s.user("a").unwrap().roles, vec!["other"]);
    assert_eq!(s.user("b").unwrap().roles, vec!["other"]);
    assert!(!s.is_permitted("a", b"k", b"", true));

    // While auth is off, role root may go, and like any role it leaves every user's list:
    // root loses the root role, so auth cannot be enabled again until it is regranted.
    ok(&mut s, &[AuthCommand::Disable, delete("root")]);
    assert!(s.user("root").unwrap().roles.is_empty());
    refused(&mut s, AuthCommand::Enable, AuthError::RootRoleNotExist);
}

#[test]
fn role_grant_permission_sorts_and_replaces() {
    let mut s = AuthState::new();
    refused(
        &mut s,
        grant_perm("r", Type::Read, b"a", b""),
        AuthError::RoleNotFound,
    );
    ok(&mut s, &[role_add("r")]);
    ok(
        &mut s,
        &[
            grant_perm("r", Type::Read, b"m", b""),
            grant_perm("r", Type::Write, b"c", b"f"),
            grant_perm("r", Type::Read, b"c", b""),
            grant_perm("r", Type::Read, b"x", b"\0"),
        ],
    );
    let perms = &s.role("r").unwrap().key_permission;
    assert_eq!(
        perms,
        &vec![
            perm(Type::Write, b"c", b"f"),
            perm(Type::Read, b"c", b""),
            perm(Type::Read, b"m", b""),
            perm(Type::Read, b"x", b"\0"),
        ],
        "sorted by key, equal keys in grant order"
    );
    // Same key and range end: the type changes in place, and the revision still moves.
    let rev = s.revision();
    assert_eq!(
        s.apply(&grant_perm("r", Type::Readwrite, b"c", b"")),
        Ok(rev + 1)
    );
    assert_eq!(
        s.role("r").unwrap().key_permission[1],
        perm(Type::Readwrite, b"c", b"")
    );
    assert_eq!(s.role("r").unwrap().key_permission.len(), 4);
    let rev = s.revision();
    assert_eq!(
        s.apply(&grant_perm("r", Type::Readwrite, b"c", b"")),
        Ok(rev + 1),
        "regranting the same permission is a change in etcd"
    );
}

#[test]
fn role_grant_permission_refuses_empty_ranges() {
    let mut s = AuthState::new();
    ok(&mut s, &[role_add("r")]);
    for (key, end) in [
        (&b""[..], &b""[..]),
        (b"", b"\0"),
        (b"b", b"a"),
        (b"b", b"b"),
    ] {
        refused(
            &mut s,
            grant_perm("r", Type::Read, key, end),
            AuthError::InvalidAuthMgmt,
        );
    }
    // Checked before the role: etcd validates the range first.
    refused(
        &mut s,
        grant_perm("nope", Type::Read, b"", b""),
        AuthError::InvalidAuthMgmt,
    );
    ok(&mut s, &[grant_perm("r", Type::Read, b"\0", b"\0")]);
}

#[test]
fn role_revoke_permission() {
    let mut s = AuthState::new();
    refused(&mut s, revoke_perm("r", b"a", b""), AuthError::RoleNotFound);
    ok(
        &mut s,
        &[
            role_add("r"),
            user_add("u"),
            grant("u", "r"),
            grant_perm("r", Type::Read, b"a", b""),
            grant_perm("r", Type::Read, b"a", b"c"),
        ],
    );
    refused(
        &mut s,
        revoke_perm("r", b"a", b"b"),
        AuthError::PermissionNotGranted,
    );
    refused(
        &mut s,
        revoke_perm("r", b"b", b""),
        AuthError::PermissionNotGranted,
    );
    assert!(s.is_permitted("u", b"b", b"", false));
    let rev = s.revision();
    assert_eq!(s.apply(&revoke_perm("r", b"a", b"c")), Ok(rev + 1));
    assert_eq!(
        s.role("r").unwrap().key_permission,
        vec![perm(Type::Read, b"a", b"")]
    );
    assert!(!s.is_permitted("u", b"b", b"", false), "cache invalidated");
    assert!(s.is_permitted("u", b"a", b"", false));
}

#[test]
fn root_may_do_everything() {
    let s = enabled_with_root();
    assert!(s.is_admin("root"));
    for write in [false, true] {
        assert!(s.is_permitted("root", b"any", b"", write));
        assert!(s.is_permitted("root", b"\0", b"\0", write));
        assert!(s.is_permitted("root", b"a", b"z", write));
    }
    assert!(!s.is_admin("nobody"));
    assert!(!s.is_permitted("nobody", b"any", b"", false));
}

#[test]
fn single_key_permissions() {
    let mut s = AuthState::new();
    ok(
        &mut s,
        &[
            user_add("u"),
            role_add("r"),
            grant("u", "r"),
            grant_perm("r", Type::Read, b"foo", b""),
        ],
    );
    assert!(s.is_permitted("u", b"foo", b"", false));
    assert!(!s.is_permitted("u", b"foo", b"", true), "read only");
    assert!(!s.is_permitted("u", b"foo0", b"", false));
    assert!(!s.is_permitted("u", b"fo", b"", false));
    // The range [foo, foo\0) is exactly the key.
    assert!(s.is_permitted("u", b"foo", b"foo\0", false));
    assert!(!s.is_permitted("u", b"foo", b"foo\0\0", false));
    assert!(!s.is_permitted("u", b"foo", b"\0", false));
}

#[test]
fn read_write_and_readwrite() {
    let mut s = AuthState::new();
    ok(
        &mut s,
        &[
            user_add("u"),
            role_add("r"),
            grant("u", "r"),
            grant_perm("r", Type::Read, b"r", b""),
            grant_perm("r", Type::Write, b"w", b""),
            grant_perm("r", Type::Readwrite, b"rw", b""),
        ],
    );
    assert!(s.is_permitted("u", b"r", b"", false));
    assert!(!s.is_permitted("u", b"r", b"", true));
    assert!(!s.is_permitted("u", b"w", b"", false));
    assert!(s.is_permitted("u", b"w", b"", true));
    assert!(s.is_permitted("u", b"rw", b"", false));
    assert!(s.is_permitted("u", b"rw", b"", true));
}

#[test]
fn ranges_covered_by_merged_permissions_of_several_roles() {
    let mut s = AuthState::new();
    ok(
        &mut s,
        &[
            user_add("u"),
            role_add("r1"),
            role_add("r2"),
            grant("u", "r1"),
            grant("u", "r2"),
            // [a, c) from one role, [c, e) and the key e from the other: together [a, e\0).
            grant_perm("r1", Type::Read, b"a", b"c"),
            grant_perm("r2", Type::Readwrite, b"c", b"e"),
            grant_perm("r2", Type::Read, b"e", b""),
            grant_perm("r1", Type::Read, b"p", b"q"),
        ],
    );
    assert!(s.is_permitted("u", b"a", b"e", false));
    assert!(s.is_permitted("u", b"b", b"d", false));
    assert!(
        s.is_permitted("u", b"a", b"e\0", false),
        "the point e touches [c, e)"
    );
    assert!(!s.is_permitted("u", b"a", b"e\0\0", false));
    assert!(!s.is_permitted("u", b"a", b"f", false));
    assert!(!s.is_permitted("u", b"\0", b"b", false), "starts before a");
    assert!(
        !s.is_permitted("u", b"a", b"q", false),
        "gap between e and p"
    );
    assert!(s.is_permitted("u", b"p", b"q", false));
    assert!(!s.is_permitted("u", b"p", b"\0", false));
    // Writes: only [c, e).
    assert!(s.is_permitted("u", b"c", b"e", true));
    assert!(!s.is_permitted("u", b"b", b"d", true));
    assert!(!s.is_permitted("u", b"e", b"", true));
    // Roles that do not exist (deleted) add nothing.
    ok(&mut s, &[AuthCommand::RoleDelete { name: "r2".into() }]);
    assert!(!s.is_permitted("u", b"a", b"e", false));
    assert!(s.is_permitted("u", b"a", b"c", false));
}

#[test]
fn open_ended_permissions_and_requests() {
    let mut s = AuthState::new();
    ok(
        &mut s,
        &[
            user_add("u"),
            role_add("r"),
            grant("u", "r"),
            grant_perm("r", Type::Read, b"m", b"\0"),
        ],
    );
    assert!(s.is_permitted("u", b"m", b"\0", false));
    assert!(s.is_permitted("u", b"n", b"\0", false));
    assert!(s.is_permitted("u", b"zzz", b"", false));
    assert!(s.is_permitted("u", b"m", b"\xff\xff\xff", false));
    assert!(!s.is_permitted("u", b"l", b"\0", false));
    assert!(!s.is_permitted("u", b"l", b"", false));
    // Every key: key "\0" with range end "\0" (etcdctl's --prefix on "").
    ok(&mut s, &[grant_perm("r", Type::Write, b"\0", b"\0")]);
    assert!(s.is_permitted("u", b"\0", b"\0", true));
    assert!(s.is_permitted("u", b"anything", b"", true));
    assert!(
        !s.is_permitted("u", b"\0", b"\0", false),
        "reads still from m only"
    );
}

#[test]
fn empty_or_inverted_request_ranges_check_the_first_key() {
    let mut s = AuthState::new();
    ok(
        &mut s,
        &[
            user_add("u"),
            role_add("r"),
            grant("u", "r"),
            grant_perm("r", Type::Read, b"k", b""),
        ],
    );
    assert!(s.is_permitted("u", b"k", b"a", false));
    assert!(s.is_permitted("u", b"k", b"k", false));
    assert!(!s.is_permitted("u", b"j", b"a", false));
}

/// A naive reading of "the permissions cover the request": the union of half-open intervals
/// covers `[b, e)` iff `b` is held by some interval and so is every interval end inside
/// `(b, e)` (coverage can only stop at an end).
fn naive_covers(ivs: &[(Vec<u8>, Option<Vec<u8>>)], b: &[u8], e: Option<&[u8]>) -> bool {
    let holds = |k: &[u8]| {
        ivs.iter()
            .any(|(s, t)| s.as_slice() <= k && t.as_deref().is_none_or(|t| k < t))
    };
    holds(b)
        && ivs.iter().all(|(_, t)| match t {
            Some(t) if t.as_slice() > b && e.is_none_or(|e| t.as_slice() < e) => holds(t),
            _ => true,
        })
}

fn small_key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(prop_oneof![Just(0u8), Just(b'a'), Just(b'b')], 0..3)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn merged_check_matches_naive_cover(
        grants in proptest::collection::vec((small_key(), small_key(), 0usize..3, 0usize..3), 0..8),
        key in small_key(),
        end in small_key(),
        write: bool,
    ) {
        let mut s = AuthState::new();
        ok(&mut s, &[user_add("u"), role_add("r0"), role_add("r1"), role_add("r2"),
                     grant("u", "r0"), grant("u", "r1"), grant("u", "r2")]);
        for (k, e, t, role) in grants {
            let t = [Type::Read, Type::Write, Type::Readwrite][t];
            // Refused grants (empty ranges) change nothing.
            let _ = s.apply(&grant_perm(&format!("r{role}"), t, &k, &e));
        }
        // The expected intervals come from the roles' permissions: regranting a key and range
        // end with another type replaces the earlier grant.
        let mut ivs_from_state = Vec::new();
        for r in ["r0", "r1", "r2"] {
            for p in &s.role(r).unwrap().key_permission {
                let t = Type::try_from(p.perm_type).unwrap();
                if t == Type::Readwrite || (t == Type::Write) == write {
                    let end = if p.range_end.is_empty() {
                        let mut k = p.key.to_vec();
                        k.push(0);
                        Some(k)
                    } else if p.range_end.as_ref() == [0] {
                        None
                    } else {
                        Some(p.range_end.to_vec())
                    };
                    ivs_from_state.push((p.key.to_vec(), end));
                }
            }
        }
        let (b, e): (&[u8], Option<Vec<u8>>) = if end.is_empty() {
            let mut p = key.clone();
            p.push(0);
            (&key, Some(p))
        } else if end == [0] {
            (&key, None)
        } else if end.as_slice() <= key.as_slice() {
            let mut p = key.clone();
            p.push(0);
            (&key, Some(p))
        } else {
            (&key, Some(end.clone()))
        };
        // An empty key is never a valid etcd key; etcd's affine comparison treats it as the
        // largest, so no permission holds it.
        let expected = !key.is_empty() && naive_covers(&ivs_from_state, b, e.as_deref());
        prop_assert_eq!(s.is_permitted("u", &key, &end, write), expected);
    }
}
