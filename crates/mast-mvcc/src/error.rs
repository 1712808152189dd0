//! Errors of the store, one enum per kind of failure.

/// A request the store refused; nothing was changed. The `Display` text is etcd's error string
/// (without the `etcdserver: ` prefix the gRPC layer adds), so the server can pass it on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    /// The requested revision is below the compacted revision (as etcd's `ErrCompacted`).
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is above the current revision (as etcd's `ErrFutureRev`).
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// `ignore_value` / `ignore_lease` on a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
    /// The lease named in a request does not exist.
    #[error("requested lease not found")]
    LeaseNotFound,
    /// A lease grant with an ID already in use.
    #[error("lease already exists")]
    LeaseExists,
    /// A txn that puts a key twice, or puts and deletes it, in one branch (as etcd's
    /// `ErrGRPCDuplicateKey`).
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    /// A lease grant with a TTL above [`crate::MAX_LEASE_TTL`] seconds.
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    /// A put, a txn that puts or a lease grant while a member's `NOSPACE` alarm is raised
    /// (as etcd's `ErrNoSpace`).
    #[error("mvcc: database space exceeded")]
    NoSpace,
    /// A write while a member's `CORRUPT` alarm is raised (as etcd's `ErrCorrupt`).
    #[error("corrupt cluster")]
    Corrupt,
    /// An auth command refused (its text is the [`crate::AuthError`]'s).
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// The store failed to write earlier and refuses further writes until restarted.
    #[error("storage failed: {0}")]
    Storage(String),
}

/// A failure of the disk or of redb; the store cannot continue writing after one.
#[derive(Debug, thiserror::Error)]
#[error("storage error: {0}")]
pub struct StorageError(pub String);

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self {
                StorageError(e.to_string())
            }
        }
    )*};
}
storage_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    prost::DecodeError,
    std::io::Error
);

impl From<StorageError> for MvccError {
    fn from(e: StorageError) -> Self {
        MvccError::Storage(e.0)
    }
}
