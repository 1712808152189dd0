//! A filling disk: Mast's data directory on a small tmpfs (mounted by this test, so it needs
//! root) that a filler file has nearly filled. Puts of 100 kB are acknowledged until the free
//! space would drop under `--disk-reserve-bytes`; then they are refused with etcd's
//! `etcdserver: mvcc: database space exceeded`, the member's `NOSPACE` alarm is raised
//! (`etcdctl alarm list`), reads keep working, the disk itself never runs out (no `ENOSPC`
//! in the server's log), and after a `kill -9` the store opens with every acknowledged put.
//! Once the filler is removed and the alarm disarmed, writes succeed again.

use std::process::Command;
use std::time::Duration;

use etcd_client::{AlarmAction, AlarmType, Client, ConnectOptions};
use mast_conformance::{Server, ServerKind, ServerOptions, mast_binary_exists};

const NOSPACE: &str = "etcdserver: mvcc: database space exceeded";
const TMPFS_BYTES: u64 = 160 * 1024 * 1024;
const RESERVE_BYTES: u64 = 32 * 1024 * 1024;
/// Room left for puts once the filler is written.
const ROOM_BYTES: u64 = 24 * 1024 * 1024;
const VALUE_BYTES: usize = 100_000;

/// Unmounts the tmpfs when the test ends, however it ends.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_bytes(dir: &std::path::Path) -> u64 {
    let st = rustix::fs::statvfs(dir).expect("statvfs");
    st.f_bavail * st.f_frsize
}

/// Writes `bytes` of data to `path` (tmpfs keeps every page written).
fn fill(path: &std::path::Path, bytes: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0x5au8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).expect("write filler");
        left -= n as u64;
    }
    f.sync_all().expect("sync filler");
}

fn value(i: usize) -> String {
    let head = format!("put-{i:05}-");
    format!("{head}{}", "v".repeat(VALUE_BYTES - head.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filling_disk_raises_nospace_and_loses_nothing() {
    if !is_root() {
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    }
    assert!(mast_binary_exists(), "build the mast binary first");
    let options = ServerOptions::default().args(&[
        format!("--disk-reserve-bytes={RESERVE_BYTES}"),
        "--quota-backend-bytes=-1".to_string(),
    ]);
    let mut server = Server::unstarted(ServerKind::Mast, options).expect("server");
    let data = server.data_dir();
    std::fs::create_dir_all(&data).expect("data dir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(format!("size={TMPFS_BYTES}"))
        .arg("tmpfs")
        .arg(&data)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mount -t tmpfs failed");
    let _mount = Mount(data.clone());
    server.spawn().expect("spawn");
    server.wait_ready().expect("ready");

    let filler = data.join("filler");
    let free = free_bytes(&data);
    assert!(
        free > RESERVE_BYTES + ROOM_BYTES,
        "tmpfs too small: {free} free"
    );
    fill(&filler, free - RESERVE_BYTES - ROOM_BYTES);

    let endpoint = server.endpoint();
    let connect = || async {
        Client::connect(
            [endpoint.clone()],
            Some(ConnectOptions::new().with_timeout(Duration::from_secs(10))),
        )
        .await
        .expect("connect")
    };
    let mut c = connect().await;
    let mut acked = 0usize;
    let mut refusal = None;
    for i in 0..2000 {
        match c.put(format!("k/{i:05}"), value(i), None).await {
            Ok(_) => acked += 1,
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let refusal = refusal.expect("a put refused within 2000 puts of 100 kB");
    assert!(
        refusal.to_string().contains(NOSPACE),
        "refused with {refusal}"
    );
    assert!(acked > 10, "only {acked} puts before the reserve");
    eprintln!(
        "{acked} puts acknowledged; {} bytes free at the refusal",
        free_bytes(&data)
    );

    // The alarm, as etcdctl shows it; reads still work.
    let alarms = server.etcdctl(&["alarm", "list"], None);
    assert!(alarms.success(), "alarm list: {}", alarms.stderr);
    assert!(alarms.stdout.contains("alarm:NOSPACE"), "{}", alarms.stdout);
    let got = c.get("k/00000", None).await.expect("read under NOSPACE");
    assert_eq!(got.kvs()[0].value_str().expect("utf-8"), value(0));
    assert!(
        c.put("small", "x", None)
            .await
            .is_err_and(|e| e.to_string().contains(NOSPACE)),
        "a small put is refused too while the alarm is raised"
    );
    drop(c);

    // Killed at once: the store opens on the nearly full disk with every acknowledged put.
    server.kill9();
    server.spawn().expect("respawn");
    server.wait_ready().expect("ready after kill -9");
    let log = server.log();
    assert!(
        !log.contains("No space left on device") && !log.contains("os error 28"),
        "the disk ran out: {}",
        server.log_tail(40)
    );
    let mut c = connect().await;
    let all = c
        .get(
            "k/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await
        .expect("prefix read");
    assert_eq!(all.kvs().len(), acked, "acknowledged puts after kill -9");
    for i in [0, acked / 2, acked - 1] {
        let got = c.get(format!("k/{i:05}"), None).await.expect("get");
        assert_eq!(
            got.kvs()[0].value_str().expect("utf-8"),
            value(i),
            "k/{i:05}"
        );
    }

    // Room again: disarm, and writes succeed.
    std::fs::remove_file(&filler).expect("remove filler");
    let listed = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list");
    assert_eq!(listed.alarms().len(), 1, "the alarm survives a restart");
    let disarm = server.etcdctl(&["alarm", "disarm"], None);
    assert!(disarm.success(), "alarm disarm: {}", disarm.stderr);
    c.put("small", "x", None).await.expect("put after disarm");
    server.stop();
}
