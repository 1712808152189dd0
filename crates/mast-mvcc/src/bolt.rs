//! A read-only reader of bbolt files — etcd's backend, and so etcd's snapshot format.
//!
//! Written here because the Rust port of bbolt (`bbolt-rs` 1.3.10) refuses files without a
//! stored freelist, and etcd writes its backend that way (`NoFreelistSync`), so it cannot
//! open any etcd snapshot. Reading is all a restore needs: the two meta pages (the valid one
//! with the higher transaction ID wins), then the B+tree of buckets from its root, branch
//! pages in key order down to leaf pages, nested buckets stored in their own tree or inline in
//! their parent's value. Every offset is checked against the file, so a damaged file is an
//! error, never a panic.
//!
//! On-disk layout (bbolt's, little-endian): a page starts with `id u64, flags u16, count u16,
//! overflow u32` and spans `1 + overflow` pages. Meta pages (flag 0x04) carry `magic u32,
//! version u32, page_size u32, flags u32, root {pgid u64, sequence u64}, freelist u64,
//! pgid u64, txid u64, checksum u64` (FNV-1a 64 of the fields before it). Branch pages (0x01)
//! hold `count` elements `pos u32, ksize u32, pgid u64`; leaf pages (0x02) hold `flags u32,
//! pos u32, ksize u32, vsize u32`, `pos` counted from the element, the value right after the
//! key; leaf flag 0x01 marks a nested bucket, whose value is `root u64, sequence u64` and,
//! when `root` is 0, an inline page.

/// A bbolt file that cannot be read: not bbolt, or damaged; the text says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bbolt file: {0}")]
pub struct BoltError(pub String);

/// The result of reading a bbolt file.
pub type BoltResult<T> = Result<T, BoltError>;

fn err<T>(what: impl Into<String>) -> BoltResult<T> {
    Err(BoltError(what.into()))
}

const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const BUCKET_LEAF: u32 = 0x01;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
/// Bytes of the meta fields the checksum covers.
const META_SUMMED: usize = 56;
/// Deepest tree a reader follows (a real bbolt tree of a few TB is under 10 levels).
const MAX_DEPTH: usize = 64;

/// A bbolt file held in memory.
pub struct Bolt {
    data: Vec<u8>,
    page_size: usize,
    /// The root bucket's tree.
    root: u64,
    /// Bytes of the database as of its newest meta page (`pgid × page_size`).
    pub size: u64,
}

/// Where a bucket's entries live.
#[derive(Clone, Copy)]
enum Tree<'a> {
    /// A tree rooted at this page.
    Page(u64),
    /// An inline bucket: one leaf page held in its parent's value.
    Inline(&'a [u8]),
}

/// `n` bytes at `at`, or the error of a read past the end.
fn bytes_at(b: &[u8], at: usize, n: usize) -> BoltResult<&[u8]> {
    at.checked_add(n)
        .and_then(|end| b.get(at..end))
        .ok_or_else(|| BoltError("read past the end of a page".into()))
}

fn u16_at(b: &[u8], at: usize) -> BoltResult<u16> {
    let s = bytes_at(b, at, 2)?;
    Ok(u16::from_le_bytes(s.try_into().expect("2 bytes")))
}

fn u32_at(b: &[u8], at: usize) -> BoltResult<u32> {
    let s = bytes_at(b, at, 4)?;
    Ok(u32::from_le_bytes(s.try_into().expect("4 bytes")))
}

