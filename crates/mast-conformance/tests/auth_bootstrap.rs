//! Bootstrapping auth from the environment, as etcd's container images do:
//! `MAST_ROOT_PASSWORD=guang mast serve` (or `ETCD_ROOT_PASSWORD`) creates user `root` with role
//! `root` and enables auth at the first start, once; etcdctl then works with `--user root:guang`
//! and with `ETCDCTL_USER`/`ETCDCTL_PASSWORD`. The password never appears in the server's log
//! (nor in clear in its data directory).
//!
//! Mast only (etcd has no such variable). Build the server first: `cargo build -p mast`.

use std::path::Path;

use mast_conformance::{Output, Server, ServerKind, ServerOptions};

const PASSWORD: &str = "guang";
/// A password given at a later start, which must change nothing.
const LATER_PASSWORD: &str = "Later-Passw0rd-7f3a";

fn assert_ok(out: &Output, what: &str) {
    assert!(out.success(), "{what}:\n{out}");
}

/// etcdctl refused a login: exit code 2 and etcd's message.
fn assert_login_refused(out: &Output, what: &str) {
    assert_eq!(out.code, Some(2), "{what}:\n{out}");
    assert!(
        out.stderr
            .contains("etcdserver: authentication failed, invalid user ID or password"),
        "{what}:\n{out}"
    );
}

/// Every file under `dir`, as bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path.display().to_string(), bytes));
            }
        }
    }
    out
}

/// Asserts that `secret` is neither in the server's log nor in clear in its data directory.
fn assert_secret_kept(server: &Server, secret: &str) {
    let log = server.log();
    assert!(
        !log.contains(secret),
        "the password {secret:?} appears in the server's log:\n{log}"
    );
    for (path, bytes) in files(&server.data_dir()) {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the password {secret:?} is stored in clear in {path}"
        );
    }
}

#[test]
fn root_password_from_the_environment_enables_auth_once() {
    let options = ServerOptions::default().env("MAST_ROOT_PASSWORD", PASSWORD);
    let mut server = Server::start_with(ServerKind::Mast, options);
    let empty = server.etcdctl(&["get", "k"], None);
    assert_eq!(empty.code, Some(1), "auth is on at once:\n{empty}");
    assert!(
        empty.stderr.contains("etcdserver: user name is empty"),
        "{empty}"
    );
    assert_ok(
        &server.etcdctl(&["--user", "root:guang", "put", "k", "v"], None),
        "--user root:guang",
    );
    let get = server.etcdctl_env(
        &["get", "k"],
        &[("ETCDCTL_USER", "root"), ("ETCDCTL_PASSWORD", PASSWORD)],
        None,
    );
    assert_eq!(
        get.stdout, "k\nv\n",
        "ETCDCTL_USER and ETCDCTL_PASSWORD:\n{get}"
    );
    let get = server.etcdctl_env(&["get", "k"], &[("ETCDCTL_USER", "root:guang")], None);
    assert_eq!(get.stdout, "k\nv\n", "ETCDCTL_USER=root:guang:\n{get}");
    let get = server.etcdctl(
        &["--user", "root", "--password", PASSWORD, "get", "k"],
        None,
    );
    assert_eq!(get.stdout, "k\nv\n", "--user root --password guang:\n{get}");
    assert_login_refused(
        &server.etcdctl(&["--user", "root:wrong", "get", "k"], None),
        "a wrong password",
    );
    let root = server.etcdctl(&["--user", "root:guang", "user", "get", "root"], None);
    assert_eq!(root.stdout, "User: root\nRoles: root\n", "{root}");
    let roles = server.etcdctl(&["--user", "root:guang", "role", "list"], None);
    assert_eq!(
        roles.stdout, "root\n",
        "only the root role is created:\n{roles}"
    );
    let users = server.etcdctl(&["--user", "root:guang", "user", "list"], None);
    assert_eq!(users.stdout, "root\n", "{users}");

    // A later start with another password changes nothing: the first one still logs in.
    server.options_mut().env = vec![("MAST_ROOT_PASSWORD".into(), LATER_PASSWORD.into())];
    server.restart().expect("restart");
    assert_ok(
        &server.etcdctl(&["--user", "root:guang", "get", "k"], None),
        "the first password after a restart with another one",
    );
    assert_login_refused(
        &server.etcdctl(
            &["--user", &format!("root:{LATER_PASSWORD}"), "get", "k"],
            None,
        ),
        "the later password",
    );
    // Once means once: disabled auth stays disabled across a start with the variable set.
    assert_ok(
        &server.etcdctl(&["--user", "root:guang", "auth", "disable"], None),
        "auth disable",
    );
    server.restart().expect("restart");
    let get = server.etcdctl(&["get", "k"], None);
    assert_eq!(
        get.stdout, "k\nv\n",
        "auth stays disabled after a restart with MAST_ROOT_PASSWORD set:\n{get}"
    );
    assert_secret_kept(&server, PASSWORD);
    assert_secret_kept(&server, LATER_PASSWORD);
}

#[test]
fn etcd_root_password_works_too_and_mast_root_password_wins() {
    // ETCD_ROOT_PASSWORD alone; with debug logs, which must not show the password either.
    let options = ServerOptions::default()
        .env("ETCD_ROOT_PASSWORD", PASSWORD)
        .env("RUST_LOG", "debug");
    let server = Server::start_with(ServerKind::Mast, options);
    assert_ok(
        &server.etcdctl(&["--user", "root:guang", "put", "k", "v"], None),
        "ETCD_ROOT_PASSWORD: --user root:guang",
    );
    assert_eq!(
        server.etcdctl(&["get", "k"], None).code,
        Some(1),
        "auth is on"
    );
    assert_secret_kept(&server, PASSWORD);
    drop(server);

    // Both set: MAST_ROOT_PASSWORD wins.
    let options = ServerOptions::default()
        .env("ETCD_ROOT_PASSWORD", LATER_PASSWORD)
        .env("MAST_ROOT_PASSWORD", PASSWORD);
    let server = Server::start_with(ServerKind::Mast, options);
    assert_ok(
        &server.etcdctl(&["--user", "root:guang", "get", "k"], None),
        "MAST_ROOT_PASSWORD wins over ETCD_ROOT_PASSWORD",
    );
    assert_login_refused(
        &server.etcdctl(
            &["--user", &format!("root:{LATER_PASSWORD}"), "get", "k"],
            None,
        ),
        "ETCD_ROOT_PASSWORD is ignored when MAST_ROOT_PASSWORD is set",
    );
    assert_secret_kept(&server, PASSWORD);
    assert_secret_kept(&server, LATER_PASSWORD);
}
