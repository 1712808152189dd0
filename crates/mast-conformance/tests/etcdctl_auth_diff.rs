//! Differential test, auth part: one `etcdctl` 3.4 script about users, roles, key permissions
//! and auth on and off, run step by step against a real etcd 3.4 and against Mast; every step
//! must print the same (normalized) output and exit with the same code.
//!
//! Run it with `cargo build -p mast && cargo test -p mast-conformance --test etcdctl_auth_diff`;
//! prove the script etcd against etcd with `MAST_DIFF_AGAINST_ETCD=1`. The runner, its other
//! switches and the normalizations (each with its reason) are in [`mast_conformance::script`];
//! this script adds none: user and role listings, permission ranges, error messages, exit codes
//! and revisions are compared exactly.
//!
//! Both servers start with auth off (Mast without `MAST_ROOT_PASSWORD`), so both get the same
//! commands: the script adds `root` itself and runs `auth enable`, which in etcdctl 3.4 creates
//! and grants the `root` role when it is missing.
//!
//! Left out on purpose (tested in `auth_matrix.rs` instead), because Mast deliberately does not
//! behave as etcd 3.4.23 does:
//! - `compaction` by a non-root user: etcd checks nothing; Mast requires the root role.
//! - `lease timetolive --keys` of a lease holding keys the user may not read: etcd 3.4.23 lists
//!   them (CVE-2023-32082, fixed in 3.4.26 and 3.5.9); Mast refuses, as the fixed versions do.
//!
//! Mast throttles logins after 3 failures from one address (every client here is 127.0.0.1), so
//! the script never has more than two wrong passwords in a row before a successful login.

use mast_conformance::script::{self, Setup, Step, ctl, txn, watch};

/// `--user` for root, as the script's commands spell it.
const ROOT: &str = "--user root:guang";
/// `--user` for alice, who gets the `app` role.
const ALICE: &str = "--user alice:alicepw";

/// `ctl` with credentials: `who` is [`ROOT`], [`ALICE`] or any `--user ...` flag.
fn as_user(who: &str, why: &'static str, line: &str) -> Step {
    ctl(why, &format!("{who} {line}"))
}

fn root(why: &'static str, line: &str) -> Step {
    as_user(ROOT, why, line)
}

fn alice(why: &'static str, line: &str) -> Step {
    as_user(ALICE, why, line)
}

