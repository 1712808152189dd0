//! Parses etcdctl's `txn` script (read from stdin): compares, a blank line, the success ops, a
//! blank line, the failure ops, e.g.
//!
//! ```text
//! mod("key1") > "0"
//! value("key2") = "v"
//!
//! put key1 "overwrote-key1"
//! get key1
//!
//! put key1 "created-key1"
//! ```
//!
//! Compare targets are `value`, `mod`, `create`, `ver` (or `version`) and `lease`; operators
//! `=`, `!=`, `<`, `>`. Ops are `put <key> <value>`, `get <key> [<range-end>]` (with `--prefix`)
//! and `del <key> [<range-end>]` (with `--prefix`); words follow shell quoting.

use anyhow::{Context, bail};
use bytes::Bytes;
use mast_model::prefix_end;
use mast_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op,
};

/// Parses a whole script into a TxnRequest.
///
/// # Errors
/// A line that is not a compare or an op, with its line number.
pub fn parse(script: &str) -> anyhow::Result<TxnRequest> {
    let mut sections: Vec<Vec<(usize, &str)>> = vec![Vec::new()];
    for (n, line) in script.lines().enumerate() {
        if line.trim().is_empty() {
            if sections.len() < 3 {
                sections.push(Vec::new());
            }
            continue;
        }
        sections
            .last_mut()
            .expect("non-empty")
            .push((n + 1, line.trim()));
    }
    sections.resize(3, Vec::new());
    let mut t = TxnRequest::default();
    for (n, line) in &sections[0] {
        t.compare
            .push(parse_compare(line).with_context(|| format!("line {n}: {line:?}"))?);
    }
    for (n, line) in &sections[1] {
        t.success
            .push(parse_op(line).with_context(|| format!("line {n}: {line:?}"))?);
    }
    for (n, line) in &sections[2] {
        t.failure
            .push(parse_op(line).with_context(|| format!("line {n}: {line:?}"))?);
    }
    Ok(t)
}

fn parse_compare(line: &str) -> anyhow::Result<Compare> {
    let open = line.find('(').context("expected target(\"key\")")?;
    let close = line.rfind(')').context("missing ')'")?;
    let target_name = line[..open].trim();
    let key = unquote(line[open + 1..close].trim())?;
    let rest = line[close + 1..].trim();
    let (op, value) = ["!=", "=", "<", ">"]
        .iter()
        .find_map(|op| rest.strip_prefix(op).map(|v| (*op, v.trim())))
        .context("expected an operator: = != < >")?;
    let value = unquote(value)?;
    let result = match op {
        "=" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        "<" => CompareResult::Less,
        _ => CompareResult::Greater,
    };
    let num = || {
        value
            .parse::<i64>()
            .with_context(|| format!("{value:?} is not a number"))
    };
    let (target, union) = match target_name {
        "value" | "val" => (
            CompareTarget::Value,
            TargetUnion::Value(Bytes::from(value.clone())),
        ),
        "mod" => (CompareTarget::Mod, TargetUnion::ModRevision(num()?)),
        "create" => (CompareTarget::Create, TargetUnion::CreateRevision(num()?)),
        "ver" | "version" => (CompareTarget::Version, TargetUnion::Version(num()?)),
        "lease" => (
            CompareTarget::Lease,
            TargetUnion::Lease(i64::from_str_radix(value.trim_start_matches("0x"), 16)?),
        ),
        other => bail!("unknown compare target {other:?}"),
    };
    Ok(Compare {
        result: result as i32,
        target: target as i32,
        key: Bytes::from(key),
        range_end: Bytes::new(),
        target_union: Some(union),
    })
}

fn unquote(s: &str) -> anyhow::Result<String> {
    let words = shlex::split(s).with_context(|| format!("bad quoting in {s:?}"))?;
    match words.as_slice() {
        [w] => Ok(w.clone()),
        [] => Ok(String::new()),
        _ => bail!("expected one quoted word, got {s:?}"),
    }
}

fn parse_op(line: &str) -> anyhow::Result<RequestOp> {
    let words = shlex::split(line).with_context(|| format!("bad quoting in {line:?}"))?;
    let prefix = words.iter().any(|w| w == "--prefix");
    let args: Vec<&String> = words.iter().filter(|w| !w.starts_with("--")).collect();
    let range_end = |key: &str, given: Option<&&String>| -> Bytes {
        if prefix {
            Bytes::from(prefix_end(key.as_bytes()))
        } else {
            given
                .map(|e| Bytes::from(e.to_string()))
                .unwrap_or_default()
        }
    };
    let request = match args.as_slice() {
        [verb, key, value] if verb.as_str() == "put" => {
            request_op::Request::RequestPut(PutRequest {
                key: Bytes::from(key.to_string()),
                value: Bytes::from(value.to_string()),
                ..Default::default()
            })
        }
        [verb, key, rest @ ..] if verb.as_str() == "get" && rest.len() <= 1 => {
            request_op::Request::RequestRange(RangeRequest {
                key: Bytes::from(key.to_string()),
                range_end: range_end(key, rest.first()),
                ..Default::default()
            })
        }
        [verb, key, rest @ ..] if verb.as_str() == "del" && rest.len() <= 1 => {
            request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: Bytes::from(key.to_string()),
                range_end: range_end(key, rest.first()),
                ..Default::default()
            })
        }
        _ => bail!("expected put <key> <value>, get <key> [end], or del <key> [end]"),
    };
    Ok(RequestOp {
        request: Some(request),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcdctl_txn_scripts() {
        let t = parse("mod(\"key1\") > \"0\"\nvalue(\"k 2\") != \"v\"\n\nput key1 \"over wrote\"\nget key1\n\nput key1 created\ndel p --prefix\n").unwrap();
        assert_eq!(t.compare.len(), 2);
        assert_eq!(t.compare[0].target_union, Some(TargetUnion::ModRevision(0)));
        assert_eq!(t.compare[1].key, Bytes::from("k 2"));
        assert_eq!(t.compare[1].result, CompareResult::NotEqual as i32);
        assert_eq!(t.success.len(), 2);
        let Some(request_op::Request::RequestPut(p)) = &t.success[0].request else {
            panic!()
        };
        assert_eq!(p.value, Bytes::from("over wrote"));
        let Some(request_op::Request::RequestDeleteRange(d)) = &t.failure[1].request else {
            panic!()
        };
        assert_eq!(d.range_end, Bytes::from("q"));
        assert!(parse("bogus(\"k\") = \"1\"\n").is_err());
        assert!(parse("mod(\"k\") = \"x\"\n").is_err());
        assert!(parse("\nput onlykey\n").is_err());
    }
}
