//! DNS (`mast serve --dns-addr`), asked with `dig` (Debian `dnsutils`): A and SRV records of a
//! service's healthy, enabled instances with their weights, the address names SRV targets
//! point at, namespaces and groups in the name, the protection threshold, a deregistered
//! instance leaving the answers at once, NXDOMAIN / REFUSED, TCP as well as UDP, and with auth
//! on the permissions of `--dns-user`.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use mast_conformance::{Background, Output, Server, ServerKind, ServerOptions, free_port};

/// Runs `dig @127.0.0.1 -p <port> <args>`, bounded in time.
fn dig(port: u16, args: &[&str]) -> Output {
    let mut cmd = Command::new("dig");
    cmd.arg("@127.0.0.1")
        .arg("-p")
        .arg(port.to_string())
        .args(["+time=2", "+tries=2"])
        .args(args);
    Background::spawn(cmd, None)
        .expect("dig runs (apt-get install dnsutils; scripts/install-test-deps.sh does)")
        .finish(Duration::from_secs(20))
}

/// The answer lines of `dig +short`, as a set.
fn short(port: u16, name: &str, rtype: &str, extra: &[&str]) -> BTreeSet<String> {
    let mut args = vec!["+short", name, rtype];
    args.extend_from_slice(extra);
    let out = dig(port, &args);
    assert!(out.success(), "dig {name} {rtype}: {out}");
    out.stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// The response code dig reports (`NOERROR`, `NXDOMAIN`, `REFUSED`, …).
fn status(port: u16, name: &str, rtype: &str) -> String {
    let out = dig(port, &["+noall", "+comments", name, rtype]);
    assert!(out.success(), "dig {name}: {out}");
    out.stdout
        .split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no status in dig's output: {out}"))
        .to_string()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn put(server: &Server, key: &str, value: &str) {
    let out = server.etcdctl(&["put", key, value], None);
    assert!(out.success(), "put {key}: {out}");
}

#[test]
fn a_and_srv_records_follow_the_registry() {
    let port = free_port();
    let server = Server::start_with(
        ServerKind::Mast,
        ServerOptions {
            args: vec!["--dns-addr".into(), format!("127.0.0.1:{port}")],
            ..Default::default()
        },
    );
    let svc = "user-service.service.mast.";
    assert_eq!(status(port, svc, "A"), "NXDOMAIN", "no instance yet");

    // The seeds' layout: /services/<service>/<id>, the instance's JSON as its value.
    put(
        &server,
        "/services/user-service/i1",
        r#"{"host":"10.0.0.1","port":3000}"#,
    );
    put(
        &server,
        "/services/user-service/i2",
        r#"{"host":"10.0.0.2","port":3001,"weight":2}"#,
    );
    put(
        &server,
        "/services/user-service/i3",
        r#"{"host":"10.0.0.3","port":3002,"enabled":false}"#,
    );
    put(
        &server,
        "/services/user-service/i4",
        r#"{"host":"10.0.0.4","port":3003,"healthy":false}"#,
    );
    put(
        &server,
        "/services/user-service/i5",
        r#"{"host":"api.example.com","port":443}"#,
    );
    put(
        &server,
        "/services/user-service/i6",
        r#"{"host":"fd00::6","port":3006,"weight":0.5}"#,
    );

    // Healthy, enabled, with an address: disabled i3, unhealthy i4 and host-named i5 are not.
    assert_eq!(short(port, svc, "A", &[]), set(&["10.0.0.1", "10.0.0.2"]));
    assert_eq!(short(port, svc, "AAAA", &[]), set(&["fd00::6"]));
    // SRV: weight × 100, addresses named under addr.mast., host names as they are.
    assert_eq!(
        short(port, svc, "SRV", &[]),
        set(&[
            "0 100 3000 0a000001.addr.mast.",
            "0 200 3001 0a000002.addr.mast.",
            "0 100 443 api.example.com.",
            "0 50 3006 fd000000000000000000000000000006.addr.mast.",
        ])
    );
    assert_eq!(
        short(port, "_user-service._tcp.service.mast.", "SRV", &["+tcp"]).len(),
        4,
        "RFC 2782 names, over TCP"
    );
    // The targets resolve, and come along in the additional section.
    assert_eq!(
        short(port, "0a000002.addr.mast.", "A", &[]),
        set(&["10.0.0.2"])
    );
    let full = dig(port, &["+noall", "+additional", svc, "SRV"]);
    assert!(
        full.stdout.contains("0a000001.addr.mast.") && full.stdout.contains("10.0.0.1"),
        "additional records: {full}"
    );

    // Deregistering takes an instance out at once.
    let out = server.etcdctl(&["del", "/services/user-service/i1"], None);
    assert!(out.success(), "{out}");
    assert_eq!(short(port, svc, "A", &[]), set(&["10.0.0.2"]));

    // Protection threshold: enabled instances i2, i4 (unhealthy), i5, i6: 3 of 4 healthy.
    put(
        &server,
        "/service-meta/user-service",
        r#"{"protectThreshold":0.7}"#,
    );
    assert_eq!(
        short(port, svc, "A", &[]),
        set(&["10.0.0.2"]),
        "0.75 > 0.7: not reached"
    );
    put(
        &server,
        "/services/user-service/i2",
        r#"{"host":"10.0.0.2","port":3001,"healthy":false}"#,
    );
    assert_eq!(
        short(port, svc, "A", &[]),
        set(&["10.0.0.2", "10.0.0.4"]),
        "2 of 4 healthy ≤ 0.7: every enabled instance is answered"
    );

    // Namespaces and groups, as Nacos stores them.
    put(
        &server,
        "/services/dev#shop@@orders/o1",
        r#"{"host":"10.1.0.1","port":8080}"#,
    );
    put(
        &server,
        "/services/shop@@orders/o1",
        r#"{"host":"10.2.0.1","port":8080}"#,
    );
    assert_eq!(
        short(port, "orders.shop.dev.service.mast.", "A", &[]),
        set(&["10.1.0.1"])
    );
    assert_eq!(
        short(port, "orders.shop.service.mast.", "A", &[]),
        set(&["10.2.0.1"])
    );
    assert_eq!(
        short(port, "_orders._tcp.shop.dev.service.mast.", "SRV", &[]),
        set(&["0 100 8080 0a010001.addr.mast."])
    );
    assert_eq!(
        status(port, "orders.service.mast.", "A"),
        "NXDOMAIN",
        "not in DEFAULT_GROUP"
    );

    // A known service with nothing to answer, names Mast does not give, and other zones.
    put(
        &server,
        "/services/idle/i1",
        r#"{"host":"10.3.0.1","port":1,"enabled":false}"#,
    );
    assert_eq!(status(port, "idle.service.mast.", "A"), "NOERROR");
    assert!(short(port, "idle.service.mast.", "A", &[]).is_empty());
    assert_eq!(status(port, "x.y.z.w.service.mast.", "A"), "NXDOMAIN");
    assert_eq!(status(port, "nothing.mast.", "A"), "NXDOMAIN");
    assert_eq!(status(port, "example.com.", "A"), "REFUSED");
    assert_eq!(short(port, "mast.", "SOA", &[]).len(), 1, "the zone's SOA");
}

#[test]
fn with_auth_on_dns_reads_as_its_user() {
    let port = free_port();
    let password = "dns-test-root";
    let server = Server::start_with(
        ServerKind::Mast,
        ServerOptions {
            args: vec![
                "--dns-addr".into(),
                format!("127.0.0.1:{port}"),
                "--dns-user".into(),
                "dns".into(),
            ],
            env: vec![("MAST_ROOT_PASSWORD".into(), password.into())],
            ..Default::default()
        },
    );
    let root = format!("--user=root:{password}");
    let run = |args: &[&str]| {
        let mut all = vec![root.as_str()];
        all.extend_from_slice(args);
        let out = server.etcdctl(&all, None);
        assert!(out.success(), "{args:?}: {out}");
    };
    run(&[
        "put",
        "/services/web/w1",
        r#"{"host":"10.9.0.1","port":80}"#,
    ]);
    run(&[
        "put",
        "/services/db/d1",
        r#"{"host":"10.9.0.2","port":5432}"#,
    ]);
    // No user named dns yet: refused.
    assert_eq!(status(port, "web.service.mast.", "A"), "REFUSED");
    run(&["user", "add", "dns:dns-password"]);
    run(&["role", "add", "discovery"]);
    run(&[
        "role",
        "grant-permission",
        "discovery",
        "read",
        "/services/web/",
        "--prefix=true",
    ]);
    run(&["user", "grant-role", "dns", "discovery"]);
    assert_eq!(
        short(port, "web.service.mast.", "A", &[]),
        set(&["10.9.0.1"])
    );
    assert_eq!(
        status(port, "db.service.mast.", "A"),
        "REFUSED",
        "outside what the DNS user may read"
    );
}
