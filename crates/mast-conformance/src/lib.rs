//! Black-box conformance harness for Mast.
//!
//! Mast claims that existing etcd v3 clients work against it unchanged. The only honest way to
//! check that claim is the way users meet it: start the server as a process, point a real client
//! at it, and compare what the client sees with what a real etcd 3.4 shows it. This crate
//! therefore has **no dependency on the Mast crates**: it runs binaries.
//!
//! # Map
//! - [`Server`] starts `mast serve` or a single-node `etcd` on free loopback ports in a fresh
//!   temporary directory, waits until it answers, and stops it by PID when dropped (also when a
//!   test panics). [`Server::kill9`] and [`Server::restart`] support crash tests.
//! - [`etcdctl()`] / [`Server::etcdctl`] run the `etcdctl` 3.4 binary with a timeout;
//!   [`Server::spawn_etcdctl`] runs a long-lived one (such as `etcdctl watch`) that the test
//!   stops after a bounded time.
//! - [`ServerOptions`] adds what a test needs on top: environment variables and flags for the
//!   server (`MAST_ROOT_PASSWORD`, `--auth-token …`), and TLS ([`ServerTls`]: the same
//!   `--cert-file`/`--key-file`/`--trusted-ca-file`/`--client-cert-auth` flags for both servers,
//!   an `https://` client URL, and the files the harness's own etcdctl calls connect with).
//! - [`mast_binary`] / [`mast_binary_exists`] locate the Mast binary so a test that needs it can
//!   say "build it first" instead of failing obscurely.
//! - [`script`]: the step-list differential runner (one etcdctl script against etcd and Mast,
//!   normalized outputs compared step by step).
//!
//! The tests live in `tests/`: `etcdctl_diff.rs` and `etcdctl_auth_diff.rs` (etcdctl against
//! etcd and Mast, outputs compared step by step), `etcd_client.rs` (every RPC through the
//! `etcd-client` crate, against both servers), `auth_matrix.rs` (every RPC refused or allowed
//! by key permissions, gRPC and the JSON gateway), `auth_bootstrap.rs` (`MAST_ROOT_PASSWORD`),
//! `auth_throttle.rs` (login throttling), `tls.rs` (TLS and client certificates) and `crash.rs`
//! (`kill -9` under load, every acknowledged put must survive).
//!
//! # Environment
//! - `MAST_BIN`: the Mast binary (default `<workspace>/target/debug/mast`, or
//!   `$CARGO_TARGET_DIR/debug/mast`).
//! - `ETCD_BIN` (default `/usr/bin/etcd`), `ETCDCTL_BIN` (default `/usr/bin/etcdctl`).
//! - `MAST_CONFORMANCE_KEEP=1`: keep each server's temporary directory (data and log) and print
//!   its path, for post-mortems.
//!
//! # Invariants
//! - Traffic goes only to `127.0.0.1`; every port is picked by binding `127.0.0.1:0`.
//! - Every child process is stopped by its PID, never by name; every wait is bounded.
//! - Tests do not share servers, ports or directories, so they may run in parallel.
//! - Servers and etcdctl see only the configuration a test gives them: `MAST_*` and `ETCD_*`
//!   variables are removed from a server's environment, `ETCDCTL_*` from etcdctl's.

pub mod cluster;
pub mod script;

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a server may take to answer its first request.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stopping server gets after SIGTERM before it gets SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// Default bound on one `etcdctl` run; it is killed when it runs longer.
pub const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(15);

/// Which server binary a [`Server`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServerKind {
    /// `mast serve`, the server under test.
    Mast,
    /// A single-member etcd 3.4, the reference.
    Etcd,
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerKind::Mast => "mast",
            ServerKind::Etcd => "etcd",
        })
    }
}