fn u64_at(b: &[u8], at: usize) -> BoltResult<u64> {
    let s = bytes_at(b, at, 8)?;
    Ok(u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

fn fnv1a64(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A meta page's `(txid, page_size, root pgid, pgid)`, when it is valid.
fn meta_at(data: &[u8], offset: usize) -> Option<(u64, usize, u64, u64)> {
    let page = data.get(offset..)?;
    if u16_at(page, 8).ok()? & META_PAGE == 0 {
        return None;
    }
    let m = page.get(PAGE_HEADER..PAGE_HEADER + META_SUMMED + 8)?;
    if u32_at(m, 0).ok()? != MAGIC || u32_at(m, 4).ok()? != VERSION {
        return None;
    }
    if fnv1a64(&m[..META_SUMMED]) != u64_at(m, META_SUMMED).ok()? {
        return None;
    }
    let page_size = u32_at(m, 8).ok()? as usize;
    Some((
        u64_at(m, 48).ok()?,
        page_size,
        u64_at(m, 16).ok()?,
        u64_at(m, 40).ok()?,
    ))
}

impl Bolt {
    /// Reads a bbolt file whole.
    ///
    /// # Errors
    /// When neither meta page is a valid bbolt meta page of format version 2.
    pub fn open(path: &std::path::Path) -> BoltResult<Bolt> {
        let data = std::fs::read(path)
            .map_err(|e| BoltError(format!("reading {}: {e}", path.display())))?;
        Self::from_bytes(data)
    }

    /// A bbolt database from its bytes.
    ///
    /// # Errors
    /// As [`Bolt::open`].
    pub fn from_bytes(data: Vec<u8>) -> BoltResult<Bolt> {
        let first = meta_at(&data, 0);
        // The second meta page sits one page in; its size comes from the first (or, if
        // that one is damaged, from bbolt's default 4 KiB).
        let second = meta_at(&data, first.map_or(4096, |m| m.1));
        let (_, page_size, root, pgid) = match (first, second) {
            (Some(a), Some(b)) => {
                if b.0 > a.0 {
                    b
                } else {
                    a
                }
            }
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return err("not a bbolt database: no valid meta page"),
        };
        if page_size < 512 || !page_size.is_power_of_two() {
            return err(format!("page size {page_size} is not valid"));
        }
        Ok(Bolt {
            data,
            page_size,
            root,
            size: pgid.saturating_mul(page_size as u64),
        })
    }

    /// Pages in the file (plus one, for an inline bucket's page): what one walk may visit.
    fn pages(&self) -> usize {
        self.data.len() / self.page_size + 1
    }

    /// Page `id`, with its overflow pages.
    fn page(&self, id: u64) -> BoltResult<&[u8]> {
        let start = usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_mul(self.page_size))
            .filter(|s| *s < self.data.len())
            .ok_or_else(|| BoltError(format!("page {id} is beyond the file")))?;
        let overflow = u32_at(&self.data, start + 12)? as usize;
        let end = overflow
            .checked_add(1)
            .and_then(|n| n.checked_mul(self.page_size))
            .and_then(|n| n.checked_add(start))
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| BoltError(format!("page {id} runs past the file")))?;
        Ok(&self.data[start..end])
    }

    /// Calls `f` with every key and value of the tree, in key order; values of nested
    /// buckets come with `is_bucket` true.
    fn walk<'a>(
        &'a self,
        tree: Tree<'a>,
        depth: usize,
        budget: &mut usize,
        f: &mut dyn FnMut(&'a [u8], &'a [u8], bool) -> BoltResult<()>,
    ) -> BoltResult<()> {
        if depth > MAX_DEPTH {
            return err(format!("tree deeper than {MAX_DEPTH} levels"));
        }
        // A tree visits each page once: a damaged one that points back into itself must not
        // make the walk go on (nearly) forever.
        *budget = budget
            .checked_sub(1)
            .ok_or_else(|| BoltError("the tree visits more pages than the file holds".into()))?;
        let page = match tree {
            Tree::Page(id) => self.page(id)?,
            Tree::Inline(p) => p,
        };
        let flags = u16_at(page, 8)?;
        let count = u16_at(page, 10)? as usize;
        for i in 0..count {
            let at = PAGE_HEADER + i * ELEMENT;
            if flags & BRANCH_PAGE != 0 {
                if matches!(tree, Tree::Inline(_)) {
                    return err("an inline bucket holds a branch page");
                }
                let child = u64_at(page, at + 8)?;
                self.walk(Tree::Page(child), depth + 1, budget, f)?;
            } else if flags & LEAF_PAGE != 0 {
                let eflags = u32_at(page, at)?;
                let pos = u32_at(page, at + 4)? as usize;
                let ksize = u32_at(page, at + 8)? as usize;
                let vsize = u32_at(page, at + 12)? as usize;
                let k_start = at
                    .checked_add(pos)
                    .ok_or_else(|| BoltError("a key offset overflows".into()))?;
                let key = bytes_at(page, k_start, ksize)?;
                let value = bytes_at(page, k_start + ksize, vsize)?;
                f(key, value, eflags & BUCKET_LEAF != 0)?;
            } else {
                return err(format!("page of unknown kind {flags:#x} in a tree"));
            }
        }
        Ok(())
    }

    /// The tree of a nested bucket from its value in the parent.
    fn bucket_tree<'a>(value: &'a [u8]) -> BoltResult<Tree<'a>> {
        let root = u64_at(value, 0)?;
        if root == 0 {
            let page = value
                .get(16..)
                .ok_or_else(|| BoltError("inline bucket without a page".into()))?;
            Ok(Tree::Inline(page))
        } else {
            Ok(Tree::Page(root))
        }
    }

    /// The top-level bucket names, in order.
    ///
    /// # Errors
    /// When the file is damaged.
    pub fn buckets(&self) -> BoltResult<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.walk(
            Tree::Page(self.root),
            0,
            &mut self.pages(),
            &mut |k, _, is_bucket| {
                if is_bucket {
                    out.push(k.to_vec());
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Calls `f` with every key and value of top-level bucket `name` (nested buckets are
    /// skipped), in key order; does nothing when there is no such bucket. The walk stops at
    /// `f`'s first error.
    ///
    /// # Errors
    /// [`BoltError`] when the file is damaged, or `f`'s error.
    pub fn for_each<E: From<BoltError>>(
        &self,
        name: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut tree = None;
        self.walk(
            Tree::Page(self.root),
            0,
            &mut self.pages(),
            &mut |k, v, is_bucket| {
                if is_bucket && k == name {
                    tree = Some(Self::bucket_tree(v)?);
                }
                Ok(())
            },
        )?;
        let Some(tree) = tree else {
            return Ok(());
        };
        let mut failed = None;
        let walked = self.walk(tree, 1, &mut self.pages(), &mut |k, v, is_bucket| {
            if is_bucket {
                return Ok(());
            }
            f(k, v).or_else(|e| {
                failed = Some(e);
                err("stopped by the caller")
            })
        });
        match failed {
            Some(e) => Err(e),
            None => walked.map_err(E::from),
        }
    }

    /// The value of `key` in top-level bucket `name`.
    ///
    /// # Errors
    /// When the file is damaged.
    pub fn get(&self, name: &[u8], key: &[u8]) -> BoltResult<Option<Vec<u8>>> {
        let mut found = None;
        self.for_each(name, |k, v| {
            if k == key {
                found = Some(v.to_vec());
            }
            Ok::<(), BoltError>(())
        })?;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for data in [
            Vec::new(),
            vec![0u8; 100],
            vec![0xffu8; 9000],
            (0..20_000u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ] {
            assert!(Bolt::from_bytes(data).is_err());
        }
    }

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
