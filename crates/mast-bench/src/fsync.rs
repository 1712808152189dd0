//! `fsync`: the disk's durable-write rate, the physical limit of every durable server here.
//!
//! A loop writes `--block-size` bytes at the end of a scratch file in `--dir` and calls
//! `fdatasync` (Rust's `File::sync_data`), as a write-ahead log does, until `--total` syncs or
//! `--duration`. The file wraps to empty after 64 MiB. A server that fsyncs each write can do
//! at most this many writes per second; group commit (many writes per fsync) is how a server
//! goes past it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::json;

use crate::stats::{Recorder, Report};
use crate::workload::params;

/// Largest the scratch file grows before it is truncated.
const WRAP_BYTES: u64 = 64 * 1024 * 1024;

/// Flags of `fsync`.
#[derive(Args, Debug, Clone)]
pub struct FsyncArgs {
    /// Directory to measure (the scratch file is made and removed there).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Bytes written before each sync.
    #[arg(long, default_value_t = 4096)]
    block_size: usize,
    /// Most syncs.
    #[arg(long, default_value_t = 100_000)]
    total: u64,
    /// Longest time to run.
    #[arg(long, default_value = "5s", value_parser = crate::workload::parse_duration)]
    duration: Duration,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Removes the scratch file however the run ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `fsync`.
pub fn fsync(args: &FsyncArgs) -> anyhow::Result<Report> {
    let path = args
        .dir
        .join(format!(".mast-bench-fsync-{}", std::process::id()));
    let scratch = Scratch(path);
    let mut file = open(&scratch.0)?;
    let block = vec![0x5au8; args.block_size.max(1)];
    let mut rec = Recorder::new();
    let mut written = 0u64;
    let mut syncs = 0u64;
    let start = Instant::now();
    while syncs < args.total && start.elapsed() < args.duration {
        if written >= WRAP_BYTES {
            file.set_len(0).context("truncating the scratch file")?;
            file.sync_all().context("fsync")?;
            file = open(&scratch.0)?;
            written = 0;
        }
        let t0 = Instant::now();
        file.write_all(&block).context("write")?;
        file.sync_data().context("fdatasync")?;
        rec.record(t0.elapsed());
        written += block.len() as u64;
        syncs += 1;
    }
    let elapsed = start.elapsed();
    drop(file);
    drop(scratch);
    let mut report = Report::new("fsync", syncs, 0, elapsed, rec.summary());
    report.endpoints = vec![display(&args.dir)];
    report.params = params([
        ("dir", json!(display(&args.dir))),
        ("block_size", json!(args.block_size)),
    ]);
    report
        .extra
        .insert("fsyncs_per_sec".into(), json!(report.ops_per_sec));
    Ok(report)
}

fn open(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

fn display(p: &Path) -> String {
    p.canonicalize()
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_and_cleans_up() {
        let dir =
            std::env::temp_dir().join(format!("mast-bench-fsync-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let args = FsyncArgs {
            dir: dir.clone(),
            block_size: 512,
            total: 20,
            duration: Duration::from_secs(5),
            json: true,
        };
        let r = fsync(&args).unwrap();
        assert_eq!(r.ops, 20);
        assert!(r.ops_per_sec > 0.0);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir(&dir).unwrap();
    }
}
