//! TLS on the client port: etcdctl and curl over `https://`, plaintext refused, and client
//! certificates with `--trusted-ca-file --client-cert-auth` (including etcd's certificate
//! common-name login when auth is on). TLS between members: a three-member cluster on
//! `https://` peer URLs with `--peer-client-cert-auth`, joined by a fourth member by etcd's
//! runbook, whose peer ports refuse a dialler without a certificate of the peer CA (checked
//! with `openssl s_client`).
//!
//! The certificates are made by the test itself with `rcgen` in the server's temporary
//! directory: a CA, a server certificate for `127.0.0.1` and `localhost`, a client certificate,
//! and a client certificate from another CA. No private key is committed anywhere.
//!
//! Each check runs against a real etcd 3.4 (which takes the same flags) and against Mast, so
//! every expectation is proven on etcd first.
//!
//! The Mast variants need the binary: `cargo build -p mast` first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mast_conformance::{Output, Server, ServerKind, ServerOptions, ServerTls, etcdctl};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Generates `mod $check { etcd, mast }` test pairs for each `fn $check(ServerKind)`.
macro_rules! both {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            #[test]
            fn etcd() {
                super::$check(super::ServerKind::Etcd)
            }
            #[test]
            fn mast() {
                super::$check(super::ServerKind::Mast)
            }
        }
    )*};
}

both!(
    https_serves_etcdctl_and_curl,
    client_certificates_are_required,
    members_talk_over_peer_tls,
);

/// The PEM files of one test's certificates.
struct Certs {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A client certificate signed by a CA the server does not trust.
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
}

/// A CA: its PEM certificate and an issuer to sign with.
fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("self-signed CA");
    (cert.pem(), Issuer::new(params, key))
}

/// A leaf certificate for `names` with common name `cn`, signed by `issuer`: PEM certificate
/// and PEM private key.
fn new_leaf(
    issuer: &Issuer<'static, KeyPair>,
    cn: &str,
    names: &[&str],
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages;
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("signed leaf");
    (cert.pem(), key.serialize_pem())
}

/// Writes a fresh set of certificates into `dir`; the client certificate's common name is
/// `client_cn`.
fn make_certs(dir: &Path, client_cn: &str) -> Certs {
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let (ca_pem, ca) = new_ca("mast conformance test CA");
    // Also valid as a client certificate: etcd's JSON gateway dials its own gRPC port with it.
    let (server_pem, server_key) = new_leaf(
        &ca,
        "mast conformance server",
        &["127.0.0.1", "localhost"],
        vec![ServerAuth, ClientAuth],
    );
    let (client_pem, client_key) = new_leaf(&ca, client_cn, &[], vec![ClientAuth]);
    let (_, rogue_ca) = new_ca("some other CA");
    let (rogue_pem, rogue_key) = new_leaf(&rogue_ca, client_cn, &[], vec![ClientAuth]);
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path
    };
    Certs {
        ca: write("ca.pem", &ca_pem),
        server_cert: write("server.pem", &server_pem),
        server_key: write("server-key.pem", &server_key),
        client_cert: write("client.pem", &client_pem),
        client_key: write("client-key.pem", &client_key),
        rogue_cert: write("rogue.pem", &rogue_pem),
        rogue_key: write("rogue-key.pem", &rogue_key),
    }
}

/// Starts a server of `kind` with TLS; `client_auth` adds `--trusted-ca-file
/// --client-cert-auth` (and the harness then presents the client certificate).
fn start_tls(
    kind: ServerKind,
    client_cn: &str,
    client_auth: bool,
) -> (Server, Certs, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("mast-conformance-tls-")
        .tempdir()
        .expect("tempdir");
    let certs = make_certs(dir.path(), client_cn);
    let tls = ServerTls {
        cert_file: certs.server_cert.clone(),
        key_file: certs.server_key.clone(),
        trusted_ca_file: client_auth.then(|| certs.ca.clone()),
        client_cert_auth: client_auth,
        client_ca: certs.ca.clone(),
        client_cert: client_auth.then(|| (certs.client_cert.clone(), certs.client_key.clone())),
    };
    let server = Server::start_with(kind, ServerOptions::default().tls(tls));
    (server, certs, dir)
}

/// etcdctl with short timeouts (failures here are connection failures) and exactly `flags`.
fn ctl(endpoint: &str, flags: &[String], args: &[&str]) -> Output {
    let mut all: Vec<String> = vec!["--dial-timeout=2s".into(), "--command-timeout=3s".into()];
    all.extend(flags.iter().cloned());
    all.extend(args.iter().map(|a| (*a).to_owned()));
    etcdctl(endpoint, &all, None, Duration::from_secs(15))
}

fn flag(name: &str, path: &Path) -> String {
    format!("--{name}={}", path.display())
}

/// curl's TLS flags (curl takes `--flag value`, not `--flag=value`).
fn curl_tls(ca: Option<&Path>, cert: Option<(&Path, &Path)>) -> Vec<String> {
    let mut flags = Vec::new();
    if let Some(ca) = ca {
        flags.extend(["--cacert".to_owned(), ca.display().to_string()]);
    }
    if let Some((cert, key)) = cert {
        flags.extend(["--cert".to_owned(), cert.display().to_string()]);
        flags.extend(["--key".to_owned(), key.display().to_string()]);
    }
    flags
}

