//! Revisions: the logical clock of the store.

use std::fmt;

/// A point in the store's history, as etcd's `revision{main, sub}`.
///
/// `main` is the store revision a write produced (what clients see as `mod_revision`); `sub`
/// orders the changes inside one write (a Txn that puts three keys makes subs 0, 1, 2). On disk
/// a revision is the key of the `kv` table, encoded as a `u128` so that redb's ordering is
/// revision order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    /// The store revision of the write.
    pub main: i64,
    /// The position of the change inside that write, from 0.
    pub sub: i64,
}

impl Revision {
    /// A revision with the given main and sub parts.
    pub const fn new(main: i64, sub: i64) -> Self {
        Self { main, sub }
    }

    /// The `kv` table key of this revision: `main` in the high 64 bits, `sub` in the low.
    pub fn to_u128(self) -> u128 {
        ((self.main as u64 as u128) << 64) | (self.sub as u64 as u128)
    }

    /// Decodes a `kv` table key written by [`Revision::to_u128`].
    pub fn from_u128(v: u128) -> Self {
        Self {
            main: (v >> 64) as u64 as i64,
            sub: v as u64 as i64,
        }
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.main, self.sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u128_encoding_keeps_order() {
        let a = Revision::new(5, 9);
        let b = Revision::new(6, 0);
        assert!(a.to_u128() < b.to_u128());
        assert_eq!(Revision::from_u128(a.to_u128()), a);
        assert_eq!(Revision::from_u128(b.to_u128()), b);
    }
}
