//! Differential test: one `etcdctl` 3.4 script, run step by step against a real etcd 3.4 and
//! against Mast. After normalizing what must differ between two servers (IDs, terms, timings,
//! sizes), every step must print the same bytes and exit with the same code.
//!
//! Run it with `cargo build -p mast && cargo test -p mast-conformance --test etcdctl_diff`.
//!
//! The runner, its switches (`MAST_DIFF_AGAINST_ETCD=1` proves the script etcd against etcd,
//! `MAST_DIFF_KEEP_GOING`, `MAST_DIFF_TRACE`, `MAST_DIFF_NO_NORMALIZE`) and every normalization
//! with the reason it is needed are in [`mast_conformance::script`]. The auth part of the
//! script is `etcdctl_auth_diff.rs`.

use std::time::Duration;

use mast_conformance::script::{self, Norm, Setup, Step, ctl, sleep, txn, watch, words};

/// The script. Revisions in comments are the store revision after the step.
fn script() -> Vec<Step> {
    use Norm::*;
    let mut s = vec![
        // --- Put and Range -----------------------------------------------------------------
        ctl("fresh store is at revision 1", "get foo -w json")
            .json()
            .ok(),
        ctl("put creates (rev 2)", "put foo bar").ok(),
        ctl("put updates (rev 3)", "put foo baz").ok(),
        ctl("rev 4", "put foo/a 1").ok(),
        ctl("rev 5", "put foo/b 2").ok(),
        ctl("rev 6", "put foo/c 3").ok(),
        ctl("rev 7", "put fop x").ok(),
        ctl("rev 8", "put zoo z").ok(),
        ctl("single key, simple format", "get foo").ok(),
        ctl(
            "single key, JSON: create/mod revision, version",
            "get foo -w json",
        )
        .json()
        .ok(),
        ctl("prefix", "get foo --prefix").ok(),
        ctl("prefix, JSON", "get foo --prefix -w json").json().ok(),
        ctl("from-key", "get foo/ --from-key --keys-only").ok(),
        ctl("explicit range end (exclusive)", "get foo/a foo/c").ok(),
        ctl(
            "historical read: old value, header at current revision",
            "get foo --rev 2 -w json",
        )
        .json()
        .ok(),
        ctl(
            "historical read at the update",
            "get foo --rev 3 --print-value-only",
        )
        .ok(),
        ctl(
            "historical read before creation",
            "get foo/a --rev 3 -w json",
        )
        .json()
        .ok(),
        ctl(
            "limit: more=true, count ignores the limit",
            "get foo --prefix --limit 2 -w json",
        )
        .json()
        .ok(),
        ctl("all keys", "get \"\" --prefix --keys-only").ok(),
        ctl("print-value-only", "get foo --prefix --print-value-only").ok(),
        ctl(
            "keys-only, JSON (no value field)",
            "get foo --prefix --keys-only -w json",
        )
        .json()
        .ok(),
        ctl("missing key: count 0", "get nokey -w json").json().ok(),
        ctl("serializable read", "get foo --consistency=s").ok(),
        ctl("fields format", "get foo/b -w fields")
            .norm(Fields)
            .ok(),
        // --- Sorting: data whose key, create, mod, value and version orders all differ --------
        ctl("rev 9", "put sort/b v1").ok(),
        ctl("rev 10", "put sort/a v3").ok(),
        ctl("rev 11", "put sort/c v2").ok(),
        ctl("rev 12", "put sort/a v0").ok(),
        ctl("rev 13", "put sort/b v4").ok(),
        ctl("rev 14", "put sort/b v5").ok(),
        ctl("rev 15: the smallest value on the last key", "put sort/d a").ok(),
    ];
    for target in ["KEY", "CREATE", "MODIFY", "VALUE", "VERSION"] {
        for order in ["", " --order=ASCEND", " --order=DESCEND"] {
            s.push(
                ctl(
                    "sort",
                    &format!("get sort/ --prefix --sort-by={target}{order}"),
                )
                .ok(),
            );
        }
    }
    s.extend([
        ctl("order without sort-by sorts by key", "get sort/ --prefix --order=DESCEND").ok(),
        ctl("sort with limit, no order", "get sort/ --prefix --sort-by=VALUE --limit 2").ok(),
        ctl("sort with limit and order", "get sort/ --prefix --sort-by=VALUE --order=ASCEND --limit 2").ok(),
        ctl(
            "sort descending with limit, JSON",
            "get sort/ --prefix --sort-by=VERSION --order=DESCEND --limit 2 -w json",
        )
            .json()
            .ok(),
        ctl(
            "sort by modify descending, keys only",
            "get \"\" --prefix --sort-by=MODIFY --order=DESCEND --keys-only",
        )
        .ok(),
        // --- Put options -------------------------------------------------------------------
        ctl("prev-kv prints the old pair (rev 16)", "put --prev-kv foo qux").ok(),
        ctl("prev-kv on a new key prints nothing more (rev 17)", "put --prev-kv newkey v").ok(),
        ctl("prev-kv, JSON (rev 18)", "put --prev-kv foo quux -w json").json().ok(),
        ctl("ignore-value keeps the value, bumps version (rev 19)", "put --ignore-value foo").ok(),
        ctl("after ignore-value", "get foo -w json").json().ok(),
        ctl("ignore-value on a missing key", "put --ignore-value nokey").fails(),
        ctl("ignore-lease on a key without lease (rev 20)", "put --ignore-lease foo v19").ok(),
        ctl("ignore-lease on a missing key", "put --ignore-lease nokey v").fails(),
        ctl("same value again still bumps (rev 21)", "put foo v19").ok(),
        ctl("after failed puts: revision 21", "get foo -w json").json().ok(),
        // --- DeleteRange -------------------------------------------------------------------
        ctl("deleting nothing prints 0 and keeps the revision", "del nokey").ok(),
        ctl("revision still 21", "get foo -w json").json().ok(),
        ctl("del with prev-kv (rev 22)", "del foo/a --prev-kv").ok(),
        ctl("del prefix: count (rev 23)", "del foo --prefix").ok(),
        ctl("del range with prev-kv, JSON (rev 24)", "del --prev-kv sort/a sort/c -w json").json().ok(),
        ctl("del from-key matching nothing", "del zz --from-key").ok(),
        ctl("del from-key (rev 25)", "del z --from-key").ok(),
        ctl("what is left", "get \"\" --prefix -w json").json().ok(),
        // --- Txn -----------------------------------------------------------------------------
        ctl("rev 26", "put tk v1").ok(),
        txn(
            "mod and value compares true: success branch, JSON (rev 27)",
            "-w json",
            "mod(\"tk\") > \"0\"\nvalue(\"tk\") = \"v1\"\n\nput tk v2\nget tk\ndel nokey\n\nput tk failed\n\n",
        )
        .json()
        .ok(),
        txn(
            "value compare false: failure branch (rev 28)",
            "",
            "value(\"tk\") = \"v1\"\n\nput tk never\n\nput tk2 f\nget tk\n\n",
        )
        .ok(),
        txn("create == 0 means absent (rev 29)", "", "create(\"absent\") = \"0\"\n\nput absent here\n\n\n").ok(),
        txn(
            "create == 0 fails once present",
            "-w json",
            "create(\"absent\") = \"0\"\n\nput absent again\n\n\n",
        )
        .json()
        .ok(),
        txn("version compare (rev 30)", "", "version(\"tk\") = \"2\"\n\nput tk v3\nget --prefix tk\n\n\n").ok(),
        txn("version of a missing key is 0", "-w json", "version(\"missing\") = \"0\"\n\nget missing\n\n\n")
            .json()
            .ok(),
        txn(
            "value compare on a missing key is false even with !=",
            "-w json",
            "value(\"missing\") != \"x\"\n\n\n\nget tk\n\n",
        )
            .json()
            .ok(),
        txn(
            "mod less-than and several compares",
            "-w json",
            "mod(\"tk\") < \"1000\"\nversion(\"tk\") > \"1\"\ncreate(\"tk\") = \"26\"\n\nget tk\n\n\n",
        )
            .json()
            .ok(),
        txn(
            "inner headers: a get before the put sees the old revision, after it the new (rev 31)",
            "-w json",
            "mod(\"tk\") > \"0\"\n\nget tk\nput --prev-kv tk v4\nget tk\ndel --prev-kv tk2\n\n\n",
        )
        .json()
        .ok(),
        txn("read-only txn does not bump the revision", "-w json", "\nget tk\nget nokey\n\n\n").json().ok(),
        txn("empty txn", "", "\n\n\n").ok(),
        txn("empty txn, JSON", "-w json", "\n\n\n").json().ok(),
        txn("same key put twice", "", "\nput dup 1\nput dup 2\n\n\n").fails(),
        txn("same key put and deleted", "", "\nput dup 1\ndel dup\n\n\n").fails(),
        ctl("revision still 31", "get tk -w json").json().ok(),
        // --- Watch: replay (before any compaction) --------------------------------------------
        watch("replay all history", "watch --rev 1 --prefix \"\"", &[]),
        watch("replay with prev-kv", "watch --rev 1 --prefix \"\" --prev-kv", &[]),
        watch("replay, JSON", "watch --rev 1 --prefix \"\" -w json", &[]).norm(WatchJson),
        watch("replay of one key from a revision", "watch --rev 21 foo", &[]),
        watch(
            "live events on one key",
            "watch tk --rev {next_rev}",
            &["put tk live1", "del tk", "put tk live2"],
        ),
        watch(
            "live events with prev-kv on a prefix",
            "watch --prefix w/ --prev-kv --rev {next_rev}",
            &["put w/1 a", "put w/1 b", "put w/2 c", "del w/ --prefix"],
        ),
        ctl("after the live watches (rev 38)", "get \"\" --prefix --keys-only -w json").json().ok(),
        // --- Leases ------------------------------------------------------------------------
        ctl("grant, the longest TTL first", "lease grant 300").capture("L3").ok(),
        ctl("grant", "lease grant 100").capture("L1").ok(),
        ctl("TTL above the maximum", "lease grant 9000000001").fails(),
        ctl("TTL below the minimum is raised to 2", "lease grant 1 -w json").json().capture("L2").ok(),
        ctl("grants do not bump the revision", "get nokey -w json").json().ok(),
        ctl("attach (rev 39)", "put --lease={lease:L1} lk1 v").ok(),
        ctl("attach (rev 40)", "put --lease {lease:L1} lk2 v").ok(),
        ctl("attach to the short lease (rev 41)", "put --lease {lease:L2} short v").ok(),
        ctl("the key carries the lease", "get lk1 -w json").json().ok(),
        ctl("timetolive with keys", "lease timetolive {lease:L1} --keys").norm(TimeToLive).ok(),
        ctl("timetolive with keys, JSON", "lease timetolive {lease:L1} --keys -w json").norm(TimeToLive).ok(),
        ctl("timetolive without keys", "lease timetolive {lease:L3}").norm(TimeToLive).ok(),
        ctl("keep-alive answers the granted TTL", "lease keep-alive --once {lease:L1}").ok(),
        ctl("keep-alive, JSON", "lease keep-alive --once {lease:L1} -w json").json().ok(),
        ctl("ignore-lease keeps the lease (rev 42)", "put --ignore-lease lk2 v2").ok(),
        ctl("lease kept", "get lk2 -w json").json().ok(),
        sleep("let the 2 s lease expire (etcd checks expiry every 500 ms)", Duration::from_millis(4500)),
        ctl("expiry deleted its key in one revision (rev 43)", "get short -w json").json().ok(),
        ctl("expired lease", "lease timetolive {lease:L2}").norm(TimeToLive).ok(),
        ctl("lease list is ordered by expiry", "lease list").norm(LeaseList).ok(),
        ctl("lease list, JSON", "lease list -w json").norm(LeaseList).ok(),
        ctl("revoke deletes the keys (rev 44)", "lease revoke {lease:L1}").ok(),
        ctl("keys gone", "get lk --prefix -w json").json().ok(),
        ctl("revoke twice", "lease revoke {lease:L1}").fails(),
        ctl("put with a revoked lease", "put --lease {lease:L1} x y").fails(),
        ctl("timetolive of a revoked lease, JSON", "lease timetolive {lease:L1} --keys -w json").norm(TimeToLive).ok(),
        ctl("keep-alive of a revoked lease (TTL 0 on the stream)", "lease keep-alive --once {lease:L1}").code(2),
        ctl("unknown lease: timetolive", "lease timetolive 1234").ok(),
        ctl("unknown lease: revoke", "lease revoke 1234").fails(),
        ctl("unknown lease: keep-alive", "lease keep-alive --once 1234").code(2),
        ctl("unknown lease: put", "put --lease 1234 k v").fails(),
        ctl("revoking a lease without keys does not bump the revision", "lease revoke {lease:L3}").ok(),
        ctl("revision still 44", "get nokey -w json").json().ok(),
        ctl("no leases left", "lease list").norm(LeaseList).ok(),
        // --- Compaction ----------------------------------------------------------------------
        ctl("rev 45", "put c 1").ok(),
        ctl("rev 46", "put c 2").ok(),
        ctl("rev 47", "put c 3").ok(),
        ctl("compact at 46", "compaction 46").ok(),
        ctl("the compact revision itself stays readable", "get c --rev 46 -w json").json().ok(),
        ctl("below the compact revision", "get c --rev 45").fails(),
        ctl("compact again at the same revision", "compaction 46").fails(),
        ctl("compact an older revision", "compaction 30").fails(),
        ctl("compact a future revision", "compaction 999999").fails(),
        ctl("compaction does not bump the revision", "get c -w json").json().ok(),
        watch("watch from a compacted revision is canceled", "watch --rev 45 c", &[]).code(5),
        watch("watch from the compact revision replays", "watch --rev 46 c", &[]),
        ctl("physical compaction", "compaction --physical 47").ok(),
        ctl("hashkv reports the compact revision", "endpoint hashkv -w json").norm(HashKv).ok(),
        // --- Bad input -----------------------------------------------------------------------
        ctl("empty key on put", "put \"\" v").fails(),
        ctl("empty key on get", "get \"\"").fails(),
        ctl("empty key on del", "del \"\"").fails(),
        ctl("future revision", "get c --rev 999999").fails(),
        ctl("a 1.6 MiB value is over the 1.5 MiB request limit", "put big")
            .stdin(vec![b'x'; 1_677_722])
            .fails(),
        ctl("a 1.3 MiB value fits (rev 48)", "put big").stdin(vec![b'y'; 1_363_149]).ok(),
        ctl("rev 49", "del big").ok(),
        ctl("failed requests did not bump the revision", "get c -w json").json().ok(),
        // --- Cluster and maintenance ---------------------------------------------------------
        ctl("status", "endpoint status -w json").norm(EndpointStatus).ok(),
        ctl("health (etcdctl prints it on stderr)", "endpoint health").norm(EndpointHealth).ok(),
        ctl("health, JSON", "endpoint health -w json").norm(EndpointHealth).ok(),
        ctl("member list, JSON (header without revision)", "member list -w json").norm(MemberList).ok(),
        ctl("member list", "member list").norm(MemberList).ok(),
        ctl("no alarms", "alarm list").ok(),
        ctl("defragment", "defrag").ok(),
        ctl("snapshot", "snapshot save {dir}/snap.db").one_member().ok(),
        ctl("still serving after maintenance (rev 50)", "put after maintenance").ok(),
        // --- Lock (etcdctl's, on its concurrency package) -------------------------------------
        ctl("lock runs a command holding the lock (revs 51, 52)", "lock mylock echo held").ok(),
        ctl("final state", "get \"\" --prefix -w json").json().ok(),
    ]);
    s
}

#[test]
fn etcdctl_outputs_match_etcd() {
    script::run(&script(), &Setup::default());
}

/// The same script against 3 etcd members and 3 Mast members, etcdctl given every endpoint.
#[test]
fn etcdctl_outputs_match_etcd_on_three_members() {
    script::run(
        &script(),
        &Setup {
            members: 3,
            ..Setup::default()
        },
    );
}

#[test]
fn words_split_like_a_shell() {
    assert_eq!(words(r#"put "" v"#), vec!["put", "", "v"]);
    assert_eq!(words(r#"get "a b"  c"#), vec!["get", "a b", "c"]);
}
