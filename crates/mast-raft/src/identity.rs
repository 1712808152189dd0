//! Member and cluster IDs, derived as etcd derives them, so a Mast member started with the
//! same flags as an etcd member has the same IDs (`etcd --name default` on its defaults is
//! member `8e9e05c52164694d` of cluster `cdf818194e3a8c32`, and so is `mast serve`).

use sha1::{Digest, Sha1};

/// The default `--initial-cluster-token`, as etcd's.
pub const DEFAULT_CLUSTER_TOKEN: &str = "etcd-cluster";

/// A member's ID, as etcd's `computeMemberId`: the first 8 bytes (big-endian) of the SHA-1
/// of the member's peer URLs sorted and joined with no separator, then the cluster token,
/// then — for a member added at run time (`MemberAdd`, whose token is empty) — the time in
/// Unix seconds as decimal text.
pub fn member_id(peer_urls: &[String], token: &str, added_at_unix_secs: Option<u64>) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut h = Sha1::new();
    for u in urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    if let Some(t) = added_at_unix_secs {
        h.update(t.to_string().as_bytes());
    }
    first_u64(&h.finalize())
}

/// A cluster's ID, as etcd's `genID`: the first 8 bytes (big-endian) of the SHA-1 of the
/// initial members' IDs, sorted, each as 8 big-endian bytes.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64(&h.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    u64::from_be_bytes(digest[..8].try_into().expect("SHA-1 has 20 bytes"))
}

/// One member of `--initial-cluster`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    /// Its `--name`.
    pub name: String,
    /// Its peer URLs, in the order given.
    pub peer_urls: Vec<String>,
}

/// A `--initial-cluster` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitialClusterError {
    /// An item is not `name=url`.
    #[error("invalid --initial-cluster item {0:?}: expected name=URL")]
    BadItem(String),
    /// A URL is given twice.
    #[error("initial cluster {0} has duplicate url")]
    DuplicateUrl(String),
    /// The list is empty.
    #[error("initial cluster unset and no discovery URL found")]
    Empty,
}

/// Parses `--initial-cluster` (`n1=http://a:2380,n1=http://b:2380,n2=http://c:2380`) into
/// members in the order their names first appear; a name given twice gathers its URLs, as
/// etcd's `NewURLsMap`.
///
/// # Errors
/// [`InitialClusterError`] for an item without `=`, a repeated URL or an empty list.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<InitialMember>, InitialClusterError> {
    let mut out: Vec<InitialMember> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, url) = item
            .split_once('=')
            .ok_or_else(|| InitialClusterError::BadItem(item.to_string()))?;
        let url = url.trim().trim_end_matches('/').to_string();
        if name.is_empty() || url.is_empty() {
            return Err(InitialClusterError::BadItem(item.to_string()));
        }
        if !seen.insert(url.clone()) {
            return Err(InitialClusterError::DuplicateUrl(s.to_string()));
        }
        match out.iter_mut().find(|m| m.name == name) {
            Some(m) => m.peer_urls.push(url),
            None => out.push(InitialMember {
                name: name.to_string(),
                peer_urls: vec![url],
            }),
        }
    }
    if out.is_empty() {
        return Err(InitialClusterError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ids_match_etcd() {
        // etcd's defaults: --name default, peer http://localhost:2380, token etcd-cluster.
        let m = member_id(
            &urls(&["http://localhost:2380"]),
            DEFAULT_CLUSTER_TOKEN,
            None,
        );
        assert_eq!(format!("{m:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[m])), "cdf818194e3a8c32");
        // etcd's clustering guide: infra0..2 on 10.0.1.10..12, token etcd-cluster-1.
        let ids: Vec<u64> = ["10", "11", "12"]
            .iter()
            .map(|h| {
                member_id(
                    &urls(&[&format!("http://10.0.1.{h}:2380")]),
                    "etcd-cluster-1",
                    None,
                )
            })
            .collect();
        let mut hex: Vec<String> = ids.iter().map(|i| format!("{i:x}")).collect();
        hex.sort();
        assert_eq!(
            hex,
            vec!["140fedbeeb74765d", "8a0a11c6194fc77", "d5dc5f8d75d04e29"]
        );
        assert_eq!(format!("{:x}", cluster_id(&ids)), "acccc8912db0cd57");
        // Sorted before hashing: the order of URLs and IDs does not matter.
        assert_eq!(
            member_id(&urls(&["http://b:2380", "http://a:2380"]), "t", None),
            member_id(&urls(&["http://a:2380", "http://b:2380"]), "t", None)
        );
        assert_ne!(
            member_id(&urls(&["http://a:2380"]), "", Some(1)),
            member_id(&urls(&["http://a:2380"]), "", Some(2))
        );
    }

    #[test]
    fn initial_cluster_parses_as_etcd() {
        let m =
            parse_initial_cluster("n1=http://a:2380,n2=http://b:2380,n1=http://c:2380").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].peer_urls, urls(&["http://a:2380", "http://c:2380"]));
        assert_eq!(
            parse_initial_cluster("n1=http://a:2380,n2=http://a:2380"),
            Err(InitialClusterError::DuplicateUrl(
                "n1=http://a:2380,n2=http://a:2380".into()
            ))
        );
        assert!(matches!(
            parse_initial_cluster("n1"),
            Err(InitialClusterError::BadItem(_))
        ));
        assert_eq!(parse_initial_cluster(""), Err(InitialClusterError::Empty));
    }
}