/// The root of the Cargo workspace this crate lives in.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where the Mast binary is expected: `$MAST_BIN`, else `$CARGO_TARGET_DIR/debug/mast`, else
/// `<workspace>/target/debug/mast`.
pub fn mast_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("MAST_BIN") {
        return PathBuf::from(bin);
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir), // `join` keeps an absolute path as it is.
        None => workspace_root().join("target"),
    };
    target.join("debug").join("mast")
}

/// Whether the Mast binary exists (see [`mast_binary`]).
pub fn mast_binary_exists() -> bool {
    mast_binary().is_file()
}

/// The etcd binary: `$ETCD_BIN`, else `/usr/bin/etcd`.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from)
}

/// The etcdctl binary: `$ETCDCTL_BIN`, else `/usr/bin/etcdctl`.
pub fn etcdctl_binary() -> PathBuf {
    std::env::var_os("ETCDCTL_BIN").map_or_else(|| PathBuf::from("/usr/bin/etcdctl"), PathBuf::from)
}

/// Ports handed out by [`free_port`] in this process, never handed out twice, so that tests
/// running in parallel threads cannot pick the same port between "bind :0" and the server's bind.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port `p` that is free along with `p + offset` at the time of asking (a Nacos
/// HTTP port and its gRPC port, 1000 above it).
///
/// # Panics
/// When no such pair is found in 50 tries.
pub fn free_port_pair(offset: u16) -> u16 {
    for _ in 0..50 {
        let p = free_port();
        if let Some(q) = p.checked_add(offset)
            && std::net::TcpListener::bind(("127.0.0.1", q)).is_ok()
        {
            return p;
        }
    }
    panic!("no free pair of ports {offset} apart");
}

/// A loopback TCP port that was free a moment ago: bind `127.0.0.1:0`, read the port, drop.
///
/// Another process may still take it before the server binds it; [`Server::start`] retries with
/// new ports when the server exits during startup.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// What a finished (or killed) command printed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Standard output, decoded lossily as UTF-8.
    pub stdout: String,
    /// Standard error, decoded lossily as UTF-8.
    pub stderr: String,
    /// The exit code; `None` when the process was killed by a signal (for example on timeout).
    pub code: Option<i32>,
    /// Whether the harness killed the process because it ran past its time.
    pub timed_out: bool,
}

impl Output {
    /// Whether the command exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "exit code: {:?}{}",
            self.code,
            if self.timed_out {
                " (timed out, killed)"
            } else {
                ""
            }
        )?;
        writeln!(f, "--- stdout ---\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr ---\n{}", self.stderr.trim_end())
    }
}

/// Output read so far from a child's pipe, shared with the thread that reads it.
type SharedBuf = Arc<Mutex<Vec<u8>>>;

/// Reads a pipe to its end on a thread (so a chatty child never blocks on a full pipe), making
/// what arrived so far visible through the returned buffer.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> (SharedBuf, JoinHandle<()>) {
    let buf = SharedBuf::default();
    let sink = Arc::clone(&buf);
    let handle = thread::spawn(move || {
        let Some(mut pipe) = pipe else { return };
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&chunk[..n]),
            }
        }
    });
    (buf, handle)
}

fn lossy(buf: &SharedBuf) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// A running child whose output is being collected; see [`Server::spawn_etcdctl`].
#[derive(Debug)]
pub struct Background {
    child: Child,
    stdout: SharedBuf,
    stderr: SharedBuf,
    readers: Vec<JoinHandle<()>>,
    stdin: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts `cmd` with piped standard streams and feeds it `stdin` (then closes it).
    pub fn spawn(mut cmd: Command, stdin: Option<&[u8]>) -> anyhow::Result<Background> {
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let stdin = match (stdin, child.stdin.take()) {
            (Some(bytes), Some(mut pipe)) => {
                let bytes = bytes.to_vec();
                // The child may exit without reading everything; a broken pipe is its answer.
                Some(thread::spawn(move || {
                    let _ = pipe.write_all(&bytes);
                }))
            }
            _ => None,
        };
        let (stdout, out_reader) = drain(child.stdout.take());
        let (stderr, err_reader) = drain(child.stderr.take());
        Ok(Background {
            child,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
            stdin,
        })
    }

