//! Login throttling: Mast slows down password guessing through Authenticate.
//!
//! The rule under test: after 3 failed attempts for a user (from one client address), each
//! further attempt waits for a slot spaced 0.5 s after the previous one, the spacing doubling per
//! failure (up to 30 s); the right password still logs in (after its wait), and a success clears
//! the record, so the next attempt is fast again. Every client here is 127.0.0.1.
//!
//! Timing bounds are generous: a password check itself (bcrypt, cost 10) takes roughly
//! 50–300 ms depending on the build. etcd 3.4 has no throttling, so this runs against Mast only.
//! The test takes about 10 s. Build the server first: `cargo build -p mast`.

use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use mast_conformance::{Server, ServerKind, ServerOptions};
use tonic::Code;

const PASSWORD: &str = "guang";

/// One Authenticate call: whether it succeeded, and how long it took.
async fn attempt(client: &Client, password: &str) -> (bool, Duration) {
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(40),
        client
            .auth_client()
            .authenticate("root".into(), password.into()),
    )
    .await
    .expect("Authenticate answers within 40 s");
    let took = started.elapsed();
    match r {
        Ok(_) => (true, took),
        Err(etcd_client::Error::GRpcStatus(s)) => {
            assert_eq!(
                (s.code(), s.message()),
                (
                    Code::InvalidArgument,
                    "etcdserver: authentication failed, invalid user ID or password"
                ),
                "a throttled failure is still etcd's plain authentication error"
            );
            (false, took)
        }
        Err(e) => panic!("Authenticate: unexpected error {e}"),
    }
}

#[tokio::test]
async fn repeated_wrong_passwords_are_slowed_down() {
    let options = ServerOptions::default().env("MAST_ROOT_PASSWORD", PASSWORD);
    let server =
        tokio::task::spawn_blocking(move || Server::try_start_with(ServerKind::Mast, options))
            .await
            .expect("start task")
            .unwrap_or_else(|e| panic!("could not start mast: {e:#}"));
    let client = Client::connect(
        [server.endpoint()],
        Some(ConnectOptions::new().with_timeout(Duration::from_secs(40))),
    )
    .await
    .expect("connect");
    let test_started = Instant::now();

    // The first three failures are free: only the password check's own time.
    let mut times = Vec::new();
    for _ in 0..3 {
        let (ok, took) = attempt(&client, "wrong").await;
        assert!(!ok);
        times.push(took);
    }
    assert!(
        times.iter().all(|t| *t < Duration::from_secs(1)),
        "the first 3 failures are not slowed: {times:?}"
    );
    // Then 0.5 s, 1 s, 2 s between attempts.
    let (ok, fourth) = attempt(&client, "wrong").await;
    assert!(!ok);
    let (ok, fifth) = attempt(&client, "wrong").await;
    assert!(!ok);
    assert!(
        fourth >= Duration::from_millis(400),
        "the 4th attempt waits about 0.5 s: {fourth:?} (first three: {times:?})"
    );
    assert!(
        fifth >= Duration::from_millis(900),
        "the 5th attempt waits about 1 s: {fifth:?}"
    );
    assert!(
        fifth > fourth,
        "the wait grows: 4th {fourth:?}, 5th {fifth:?}"
    );
    // The right password still works, after its own wait (about 2 s after the 5th failure).
    let (ok, right) = attempt(&client, PASSWORD).await;
    assert!(ok, "the right password logs in despite the failures");
    assert!(
        right >= Duration::from_millis(1800),
        "the right password is throttled too (the password is not checked before the wait): \
         {right:?}"
    );
    // The success cleared the record: fast again, for a wrong and a right password.
    let (ok, after_wrong) = attempt(&client, "wrong").await;
    assert!(!ok);
    let (ok, after_right) = attempt(&client, PASSWORD).await;
    assert!(ok);
    assert!(
        after_wrong < Duration::from_secs(1) && after_right < Duration::from_secs(1),
        "after a success attempts are fast again: {after_wrong:?}, {after_right:?}"
    );
    eprintln!(
        "Authenticate times: failures 1-3 {times:?}, 4th {fourth:?}, 5th {fifth:?}, right \
         password {right:?}, then {after_wrong:?} (wrong) and {after_right:?} (right)"
    );
    assert!(
        test_started.elapsed() < Duration::from_secs(20),
        "the whole sequence stays well below the 30 s cap"
    );
    let log = server.log();
    assert!(
        log.contains("authentication failed"),
        "failures are logged:\n{log}"
    );
    assert!(
        !log.contains(PASSWORD),
        "the password never appears in the log:\n{log}"
    );
}