/// `curl` a URL (GET, or POST with `body`) with `flags`; the exit code, and the body followed by
/// a line with the HTTP status.
fn curl(url: &str, flags: &[String], body: Option<&str>) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(flags);
    if let Some(body) = body {
        cmd.args(["-X", "POST", "--data-binary", body]);
    }
    let out = cmd
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
    Output {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code(),
        timed_out: false,
    }
}

/// Whether `out` is `/health` answering healthy with HTTP 200.
fn healthy(out: &Output) -> bool {
    out.success() && out.stdout.contains(r#""health":"true""#) && out.stdout.ends_with("\n200")
}

fn https_serves_etcdctl_and_curl(kind: ServerKind) {
    let (server, certs, _dir) = start_tls(kind, "unused", false);
    let https = server.endpoint();
    assert!(https.starts_with("https://127.0.0.1:"), "{https}");
    let port = server.client_port();
    let cacert = vec![flag("cacert", &certs.ca)];

    let put = ctl(&https, &cacert, &["put", "k", "v"]);
    assert!(put.success(), "etcdctl --cacert put over TLS:\n{put}");
    let get = ctl(&https, &cacert, &["get", "k"]);
    assert_eq!(
        get.stdout, "k\nv\n",
        "etcdctl --cacert get over TLS:\n{get}"
    );
    let by_name = ctl(&format!("https://localhost:{port}"), &cacert, &["get", "k"]);
    assert_eq!(
        by_name.stdout, "k\nv\n",
        "the certificate names localhost too:\n{by_name}"
    );
    let status = ctl(&https, &cacert, &["endpoint", "status"]);
    assert!(status.success(), "endpoint status over TLS:\n{status}");

    let no_ca = ctl(&https, &[], &["get", "k"]);
    assert!(
        !no_ca.success(),
        "etcdctl without --cacert must not trust the test CA:\n{no_ca}"
    );
    let plaintext = ctl(&format!("http://127.0.0.1:{port}"), &[], &["get", "k"]);
    assert!(
        !plaintext.success(),
        "plaintext gRPC to the TLS port must fail:\n{plaintext}"
    );
    assert!(
        !plaintext.stdout.contains('v'),
        "no value over plaintext:\n{plaintext}"
    );

    let health = curl(
        &format!("{https}/health"),
        &curl_tls(Some(&certs.ca), None),
        None,
    );
    assert!(healthy(&health), "curl --cacert /health:\n{health}");
    let range = curl(
        &format!("{https}/v3/kv/range"),
        &curl_tls(Some(&certs.ca), None),
        Some(r#"{"key":"aw=="}"#),
    );
    assert!(
        range.success() && range.stdout.contains(r#""value":"dg==""#),
        "curl --cacert /v3/kv/range:\n{range}"
    );
    let untrusted = curl(&format!("{https}/health"), &[], None);
    assert!(
        !healthy(&untrusted),
        "curl without --cacert must not trust the test CA:\n{untrusted}"
    );
    let plain_http = curl(&format!("http://127.0.0.1:{port}/health"), &[], None);
    assert!(
        !healthy(&plain_http),
        "plaintext HTTP to the TLS port must not be served:\n{plain_http}"
    );
    drop(server);
}

fn client_certificates_are_required(kind: ServerKind) {
    let (server, certs, _dir) = start_tls(kind, "cert-user", true);
    let https = server.endpoint();
    let ca = flag("cacert", &certs.ca);
    let with_cert = vec![
        ca.clone(),
        flag("cert", &certs.client_cert),
        flag("key", &certs.client_key),
    ];
    let put = ctl(&https, &with_cert, &["put", "k", "v"]);
    assert!(put.success(), "etcdctl with a client certificate:\n{put}");

    let without = ctl(&https, std::slice::from_ref(&ca), &["get", "k"]);
    assert!(
        !without.success() && !without.stdout.contains('v'),
        "etcdctl without a client certificate must be refused:\n{without}"
    );
    let rogue = vec![
        ca.clone(),
        flag("cert", &certs.rogue_cert),
        flag("key", &certs.rogue_key),
    ];
    let untrusted = ctl(&https, &rogue, &["get", "k"]);
    assert!(
        !untrusted.success() && !untrusted.stdout.contains('v'),
        "a client certificate from another CA must be refused:\n{untrusted}"
    );
    let client = Some((certs.client_cert.as_path(), certs.client_key.as_path()));
    let curl_with = curl(
        &format!("{https}/health"),
        &curl_tls(Some(&certs.ca), client),
        None,
    );
    assert!(
        healthy(&curl_with),
        "curl with a client certificate:\n{curl_with}"
    );
    let curl_without = curl(
        &format!("{https}/health"),
        &curl_tls(Some(&certs.ca), None),
        None,
    );
    assert!(
        !healthy(&curl_without),
        "curl without a client certificate must be refused:\n{curl_without}"
    );

    // With auth on, a verified certificate's common name logs its user in without a password.
    for args in [
        &["user", "add", "root:guang"][..],
        &["user", "add", "cert-user", "--no-password"],
        &["role", "add", "reader"],
        &["role", "grant-permission", "reader", "read", "k"],
        &["auth", "enable"],
    ] {
        let out = ctl(&https, &with_cert, args);
        assert!(out.success(), "etcdctl {args:?}:\n{out}");
    }
    let denied = ctl(&https, &with_cert, &["get", "k"]);
    assert!(
        denied.stderr.contains("etcdserver: permission denied"),
        "the certificate's user has no role yet:\n{denied}"
    );
    let mut root = with_cert.clone();
    root.push("--user=root:guang".into());
    let grant = ctl(
        &https,
        &root,
        &["user", "grant-role", "cert-user", "reader"],
    );
    assert!(grant.success(), "grant:\n{grant}");
    let get = ctl(&https, &with_cert, &["get", "k"]);
    assert_eq!(
        get.stdout, "k\nv\n",
        "the certificate's user may read k:\n{get}"
    );
    let put = ctl(&https, &with_cert, &["put", "k", "w"]);
    assert!(
        put.stderr.contains("etcdserver: permission denied"),
        "but not write it:\n{put}"
    );
    let disable = ctl(&https, &root, &["auth", "disable"]);
    assert!(disable.success(), "auth disable:\n{disable}");
    drop(server);
}

/// Three members with `--peer-cert-file --peer-key-file --peer-trusted-ca-file
/// --peer-client-cert-auth` and `https://` peer URLs: writes through one member are read on
/// another, the member list shows the https peer URLs, a fourth member joins (`member add`,
/// then `--initial-cluster-state existing`) over TLS, and a peer port completes a TLS handshake
/// only with a certificate of the peer CA.
fn members_talk_over_peer_tls(kind: ServerKind) {
    let dir = tempfile::Builder::new()
        .prefix("mast-conformance-peer-tls-")
        .tempdir()
        .expect("tempdir");
    let certs = make_certs(dir.path(), "member");
    let options = ServerOptions {
        peer_tls: Some(mast_conformance::PeerTls {
            cert_file: certs.server_cert.clone(),
            key_file: certs.server_key.clone(),
            trusted_ca_file: certs.ca.clone(),
            client_cert_auth: true,
        }),
        ..ServerOptions::default()
    };
    let mut cluster = mast_conformance::cluster::Cluster::start_with_options(kind, 3, &options)
        .unwrap_or_else(|e| panic!("{kind:?} cluster with peer TLS did not start: {e:#}"));
    cluster
        .wait_leader(Duration::from_secs(15))
        .expect("a leader over peer TLS");
    let put = cluster.members[0].etcdctl(&["put", "over", "tls"], None);
    assert!(put.success(), "put: {}{}", put.stdout, put.stderr);
    let got = cluster.members[2].etcdctl(&["get", "over", "--print-value-only"], None);
    assert_eq!(got.stdout.trim(), "tls", "{}", got.stderr);
    let list = cluster.members[1].etcdctl(&["member", "list"], None);
    assert_eq!(
        list.stdout.matches("https://127.0.0.1:").count(),
        3,
        "three https peer URLs: {}",
        list.stdout
    );

    let added = cluster
        .add_member(1, false)
        .unwrap_or_else(|e| panic!("a fourth member joins over peer TLS: {e:#}"));
    let put = cluster.members[added].etcdctl(&["put", "from", "m3"], None);
    assert!(
        put.success(),
        "put on the new member: {}{}",
        put.stdout,
        put.stderr
    );
    let got = cluster.members[0].etcdctl(&["get", "from", "--print-value-only"], None);
    assert_eq!(got.stdout.trim(), "m3", "{}", got.stderr);

    // The peer port: a TLS handshake needs a certificate of the peer CA. Checked with
    // `openssl s_client` on TLS 1.2, where the client certificate is verified inside the
    // handshake, so its exit code says whether the handshake was accepted (under TLS 1.3 the
    // refusal comes after it, and what a client then sees depends on timing).
    let port = cluster.members[0]
        .peer_url()
        .rsplit(':')
        .next()
        .expect("a port")
        .to_owned();
    let handshake = |cert: Option<(&Path, &Path)>| -> Output {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-tls1_2", "-brief", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-CAfile")
            .arg(&certs.ca)
            .arg("-verify_return_error");
        if let Some((c, k)) = cert {
            cmd.arg("-cert").arg(c).arg("-key").arg(k);
        }
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
        Output {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            code: out.status.code(),
            timed_out: false,
        }
    };
    let member = handshake(Some((&certs.server_cert, &certs.server_key)));
    assert!(
        member.success(),
        "a member's certificate is refused: {member:?}"
    );
    let without = handshake(None);
    assert!(
        !without.success(),
        "no client certificate, yet: {without:?}"
    );
    let rogue = handshake(Some((&certs.rogue_cert, &certs.rogue_key)));
    assert!(!rogue.success(), "another CA's certificate, yet: {rogue:?}");
}
