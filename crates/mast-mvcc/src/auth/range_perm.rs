//! A user's key permissions merged into disjoint intervals, as etcd's `rangePermCache`
//! (`server/auth/range_perm_cache.go`).
//!
//! etcd keeps two interval trees per user (read, write) and asks "do the stored intervals cover
//! the requested one?" (`checkKeyInterval`) or "does any stored interval hold this key?"
//! (`checkKeyPoint`). Merging overlapping and touching intervals once, when the auth state
//! changes, turns both questions into one binary search.
//!
//! etcd's conventions, all kept here:
//! - a permission or request with an empty `range_end` is the single key `[key, key\0)`;
//! - `range_end == "\0"` means every key from `key` on (no upper bound);
//! - otherwise `[key, range_end)`.

use mast_proto::authpb::{Permission, permission::Type};

/// The exclusive end of an interval; `Unbounded` sorts after every key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Key(Vec<u8>),
    Unbounded,
}

impl End {
    /// `end >= key`: an interval ending here touches or overlaps one starting at `key`.
    fn reaches(&self, key: &[u8]) -> bool {
        match self {
            End::Key(e) => e.as_slice() >= key,
            End::Unbounded => true,
        }
    }

    /// `end > key`: an interval ending here holds `key` if it starts at or before it.
    fn is_after(&self, key: &[u8]) -> bool {
        match self {
            End::Key(e) => e.as_slice() > key,
            End::Unbounded => true,
        }
    }
}

/// `[begin, end)`, never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Interval {
    begin: Vec<u8>,
    end: End,
}

/// The end of the single-key interval `[key, key\0)`.
fn point_end(key: &[u8]) -> End {
    let mut e = Vec::with_capacity(key.len() + 1);
    e.extend_from_slice(key);
    e.push(0);
    End::Key(e)
}

fn is_open_ended(range_end: &[u8]) -> bool {
    range_end == [0]
}

/// True when a permission's range may be granted, as etcd's `isValidPermissionRange`
/// (3.5.8+): the key is not empty and the range is a single key, open-ended, or non-empty.
pub(crate) fn is_valid_permission_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || is_open_ended(range_end) || key < range_end)
}

/// Disjoint, sorted intervals whose union is what a set of permissions allows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct IntervalSet(Vec<Interval>);

impl IntervalSet {
    fn from_intervals(mut ivs: Vec<Interval>) -> IntervalSet {
        ivs.sort_by(|a, b| a.begin.cmp(&b.begin));
        let mut merged: Vec<Interval> = Vec::with_capacity(ivs.len());
        for iv in ivs {
            // Overlapping or touching intervals merge: etcd's `Contains` treats them as
            // contiguous.
            if let Some(last) = merged.last_mut()
                && last.end.reaches(&iv.begin)
            {
                if iv.end > last.end {
                    last.end = iv.end;
                }
                continue;
            }
            merged.push(iv);
        }
        IntervalSet(merged)
    }

    /// The interval holding `key`, if any.
    fn containing(&self, key: &[u8]) -> Option<&Interval> {
        let i = self.0.partition_point(|iv| iv.begin.as_slice() <= key);
        let iv = self.0.get(i.checked_sub(1)?)?;
        iv.end.is_after(key).then_some(iv)
    }

    /// True when the union covers the request `[key, range_end)` in etcd's conventions.
    fn covers(&self, key: &[u8], range_end: &[u8]) -> bool {
        if range_end.is_empty() {
            return self.containing(key).is_some();
        }
        let end = if is_open_ended(range_end) {
            End::Unbounded
        } else if range_end <= key {
            // An empty or inverted range: etcd's interval tree then finds exactly the
            // intervals holding `key`, so it answers as for the single key.
            return self.containing(key).is_some();
        } else {
            End::Key(range_end.to_vec())
        };
        self.containing(key).is_some_and(|iv| iv.end >= end)
    }
}

/// One user's merged permissions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UserPerms {
    /// The user has the `root` role: every key, and admin operations.
    pub(crate) admin: bool,
    read: IntervalSet,
    write: IntervalSet,
}

impl UserPerms {
    /// Merges the permissions of every role the user has. Permissions etcd could never match
    /// (an empty key, an empty or inverted range, granted before 3.5.8 refused them) are left
    /// out; so are unknown permission types, which etcd ignores too.
    pub(crate) fn build<'a>(admin: bool, perms: impl IntoIterator<Item = &'a Permission>) -> Self {
        let mut read = Vec::new();
        let mut write = Vec::new();
        for p in perms {
            if !is_valid_permission_range(&p.key, &p.range_end) {
                continue;
            }
            let end = if p.range_end.is_empty() {
                point_end(&p.key)
            } else if is_open_ended(&p.range_end) {
                End::Unbounded
            } else {
                End::Key(p.range_end.to_vec())
            };
            let iv = Interval {
                begin: p.key.to_vec(),
                end,
            };
            match Type::try_from(p.perm_type) {
                Ok(Type::Read) => read.push(iv),
                Ok(Type::Write) => write.push(iv),
                Ok(Type::Readwrite) => {
                    read.push(iv.clone());
                    write.push(iv);
                }
                Err(_) => {}
            }
        }
        UserPerms {
            admin,
            read: IntervalSet::from_intervals(read),
            write: IntervalSet::from_intervals(write),
        }
    }

    /// True when the user may read (or, with `write`, write) all of `[key, range_end)`.
    pub(crate) fn permits(&self, key: &[u8], range_end: &[u8], write: bool) -> bool {
        if self.admin {
            return true;
        }
        let set = if write { &self.write } else { &self.read };
        set.covers(key, range_end)
    }
}
