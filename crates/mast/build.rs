//! Link-time code layout of the release server binary.
//!
//! `link/order.txt` lists the functions the server runs when it starts and serves its common
//! requests, hottest first (recorded by `scripts/orderfile.sh` under valgrind). For a release
//! build on Linux with glibc, this script turns the list into a linker script that gathers those
//! functions' sections (rustc puts every function in its own `.text.<symbol>` section) into one
//! output section, `.text.mast_hot`, placed just before `.text` (`INSERT BEFORE`, so the
//! linker's default script stays in charge of everything else; GNU ld reads it as an
//! addition to its default script).
//!
//! Why: the kernel maps a binary's code in windows of 64 KiB around each page a process touches.
//! With the functions in the compiler's order, the few thousand a server runs are spread over
//! all 21 MB of code, and about 15 MiB of it was resident in an idle server; gathered, the same
//! work touches a fraction of that, and the hot paths share fewer pages and TLB entries.
//!
//! Everything else builds as before: debug builds, other targets, or `MAST_NO_ORDER_FILE=1`
//! use the default layout. Names in the list that no longer exist (after a change of code or
//! dependencies) match nothing and are skipped by the linker; the layout then degrades until
//! the list is recorded again.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let order = dir.join("link").join("order.txt");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-env-changed=MAST_NO_ORDER_FILE");

    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "gnu");
    let wanted = std::env::var_os("MAST_NO_ORDER_FILE").is_none_or(|v| v.is_empty() || v == "0");
    if !(release && linux_gnu && wanted) {
        return;
    }
    let Ok(list) = std::fs::read_to_string(&order) else {
        println!("cargo:warning=no {}: default code layout", order.display());
        return;
    };
    let mut script = String::from("SECTIONS\n{\n  .text.mast_hot :\n  {\n");
    let mut n = 0usize;
    for name in list.lines().map(str::trim) {
        // Comments, blank lines, and anything that is not a plain symbol name (a quote or a
        // space would end the pattern early) are skipped.
        if name.is_empty() || name.starts_with('#') || !name.bytes().all(symbol_byte) {
            continue;
        }
        let _ = writeln!(script, "    *(\".text.{name}\")");
        n += 1;
    }
    script.push_str("  }\n}\nINSERT BEFORE .text;\n");
    if n == 0 {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("hot.ld");
    if let Err(e) = std::fs::write(&out, script) {
        println!(
            "cargo:warning=cannot write {}: {e}; default code layout",
            out.display()
        );
        return;
    }
    println!("cargo:rustc-link-arg-bin=mast=-Wl,-T,{}", out.display());
}

/// Bytes of a mangled Rust symbol (legacy `_ZN…E` names use `$` and `.`; v0 `_R…` names are
/// alphanumeric and `_`).
fn symbol_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'.')
}