/// The script. Revisions in comments are the store revision after the step; auth changes never
/// bump it.
fn script() -> Vec<Step> {
    vec![
        // --- Users and roles, auth off ------------------------------------------------------
        ctl("no users yet", "user list").ok(),
        ctl("no roles yet", "role list").ok(),
        ctl("auth enable needs a root user", "auth enable").fails(),
        ctl("add root", "user add root:guang").ok(),
        ctl("a user name is unique", "user add root:other").fails(),
        ctl("add alice", "user add alice:alicepw").ok(),
        ctl("password from a flag", "user add bob --new-user-password=bobpw").ok(),
        ctl("password from stdin", "user add carol --interactive=false")
            .stdin(b"carolpw\n".to_vec())
            .ok(),
        ctl("a user without password (certificate CN only)", "user add cn-only --no-password").ok(),
        ctl("users are listed sorted", "user list").ok(),
        ctl("user list, JSON", "user list -w json").json().ok(),
        ctl("a user without roles", "user get alice").ok(),
        ctl("a user, JSON", "user get alice -w json").json().ok(),
        ctl("unknown user", "user get nobody").fails(),
        ctl("add a role", "role add app").ok(),
        ctl("a role name is unique", "role add app").fails(),
        ctl("empty role name", "role add \"\"").fails(),
        ctl("add another role", "role add reader").ok(),
        ctl("a role without permissions", "role get app").ok(),
        ctl("unknown role", "role get nope").fails(),
        ctl(
            "readwrite on a prefix",
            "role grant-permission app readwrite /services/app/ --prefix",
        )
        .ok(),
        ctl("read on one key", "role grant-permission app read /config/app").ok(),
        ctl("write on a range", "role grant-permission app write /w/a /w/c").ok(),
        ctl(
            "granting the same range again replaces its type",
            "role grant-permission app readwrite /w/a /w/c",
        )
        .ok(),
        ctl("write only on a range", "role grant-permission app write /wo/a /wo/c").ok(),
        ctl(
            "read from a key on",
            "role grant-permission reader read /r --from-key",
        )
        .ok(),
        ctl("a temporary prefix", "role grant-permission app read /tmp/ --prefix").ok(),
        ctl("granting to an unknown role", "role grant-permission nope read /x").fails(),
        ctl("permissions are listed sorted by key", "role get app").ok(),
        ctl("a role, JSON", "role get app -w json").json().ok(),
        ctl("revoke a range", "role revoke-permission app /w/a /w/c").ok(),
        ctl("revoke a prefix", "role revoke-permission app /tmp/ --prefix").ok(),
        ctl("revoke what was never granted", "role revoke-permission app /nope").fails(),
        ctl(
            "revoke a prefix granted as a single key",
            "role revoke-permission app /config/app --prefix",
        )
        .fails(),
        ctl("revoke from an unknown role", "role revoke-permission nope /x").fails(),
        ctl("after the revokes", "role get app").ok(),
        ctl("from-key permission", "role get reader -w json").json().ok(),
        ctl("roles are listed sorted", "role list").ok(),
        ctl("role list, JSON", "role list -w json").json().ok(),
        ctl("grant a role", "user grant-role alice app").ok(),
        ctl("granting it again is accepted", "user grant-role alice app").ok(),
        ctl("grant an unknown role", "user grant-role alice nope").fails(),
        ctl("grant to an unknown user", "user grant-role nobody app").fails(),
        ctl("bob gets two roles", "user grant-role bob reader").ok(),
        ctl("bob gets two roles", "user grant-role bob app").ok(),
        ctl("roles are listed sorted", "user get bob").ok(),
        ctl("with the roles' permissions", "user get bob --detail").ok(),
        ctl("user get, JSON", "user get bob -w json").json().ok(),
        ctl("revoke a role", "user revoke-role bob reader").ok(),
        ctl("revoke it again", "user revoke-role bob reader").fails(),
        ctl("revoke from an unknown user", "user revoke-role nobody app").fails(),
        ctl("alice in detail", "user get alice --detail").ok(),
        ctl("change a password", "user passwd carol --interactive=false")
            .stdin(b"carolpw2\n".to_vec())
            .ok(),
        ctl("change the password of an unknown user", "user passwd nobody --interactive=false")
            .stdin(b"pw\n".to_vec())
            .fails(),
        ctl("delete a user", "user delete bob").ok(),
        ctl("delete it again", "user delete bob").fails(),
        ctl("delete a role", "role delete reader").ok(),
        ctl("delete it again", "role delete reader").fails(),
        ctl("what is left", "user list").ok(),
        ctl("what is left", "role list").ok(),
        // --- Data to protect ---------------------------------------------------------------
        ctl("rev 2", "put /services/app/a 1").ok(),
        ctl("rev 3", "put /config/app c").ok(),
        ctl("rev 4", "put /other x").ok(),
        ctl("rev 5", "put /wo/b wb").ok(),
        ctl("auth changes did not bump the revision", "get \"\" --prefix -w json")
            .json()
            .ok(),
        // --- Enable --------------------------------------------------------------------------
        ctl(
            "enable: root lacks the root role, etcdctl creates and grants it",
            "auth enable",
        )
        .ok(),
        ctl("enable again without credentials", "auth enable").fails(),
        root("enable again as root: nothing to do", "auth enable").ok(),
        root("root has the root role", "user get root").ok(),
        root("root has the root role, JSON", "user get root -w json")
            .json()
            .ok(),
        root("the root role as etcdctl created it", "role get root").ok(),
        root("the root role, JSON", "role get root -w json").json().ok(),
        root("the role list now has root", "role list").ok(),
        // --- Without credentials -------------------------------------------------------------
        ctl("get without credentials", "get /services/app/a").fails(),
        ctl("put without credentials", "put /other y").fails(),
        ctl("del without credentials", "del /other").fails(),
        txn("txn without credentials", "", "\nget /other\n\n\n").fails(),
        watch("watch without credentials", "watch /other", &[]).code(5),
        ctl("user list without credentials", "user list").fails(),
        ctl("role get without credentials", "role get app").fails(),
        ctl("auth disable without credentials", "auth disable").fails(),
        ctl("lease grant needs no credentials", "lease grant 100")
            .capture("L1")
            .ok(),
        ctl(
            "revoking a lease without keys needs no credentials",
            "lease revoke {lease:L1}",
        )
        .ok(),
        ctl("member list needs no credentials", "member list -w json")
            .norm(script::Norm::MemberList)
            .ok(),
        ctl("health without credentials is unhealthy", "endpoint health")
            .norm(script::Norm::EndpointHealth)
            .fails(),
        // --- Wrong credentials ---------------------------------------------------------------
        root("root sees everything", "get \"\" --prefix -w json")
            .json()
            .ok(),
        ctl("wrong password", "--user root:wrong get /other").code(2),
        ctl("unknown user", "--user nobody:pw get /other").code(2),
        root("the right password still works", "get /other").ok(),
        ctl("a user without password cannot log in", "--user cn-only:x get /other").code(2),
        ctl(
            "an empty password: etcdctl sends no credentials at all",
            "--user alice: get /other",
        )
        .fails(),
        // --- alice: readwrite on /services/app/, read on /config/app, write on [/wo/a, /wo/c) ---
        alice("put inside the prefix (rev 6)", "put /services/app/b 2").ok(),
        alice("get inside the prefix", "get /services/app/ --prefix -w json")
            .json()
            .ok(),
        alice("prev-kv inside the prefix (rev 7)", "put --prev-kv /services/app/b 3").ok(),
        alice("del inside the prefix (rev 8)", "del --prev-kv /services/app/b").ok(),
        alice("read on a single key", "get /config/app").ok(),
        alice("no write on a read-only key", "put /config/app z").fails(),
        alice("no delete on a read-only key", "del /config/app").fails(),
        alice("get outside", "get /other").fails(),
        alice("put outside", "put /other y").fails(),
        alice("del outside", "del /other").fails(),
        alice("a range wider than the prefix", "get /services --prefix").fails(),
        alice(
            "the prefix without its slash is another key",
            "get /services/app",
        )
        .fails(),
        alice("every key", "get \"\" --prefix").fails(),
        alice("from the prefix to the end", "get /services/app/ --from-key").fails(),
        alice("keys-only is still a read", "get /other --keys-only").fails(),
        alice("a historical read inside the prefix", "get /services/app/a --rev 2 -w json")
            .json()
            .ok(),
        alice("write-only: put (rev 9)", "put /wo/b wb2").ok(),
        alice("write-only: no get", "get /wo/b").fails(),
        alice("write-only: prev-kv needs read", "put --prev-kv /wo/b wb3").fails(),
        alice("write-only: delete (rev 10)", "del /wo/b").ok(),
        alice("write-only: del --prev-kv needs read", "del --prev-kv /wo/a").fails(),
        alice("write-only: the range end is exclusive", "put /wo/c x").fails(),
        as_user(
            "--user alice --password alicepw",
            "password in its own flag",
            "get /services/app/a",
        )
        .ok(),
        ctl("credentials from the environment", "get /services/app/a")
            .env("ETCDCTL_USER", "alice")
            .env("ETCDCTL_PASSWORD", "alicepw")
            .ok(),
        ctl("user:password from the environment", "get /services/app/a")
            .env("ETCDCTL_USER", "alice:alicepw")
            .ok(),
        ctl("environment: permission denied outside", "put /other y")
            .env("ETCDCTL_USER", "alice")
            .env("ETCDCTL_PASSWORD", "alicepw")
            .fails(),
        ctl("environment: wrong password", "get /services/app/a")
            .env("ETCDCTL_USER", "alice")
            .env("ETCDCTL_PASSWORD", "wrong")
            .code(2),
        alice("a successful login after the failure", "get /services/app/a").ok(),
        // --- Txn -----------------------------------------------------------------------------
        txn(
            "txn inside the prefix (rev 11)",
            &format!("{ALICE} -w json"),
            "value(\"/services/app/a\") = \"1\"\n\nput /services/app/t 1\nget /config/app\n\nget /services/app/a\n\n",
        )
        .json()
        .ok(),
        txn(
            "a compare outside",
            ALICE,
            "value(\"/other\") = \"x\"\n\nput /services/app/t 2\n\n\n",
        )
        .fails(),
        txn(
            "an op outside in the success branch",
            ALICE,
            "\nput /services/app/t 3\nput /other y\n\n\n",
        )
        .fails(),
        txn(
            "an op outside in the failure branch, never run, is still checked",
            ALICE,
            "value(\"/services/app/a\") = \"1\"\n\nput /services/app/t 4\n\nget /other\n\n",
        )
        .not_in_cluster(
            "etcd 3.4 in a cluster answers permission denied yet applies the put (seen: the next \
             read shows t = 4); one etcd member, and Mast, refuse it and change nothing",
        )
        .fails(),
        txn(
            "a read where alice may only read",
            ALICE,
            "\nget /config/app\nput /config/app no\n\n\n",
        )
        .fails(),
        alice("the refused txns changed nothing", "get /services/app/t -w json")
            .json()
            .ok(),
        // --- Watch ---------------------------------------------------------------------------
        watch(
            "watch inside the prefix sees the events",
            &format!("{ALICE} watch --prefix /services/app/ --prev-kv --rev {{next_rev}}"),
            &[
                &format!("{ALICE} put /services/app/w 1"),
                &format!("{ALICE} put /services/app/w 2"),
                &format!("{ROOT} del /services/app/w"),
                &format!("{ROOT} put /other z"),
            ],
        ),
        watch("watch outside", &format!("{ALICE} watch /other"), &[]).code(5),
        watch(
            "watch a range wider than the prefix",
            &format!("{ALICE} watch --prefix /services/"),
            &[],
        )
        .code(5),
        watch(
            "watch a write-only key",
            &format!("{ALICE} watch /wo/b"),
            &[],
        )
        .code(5),
        watch("watch as root", &format!("{ROOT} watch --rev 1 --prefix /other"), &[]),
        // --- What alice may not manage ---------------------------------------------------------
        alice("user list needs root", "user list").fails(),
        alice("user get of another user", "user get root").fails(),
        alice("role add needs root", "role add mine").fails(),
        alice(
            "granting herself more",
            "role grant-permission app readwrite /other",
        )
        .fails(),
        alice("changing her own password", "user passwd alice --interactive=false")
            .stdin(b"alicepw\n".to_vec())
            .fails(),
        alice("auth disable needs root", "auth disable").fails(),
        alice(
            "health needs only a response: permission denied counts as healthy",
            "endpoint health",
        )
        .norm(script::Norm::EndpointHealth)
        .ok(),
        // --- Changes while enabled -----------------------------------------------------------
        root("root changes alice's password", "user passwd alice --interactive=false")
            .stdin(b"alicepw2\n".to_vec())
            .ok(),
        ctl("the old password", "--user alice:alicepw get /services/app/a").code(2),
        ctl("the new password", "--user alice:alicepw2 get /services/app/a").ok(),
        root("revoke a permission while enabled", "role revoke-permission app /config/app").ok(),
        ctl("the read is gone", "--user alice:alicepw2 get /config/app").fails(),
        root("revoke alice's role", "user revoke-role alice app").ok(),
        ctl("alice may read nothing", "--user alice:alicepw2 get /services/app/a").fails(),
        root("grant it back", "user grant-role alice app").ok(),
        ctl("and read again", "--user alice:alicepw2 get /services/app/a").ok(),
        root("a new role while enabled", "role add ops").ok(),
        root("its permission", "role grant-permission ops readwrite /other").ok(),
        root("a new user while enabled", "user add dave:davepw").ok(),
        root("with the role", "user grant-role dave ops").ok(),
        ctl("dave may write /other (rev 16)", "--user dave:davepw put /other d").ok(),
        ctl("but not /services/app/", "--user dave:davepw get /services/app/a").fails(),
        root("delete the role", "role delete ops").ok(),
        ctl("dave lost the permission with it", "--user dave:davepw get /other").fails(),
        root("dave keeps no dangling role", "user get dave").ok(),
        root("delete dave", "user delete dave").ok(),
        ctl("a deleted user cannot log in", "--user dave:davepw get /other").code(2),
        root("root logs in after that failure", "get /other").ok(),
        // --- root is protected while enabled --------------------------------------------------
        root("root cannot be deleted", "user delete root").fails(),
        root("root cannot lose the root role", "user revoke-role root root").fails(),
        root("the root role cannot be deleted", "role delete root").fails(),
        root("root is intact", "user get root --detail").ok(),
        root("root may grant the root role", "user grant-role alice root").ok(),
        ctl("alice is root now", "--user alice:alicepw2 user list").ok(),
        root("and may lose it", "user revoke-role alice root").ok(),
        ctl("alice is not root any more", "--user alice:alicepw2 user list").fails(),
        // --- Disable -------------------------------------------------------------------------
        root("disable", "auth disable").ok(),
        ctl("no credentials needed", "get \"\" --prefix -w json")
            .json()
            .ok(),
        ctl("disable again", "auth disable").ok(),
        ctl("--user is ignored when auth is off", "--user root:guang get /other").ok(),
        ctl("even with a wrong password", "--user root:wrong get /other").ok(),
        ctl("permissions no longer apply (rev 17)", "put /wo/b free").ok(),
        ctl("users are kept", "user get alice --detail").ok(),
        ctl("roles are kept", "role get app").ok(),
        ctl("root may now be deleted", "user revoke-role root root").ok(),
        ctl(
            "enable: root lacks the root role, which exists: etcdctl's RoleAdd fails",
            "auth enable",
        )
        .fails(),
        ctl("still disabled", "get /other").ok(),
        ctl("grant the role back", "user grant-role root root").ok(),
        ctl("enable again", "auth enable").ok(),
        ctl("enabled again", "get /other").fails(),
        root("root works", "get /other").ok(),
        ctl("alice works", "--user alice:alicepw2 get /services/app/a").ok(),
        root("disable for good", "auth disable").ok(),
        ctl("final state", "get \"\" --prefix -w json").json().ok(),
    ]
}

#[test]
fn etcdctl_auth_outputs_match_etcd() {
    script::run(
        &script(),
        &Setup {
            probe_user: Some("root:guang".into()),
            ..Setup::default()
        },
    );
}

/// The same script against 3 etcd members and 3 Mast members, etcdctl given every endpoint.
#[test]
fn etcdctl_auth_outputs_match_etcd_on_three_members() {
    script::run(
        &script(),
        &Setup {
            probe_user: Some("root:guang".into()),
            members: 3,
        },
    );
}