    /// Standard output and standard error printed so far, with the child still running.
    pub fn output_so_far(&self) -> (String, String) {
        (lossy(&self.stdout), lossy(&self.stderr))
    }

    /// Whether the child has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until the child has printed something and then stayed quiet for `quiet`, or has
    /// exited, but no longer than `max`; for children that stream output and never exit.
    pub fn wait_until_quiet(&mut self, quiet: Duration, max: Duration) {
        let deadline = Instant::now() + max;
        let (mut last, mut since) = (self.output_so_far(), Instant::now());
        while Instant::now() < deadline && !self.exited() {
            thread::sleep(Duration::from_millis(25));
            let now = self.output_so_far();
            if now != last {
                (last, since) = (now, Instant::now());
            } else if !(last.0.is_empty() && last.1.is_empty()) && since.elapsed() >= quiet {
                return;
            }
        }
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the child exits or `timeout` passes; then kills it (SIGKILL, by PID) if it is
    /// still running, and returns everything it printed.
    pub fn finish(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        let status: Option<ExitStatus> = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    timed_out = true;
                    let _ = self.child.kill();
                    break self.child.wait().ok();
                }
                Err(_) => break None,
            }
        };
        self.collect(status, timed_out)
    }

    /// Kills the child now (SIGKILL, by PID) and returns everything it printed; for children
    /// that never exit by themselves, such as `etcdctl watch`.
    pub fn stop(mut self) -> Output {
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        self.collect(status, false)
    }

    fn collect(&mut self, status: Option<ExitStatus>, timed_out: bool) -> Output {
        // The child is gone, so its pipes are closed and the readers finish.
        for h in self.stdin.take().into_iter().chain(self.readers.drain(..)) {
            let _ = h.join();
        }
        Output {
            stdout: lossy(&self.stdout),
            stderr: lossy(&self.stderr),
            code: status.and_then(|s| s.code()),
            timed_out,
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Only still running if neither `finish` nor `stop` ran (e.g. the test panicked).
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `etcdctl` command for `endpoint`, with `ETCDCTL_API=3` and `--endpoints` set.
///
/// The `ETCDCTL_*` variables of the test's own environment are removed (then `ETCDCTL_API=3` is
/// set), so that a developer's `ETCDCTL_USER` or `ETCDCTL_CACERT` cannot change what a test
/// sees; tests that mean to use them pass them with [`etcdctl_env`].
pub fn etcdctl_command<S: AsRef<str>>(endpoint: &str, args: &[S]) -> Command {
    let mut cmd = Command::new(etcdctl_binary());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args.iter().map(AsRef::as_ref));
    cmd
}

/// Runs `etcdctl --endpoints=<endpoint> <args>` with `stdin`, killing it after `timeout`.
pub fn etcdctl<S: AsRef<str>>(
    endpoint: &str,
    args: &[S],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Output {
    etcdctl_env(endpoint, args, &[] as &[(&str, &str)], stdin, timeout)
}

/// As [`etcdctl`], with extra environment variables (such as `ETCDCTL_USER`).
pub fn etcdctl_env<S: AsRef<str>, K: AsRef<str>, V: AsRef<str>>(
    endpoint: &str,
    args: &[S],
    env: &[(K, V)],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Output {
    let mut cmd = etcdctl_command(endpoint, args);
    for (k, v) in env {
        cmd.env(k.as_ref(), v.as_ref());
    }
    match Background::spawn(cmd, stdin) {
        Ok(child) => child.finish(timeout),
        Err(e) => panic!(
            "cannot run etcdctl at {}: {e:#}",
            etcdctl_binary().display()
        ),
    }
}

/// TLS for a server's client port: the server's flags (the same names for etcd 3.4 and Mast) and
/// the files the harness's own etcdctl calls ([`Server::etcdctl`], readiness probes) use.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// `--cert-file`: the server's certificate (PEM).
    pub cert_file: PathBuf,
    /// `--key-file`: the server's private key (PEM).
    pub key_file: PathBuf,
    /// `--trusted-ca-file`: the CA that client certificates must be signed by.
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-cert-auth`: refuse clients without such a certificate.
    pub client_cert_auth: bool,
    /// The CA that signed the server's certificate (etcdctl `--cacert`).
    pub client_ca: PathBuf,
    /// A client certificate and key for the harness's own calls (etcdctl `--cert`, `--key`).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl ServerTls {
    /// The etcdctl flags that connect to a server with this TLS set-up.
    pub fn etcdctl_flags(&self) -> Vec<String> {
        let mut flags = vec![format!("--cacert={}", self.client_ca.display())];
        if let Some((cert, key)) = &self.client_cert {
            flags.push(format!("--cert={}", cert.display()));
            flags.push(format!("--key={}", key.display()));
        }
        flags
    }
}

/// What a test asks for on top of a plain server of some kind.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// The member name (`--name`); default `conformance`.
    pub name: Option<String>,
    /// Environment variables for the server process (for example `MAST_ROOT_PASSWORD`).
    pub env: Vec<(String, String)>,
    /// Extra flags after the harness's own (for example `--auth-token-ttl 5`).
    pub args: Vec<String>,
    /// Serve clients over TLS (`https://` client URL).
    pub tls: Option<ServerTls>,
    /// Run as a member of a cluster rather than alone (see [`cluster::Cluster`]).
    pub member: Option<MemberSpec>,
    /// TLS between members (`https://` peer URLs).
    pub peer_tls: Option<PeerTls>,
}

/// TLS between members: the server's flags, the same names for etcd 3.4 and Mast.
#[derive(Clone, Debug)]
pub struct PeerTls {
    /// `--peer-cert-file`: the member's certificate (PEM), used both ways.
    pub cert_file: PathBuf,
    /// `--peer-key-file`: its private key (PEM).
    pub key_file: PathBuf,
    /// `--peer-trusted-ca-file`: the CA peer certificates must be signed by.
    pub trusted_ca_file: PathBuf,
    /// `--peer-client-cert-auth`: refuse members that dial in without such a certificate.
    pub client_cert_auth: bool,
}

/// What makes a server a member of a cluster: the cluster it starts in and how.
#[derive(Clone, Debug)]
pub struct MemberSpec {
    /// `--initial-cluster`.
    pub initial_cluster: String,
    /// `--initial-cluster-token`.
    pub token: String,
    /// `--initial-cluster-state` (`new` or `existing`).
    pub state: String,
}

impl ServerOptions {
    /// Adds an environment variable for the server.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds flags for the server.
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args.extend(args.iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Serves clients over TLS.
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// A server process on loopback ports, with its own temporary directory.
///
/// Dropping it stops the process (SIGTERM, up to [`STOP_GRACE`], then SIGKILL) and removes the
/// directory. When dropped while the thread panics, it prints the end of the server's log.
#[derive(Debug)]
pub struct Server {
    kind: ServerKind,
    name: String,
    options: ServerOptions,
    client_port: u16,
    peer_port: u16,
    dir: Option<tempfile::TempDir>,
    child: Option<Child>,
}

impl Server {
    /// Starts a server of `kind` and waits until it answers; panics with a clear message if it
    /// cannot (for Mast: when the binary is missing, says how to build it).
    pub fn start(kind: ServerKind) -> Server {
        match Server::try_start(kind) {
            Ok(server) => server,
            Err(e) => panic!("could not start {kind}: {e:#}"),
        }
    }

    /// Starts a server of `kind` named `conformance` and waits until it answers.
    pub fn try_start(kind: ServerKind) -> anyhow::Result<Server> {
        Server::try_start_named(kind, "conformance")
    }

    /// Starts a server of `kind` with member name `name` and waits until it answers.
    ///
    /// Retries up to three times with fresh ports when the server reports "address already in
    /// use" (another process may have taken a port that [`free_port`] saw free).
    pub fn try_start_named(kind: ServerKind, name: &str) -> anyhow::Result<Server> {
        let options = ServerOptions {
            name: Some(name.to_owned()),
            ..ServerOptions::default()
        };
        Server::try_start_with(kind, options)
    }

    /// Starts a server of `kind` with `options`; panics with a clear message if it cannot.
    pub fn start_with(kind: ServerKind, options: ServerOptions) -> Server {
        match Server::try_start_with(kind, options) {
            Ok(server) => server,
            Err(e) => panic!("could not start {kind}: {e:#}"),
        }
    }

    /// A server of `kind` with `options` on fresh ports, not started yet: a cluster's members
    /// are made first (their peer URLs go into everyone's `--initial-cluster`), then started
    /// together ([`Server::spawn`]), then waited for ([`Server::wait_ready`]).
    ///
    /// # Errors
    /// When the temporary directory cannot be made or the Mast binary is missing.
    pub fn unstarted(kind: ServerKind, options: ServerOptions) -> anyhow::Result<Server> {
        if kind == ServerKind::Mast && !mast_binary_exists() {
            bail!(
                "the Mast binary is not at {}: build it with `cargo build -p mast` first \
                 (or point MAST_BIN at it)",
                mast_binary().display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("mast-conformance-{kind}-"))
            .tempdir()?;
        Ok(Server {
            kind,
            name: options.name.clone().unwrap_or_else(|| "conformance".into()),
            options,
            client_port: free_port(),
            peer_port: free_port(),
            dir: Some(dir),
            child: None,
        })
    }

    /// The peer URL, `http://127.0.0.1:<peer port>` (`https://` with peer TLS).
    pub fn peer_url(&self) -> String {
        let scheme = if self.options.peer_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.peer_port)
    }

    /// Starts the process without waiting for it to answer.
    ///
    /// # Errors
    /// When the process cannot be spawned.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = self.command()?;
        let child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits (at most [`STARTUP_TIMEOUT`]) until a spawned server answers.
    ///
    /// # Errors
    /// When it exits or does not answer in time; the error carries its log's end.
    pub fn wait_ready(&mut self) -> anyhow::Result<()> {
        self.wait_answering()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts a server of `kind` with `options` and waits until it answers.
    ///
    /// Retries up to three times with fresh ports when the server reports "address already in
    /// use" (another process may have taken a port that [`free_port`] saw free).
    pub fn try_start_with(kind: ServerKind, options: ServerOptions) -> anyhow::Result<Server> {
        let name = options.name.clone().unwrap_or_else(|| "conformance".into());
        if kind == ServerKind::Mast && !mast_binary_exists() {
            bail!(
                "the Mast binary is not at {}: build it with `cargo build -p mast` first \
                 (or point MAST_BIN at it)",
                mast_binary().display()
            );
        }
        let mut last_error = None;
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix(&format!("mast-conformance-{kind}-"))
                .tempdir()?;
            let mut server = Server {
                kind,
                name: name.clone(),
                options: options.clone(),
                client_port: free_port(),
                peer_port: free_port(),
                dir: Some(dir),
                child: None,
            };
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                // Another process took a port between `free_port` and the server's bind.
                Err(e)
                    if format!("{e:#}")
                        .to_lowercase()
                        .contains("address already in use") =>
                {
                    last_error = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// Which binary this server runs.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// The member name given on the command line.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client URL, `http://127.0.0.1:<port>` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The options the server was started with; changes apply at the next [`Server::restart`].
    pub fn options_mut(&mut self) -> &mut ServerOptions {
        &mut self.options
    }

    /// The etcdctl flags the harness adds to its own calls: TLS files, if any.
    pub fn etcdctl_flags(&self) -> Vec<String> {
        self.options
            .tls
            .as_ref()
            .map(ServerTls::etcdctl_flags)
            .unwrap_or_default()
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The server's temporary directory; tests may put their own files here (it is removed with
    /// the server).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("dir lives as long as the server")
            .path()
    }

    /// The data directory passed as `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir().join("data")
    }

    /// The file that receives the server's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("server.log")
    }

    /// The server's log (all of it; empty if unreadable).
    pub fn log(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the server's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The running process's PID, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `etcdctl <args>` against this server, with `stdin`, bounded by [`ETCDCTL_TIMEOUT`]
    /// (with the TLS flags of [`Server::etcdctl_flags`] first).
    pub fn etcdctl<S: AsRef<str>>(&self, args: &[S], stdin: Option<&[u8]>) -> Output {
        self.etcdctl_env(args, &[] as &[(&str, &str)], stdin)
    }

    /// As [`Server::etcdctl`], with extra environment variables (such as `ETCDCTL_USER`).
    pub fn etcdctl_env<S: AsRef<str>, K: AsRef<str>, V: AsRef<str>>(
        &self,
        args: &[S],
        env: &[(K, V)],
        stdin: Option<&[u8]>,
    ) -> Output {
        let all = self.with_flags(args);
        etcdctl_env(&self.endpoint(), &all, env, stdin, ETCDCTL_TIMEOUT)
    }

    fn with_flags<S: AsRef<str>>(&self, args: &[S]) -> Vec<String> {
        let mut all = self.etcdctl_flags();
        all.extend(args.iter().map(|a| a.as_ref().to_owned()));
        all
    }

    /// Starts `etcdctl <args>` against this server without waiting; stop it with
    /// [`Background::stop`] or [`Background::finish`].
    pub fn spawn_etcdctl<S: AsRef<str>>(&self, args: &[S]) -> Background {
        self.spawn_etcdctl_env(args, &[] as &[(&str, &str)])
    }

    /// As [`Server::spawn_etcdctl`], with extra environment variables.
    pub fn spawn_etcdctl_env<S: AsRef<str>, K: AsRef<str>, V: AsRef<str>>(
        &self,
        args: &[S],
        env: &[(K, V)],
    ) -> Background {
        let mut cmd = etcdctl_command(&self.endpoint(), &self.with_flags(args));
        for (k, v) in env {
            cmd.env(k.as_ref(), v.as_ref());
        }
        Background::spawn(cmd, None).unwrap_or_else(|e| {
            panic!(
                "cannot run etcdctl at {}: {e:#}",
                etcdctl_binary().display()
            )
        })
    }

    /// Kills the server with SIGKILL (no chance to flush anything) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs (gracefully), then starts it again on the same data directory
    /// and ports, and waits until it answers.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn_and_wait()
    }

    /// Stops the server: SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            if let Some(pid) = i32::try_from(child.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let deadline = Instant::now() + STOP_GRACE;
            while let Ok(None) = child.try_wait() {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.wait();
    }

    fn command(&self) -> anyhow::Result<Command> {
        let client_url = self.endpoint();
        let mut cmd = match self.kind {
            ServerKind::Mast => {
                let mut cmd = Command::new(mast_binary());
                // The log goes to a file: no terminal colors in it.
                cmd.arg("serve").env("NO_COLOR", "1");
                cmd
            }
            ServerKind::Etcd => Command::new(etcd_binary()),
        };
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url);
        let peer_url = self.peer_url();
        match &self.options.member {
            Some(m) => {
                cmd.arg("--listen-peer-urls")
                    .arg(&peer_url)
                    .arg("--initial-advertise-peer-urls")
                    .arg(&peer_url)
                    .arg("--initial-cluster")
                    .arg(&m.initial_cluster)
                    .arg("--initial-cluster-token")
                    .arg(&m.token)
                    .arg("--initial-cluster-state")
                    .arg(&m.state);
            }
            None if self.kind == ServerKind::Etcd => {
                cmd.arg("--listen-peer-urls")
                    .arg(&peer_url)
                    .arg("--initial-advertise-peer-urls")
                    .arg(&peer_url)
                    .arg("--initial-cluster")
                    .arg(format!("{}={peer_url}", self.name));
            }
            None => {}
        }
        if let Some(tls) = &self.options.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert_file)
                .arg("--key-file")
                .arg(&tls.key_file);
            if let Some(ca) = &tls.trusted_ca_file {
                cmd.arg("--trusted-ca-file").arg(ca);
            }
            if tls.client_cert_auth {
                cmd.arg("--client-cert-auth");
            }
        }
        if let Some(tls) = &self.options.peer_tls {
            cmd.arg("--peer-cert-file")
                .arg(&tls.cert_file)
                .arg("--peer-key-file")
                .arg(&tls.key_file)
                .arg("--peer-trusted-ca-file")
                .arg(&tls.trusted_ca_file);
            if tls.client_cert_auth {
                cmd.arg("--peer-client-cert-auth");
            }
        }
        cmd.args(&self.options.args);
        // Both servers read their flags from the environment too (`MAST_*`, `ETCD_*`): only
        // what the test asks for may reach them, not a developer's `MAST_ROOT_PASSWORD`.
        for (name, _) in std::env::vars_os() {
            let name_text = name.to_string_lossy();
            if name_text.starts_with("MAST_") || name_text.starts_with("ETCD_") {
                cmd.env_remove(&name);
            }
        }
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(cmd)
    }

    /// Spawns the process and waits (at most [`STARTUP_TIMEOUT`]) until it answers. On failure
    /// the process is stopped and the error carries the end of its log.
    fn spawn_and_wait(&mut self) -> anyhow::Result<()> {
        self.spawn()?;
        self.wait_answering()
    }

    fn wait_answering(&mut self) -> anyhow::Result<()> {
        let cmd = self.command()?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port));
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                bail!(
                    "{} exited during startup with {status}; command: {cmd:?}\n--- log tail ---\n{}",
                    self.kind,
                    self.log_tail(30)
                );
            }
            if Instant::now() >= deadline {
                self.stop();
                bail!(
                    "{} did not answer on {} within {STARTUP_TIMEOUT:?}; command: {cmd:?}\n--- log tail ---\n{}",
                    self.kind,
                    self.endpoint(),
                    self.log_tail(30)
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && self.answers()
            {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the server answers `etcdctl endpoint health`, or failing that a plain Range (a
    /// server whose health check is not done yet but serves KV still counts as up). With auth
    /// on, a Range refused by the server itself (`etcdserver: user name is empty`) counts too.
    fn answers(&self) -> bool {
        let endpoint = self.endpoint();
        let probe = |args: &[&str]| {
            let mut all = self.etcdctl_flags();
            all.extend(["--dial-timeout=1s", "--command-timeout=2s"].map(String::from));
            all.extend(args.iter().map(|a| (*a).to_owned()));
            etcdctl(&endpoint, &all, None, Duration::from_secs(5))
        };
        if probe(&["endpoint", "health"]).success() {
            return true;
        }
        let get = probe(&["get", "conformance-readiness-probe"]);
        get.success() || get.stderr.contains("etcdserver: user name is empty")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!(
                "--- {} log tail ({}) ---\n{}\n--- end of {} log ---",
                self.kind,
                self.log_path().display(),
                self.log_tail(40),
                self.kind
            );
        }
        if std::env::var_os("MAST_CONFORMANCE_KEEP").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("keeping {} directory {}", self.kind, dir.keep().display());
        }
    }
}
