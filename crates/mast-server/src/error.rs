//! The etcd API layer's one error type.
//!
//! Every public operation in [`crate::api`] and every check in [`crate::authz`] fails with an
//! [`EtcdError`]. Its `Display` is the exact text etcd puts on the wire (with the
//! `etcdserver: ` prefix where etcd has one), and [`EtcdError::code`] is the gRPC code etcd
//! answers with; the code is chosen there and nowhere else. The edges turn it into what their
//! clients read: the tonic services through `From<EtcdError> for tonic::Status`, the JSON
//! gateway into its `{"error", "code", "message"}` body, the registry into its own `ApiError`
//! (by variant, never by message).
//!
//! The strings and codes are those of etcd's `api/v3rpc/rpctypes/error.go`. The cluster and
//! Raft variants are not answered yet; they are here so that the membership and consensus
//! work has one place to take them from.

/// gRPC status codes, as [`EtcdError::code`] gives them.
pub use tonic::Code;
use tonic::Status;

pub use mast_mvcc::{AuthError, MvccError, StorageError};

/// A request the etcd API refused or could not serve.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    // ---- Request checks, made before a request reaches the store.
    /// A request (or a txn compare or op) with an empty key (`ErrGRPCEmptyKey`,
    /// InvalidArgument).
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// A request whose encoding exceeds `--max-request-bytes` (`ErrGRPCRequestTooLarge`,
    /// InvalidArgument).
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// A txn with more than `MAX_TXN_OPS` compares or ops in a branch (`ErrGRPCTooManyOps`,
    /// InvalidArgument).
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A txn branch that writes one key twice, or writes a key a delete in the same branch
    /// covers (`ErrGRPCDuplicateKey`, InvalidArgument).
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A Put with `ignore_value` and a value (`ErrGRPCValueProvided`, InvalidArgument).
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// A Put with `ignore_lease` and a lease (`ErrGRPCLeaseProvided`, InvalidArgument).
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A Range whose sort order or sort target is not one etcd knows (InvalidArgument).
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,

    // ---- The store and the auth state.
    /// The store refused the request (compacted or future revision, missing lease or key, …)
    /// or failed; the code follows the variant. Auth refusals are carried by
    /// [`EtcdError::Auth`] instead (see `From<MvccError>`).
    #[error("etcdserver: {0}")]
    Mvcc(MvccError),
    /// An auth check failed or an auth change was refused; the code is the one documented on
    /// the [`AuthError`] variant.
    #[error("etcdserver: {0}")]
    Auth(AuthError),
    /// Authenticate with a password for a user made without one. etcd answers with its
    /// internal auth error, which its gRPC layer does not map (code Unknown).
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    /// A caller without the root role on Defragment, Hash, HashKV or Snapshot. etcd 3.4
    /// answers with its internal auth error, unmapped (code Unknown).
    #[error("auth: permission denied")]
    MaintenancePermissionDenied,

    // ---- Mast's own answers.
    /// An RPC or request Mast does not serve yet; the text names it (Unimplemented).
    #[error("{0} is not supported by Mast yet")]
    Unimplemented(String),
    /// The database file could not be read, compacted or copied (Unavailable).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A file the server made (a snapshot copy) could not be read (Unavailable).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A JSON gateway request body that does not decode as the request message; the text is
    /// the decoder's (InvalidArgument, as grpc-gateway).
    #[error("{0}")]
    BadRequestBody(String),
    /// A JSON gateway path that names no RPC (NotFound).
    #[error("no route for {method} {path}")]
    NoRoute {
        /// The request's HTTP method.
        method: String,
        /// The request's path.
        path: String,
    },
    /// A bug or a failed background task; the text says what (Internal).
    #[error("{0}")]
    Internal(String),
    /// An error passed on with its code and text: the leader's answer to a request this
    /// member handed it, or a copy of an error for each of several waiting callers.
    #[error("{message}")]
    Relayed {
        /// The gRPC code.
        code: Code,
        /// The message.
        message: String,
    },

    // ---- Cluster and Raft (etcd's rpctypes), for the membership and consensus work.
    /// No member is leader (`ErrGRPCNoLeader`, Unavailable).
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The request needs the leader and this member is not (`ErrGRPCNotLeader`,
    /// FailedPrecondition).
    #[error("etcdserver: not leader")]
    NotLeader,
    /// The leader changed while the request waited (`ErrGRPCLeaderChanged`, Unavailable).
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// The server is stopping (`ErrGRPCStopped`, Unavailable).
    #[error("etcdserver: server stopped")]
    Stopped,
    /// A proposal was not applied in time (`ErrGRPCTimeout`, Unavailable).
    #[error("etcdserver: request timed out")]
    Timeout,
    /// A proposal timed out after the previous leader failed (`ErrGRPCTimeoutDueToLeaderFail`,
    /// Unavailable).
    #[error("etcdserver: request timed out, possibly due to previous leader failure")]
    TimeoutDueToLeaderFail,
    /// A proposal timed out while peers were unreachable
    /// (`ErrGRPCTimeoutDueToConnectionLost`, Unavailable).
    #[error("etcdserver: request timed out, possibly due to connection lost")]
    TimeoutDueToConnectionLost,
    /// A membership change would leave the cluster without an active quorum
    /// (`ErrGRPCUnhealthy`, Unavailable).
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    /// The member ID is not (or no longer) in the cluster (`ErrGRPCMemberNotFound`, NotFound).
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// MemberAdd of an ID already in the cluster (`ErrGRPCMemberExist`, FailedPrecondition).
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    /// A peer URL another member already uses (`ErrGRPCPeerURLExist`, FailedPrecondition).
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    /// A membership change that would leave fewer started voting members than a quorum
    /// (`ErrGRPCMemberNotEnoughStarted`). etcd sends it with code Unknown: the server maps to
    /// a client-side error value that carries no gRPC status (clients map the text back to
    /// FailedPrecondition), so Mast sends Unknown as well.
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    MemberNotEnoughStarted,
    /// Peer URLs that do not parse as `scheme://host:port` (`ErrGRPCMemberBadURLs`,
    /// InvalidArgument).
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    /// MemberPromote of a voting member (`ErrGRPCMemberNotLearner`, FailedPrecondition).
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    /// MemberPromote of a learner whose log is behind the leader's by more than 10%
    /// (`ErrGRPCLearnerNotReady`, FailedPrecondition).
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// MemberAdd of a learner while the cluster has its one learner already
    /// (`ErrGRPCTooManyLearners`, FailedPrecondition).
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    /// An RPC a learner does not serve (`ErrGPRCNotSupportedForLearner`, Unavailable).
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    /// MoveLeader to a member that cannot take the lead (`ErrGRPCBadLeaderTransferee`,
    /// FailedPrecondition).
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// The backend quota is exceeded; writes are refused until space is freed
    /// (`ErrGRPCNoSpace`, ResourceExhausted).
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A write while a member's `CORRUPT` alarm is raised (`ErrGRPCCorrupt`, DataLoss).
    #[error("etcdserver: corrupt cluster")]
    Corrupt,

    // ---- etcd's concurrency package, as its v3lock / v3election servers answer (plain Go
    // errors: code Unknown, the text as etcd's).
    /// `Proclaim` or `Resign` without a leader key (v3election's `ErrMissingLeaderKey`).
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
    /// `Proclaim` by a campaigner that no longer holds the election
    /// (`concurrency.ErrElectionNotLeader`).
    #[error("election: not leader")]
    ElectionNotLeader,
    /// `Leader` of an election nobody holds (`concurrency.ErrElectionNoLeader`).
    #[error("election: no leader")]
    ElectionNoLeader,
    /// The lock or campaign key went (its lease expired, or it was deleted) while the request
    /// waited for its turn (`concurrency.ErrSessionExpired`).
    #[error("session expired")]
    SessionExpired,
}

impl EtcdError {
    /// The gRPC code etcd answers this error with. The one place a code is chosen: the tonic
    /// edge, the JSON gateway and the registry all read it from here.
    pub fn code(&self) -> Code {
        use EtcdError::*;
        match self {
            Relayed { code, .. } => *code,
            EmptyKey | RequestTooLarge | TooManyOps | DuplicateKey | ValueProvided
            | LeaseProvided | InvalidSortOption | BadRequestBody(_) | MemberBadUrls => {
                Code::InvalidArgument
            }
            Mvcc(e) => mvcc_code(e),
            Auth(e) => auth_code(e),
            NoPasswordUser
            | MaintenancePermissionDenied
            | MemberNotEnoughStarted
            | MissingLeaderKey
            | ElectionNotLeader
            | ElectionNoLeader
            | SessionExpired => Code::Unknown,
            Unimplemented(_) => Code::Unimplemented,
            Storage(_) | Io(_) => Code::Unavailable,
            NoRoute { .. } | MemberNotFound => Code::NotFound,
            Internal(_) => Code::Internal,
            NoLeader
            | LeaderChanged
            | Stopped
            | Timeout
            | TimeoutDueToLeaderFail
            | TimeoutDueToConnectionLost
            | Unhealthy
            | NotSupportedForLearner => Code::Unavailable,
            NotLeader | MemberExist | PeerUrlExist | MemberNotLearner | LearnerNotReady
            | TooManyLearners | BadLeaderTransferee => Code::FailedPrecondition,
            NoSpace => Code::ResourceExhausted,
            Corrupt => Code::DataLoss,
        }
    }

    /// The auth error this is, whichever variant carries it.
    pub fn auth(&self) -> Option<&AuthError> {
        match self {
            EtcdError::Auth(e) | EtcdError::Mvcc(MvccError::Auth(e)) => Some(e),
            _ => None,
        }
    }

    /// An [`EtcdError::Unimplemented`] naming `what`.
    pub fn unimplemented(what: impl Into<String>) -> Self {
        EtcdError::Unimplemented(what.into())
    }

    /// The error for a write whose result is not the kind its command gives: a bug.
    pub fn unexpected_result(result: &mast_mvcc::CommandResult) -> Self {
        EtcdError::Internal(format!("unexpected result {result:?}"))
    }
}

/// The code of a store error, as etcd's `toGRPCErrorMap`.
fn mvcc_code(e: &MvccError) -> Code {
    match e {
        MvccError::Compacted | MvccError::FutureRevision | MvccError::LeaseTtlTooLarge => {
            Code::OutOfRange
        }
        MvccError::KeyNotFound | MvccError::DuplicateKey => Code::InvalidArgument,
        MvccError::LeaseNotFound => Code::NotFound,
        MvccError::LeaseExists => Code::FailedPrecondition,
        MvccError::Storage(_) => Code::Unavailable,
        MvccError::NoSpace => Code::ResourceExhausted,
        MvccError::Corrupt => Code::DataLoss,
        MvccError::Auth(a) => auth_code(a),
    }
}

/// The code of an auth error, as documented on each [`AuthError`] variant.
fn auth_code(e: &AuthError) -> Code {
    match e {
        AuthError::UserEmpty
        | AuthError::RoleEmpty
        | AuthError::InvalidAuthMgmt
        | AuthError::PermissionNotGiven
        | AuthError::AuthFailed
        | AuthError::AuthOldRevision => Code::InvalidArgument,
        AuthError::PermissionDenied => Code::PermissionDenied,
        AuthError::InvalidAuthToken => Code::Unauthenticated,
        AuthError::RootUserNotExist
        | AuthError::RootRoleNotExist
        | AuthError::UserAlreadyExist
        | AuthError::UserNotFound
        | AuthError::RoleAlreadyExist
        | AuthError::RoleNotFound
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::AuthNotEnabled => Code::FailedPrecondition,
    }
}

/// Store errors as the API answers them; an auth refusal becomes [`EtcdError::Auth`].
impl EtcdError {
    /// A copy of this error for each of several callers that waited on one failed
    /// operation (a batch of writes, a read confirmation). Errors without a copy of their own
    /// (a disk or I/O failure) keep their text and code.
    pub fn clone_for_waiters(&self) -> EtcdError {
        use EtcdError::*;
        match self {
            NoLeader => NoLeader,
            NotLeader => NotLeader,
            LeaderChanged => LeaderChanged,
            Stopped => Stopped,
            Timeout => Timeout,
            TimeoutDueToLeaderFail => TimeoutDueToLeaderFail,
            TimeoutDueToConnectionLost => TimeoutDueToConnectionLost,
            Unhealthy => Unhealthy,
            NotSupportedForLearner => NotSupportedForLearner,
            NoSpace => NoSpace,
            Corrupt => Corrupt,
            Mvcc(e) => Mvcc(e.clone()),
            Auth(e) => Auth(e.clone()),
            Internal(m) => Internal(m.clone()),
            other => Relayed {
                code: other.code(),
                message: other.to_string(),
            },
        }
    }
}

impl From<MvccError> for EtcdError {
    fn from(e: MvccError) -> Self {
        match e {
            MvccError::Auth(a) => EtcdError::Auth(a),
            MvccError::NoSpace => EtcdError::NoSpace,
            MvccError::Corrupt => EtcdError::Corrupt,
            e => EtcdError::Mvcc(e),
        }
    }
}

impl From<AuthError> for EtcdError {
    fn from(e: AuthError) -> Self {
        EtcdError::Auth(e)
    }
}

/// A blocking task that panicked or was cancelled.
impl From<tokio::task::JoinError> for EtcdError {
    fn from(e: tokio::task::JoinError) -> Self {
        EtcdError::Internal(e.to_string())
    }
}

/// The gRPC edge: etcd's code and etcd's message.
impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(e: EtcdError) -> (Code, String) {
        let s = Status::from(e);
        (s.code(), s.message().to_string())
    }

    #[test]
    fn request_checks_answer_as_etcd() {
        let cases = [
            (EtcdError::EmptyKey, "etcdserver: key is not provided"),
            (
                EtcdError::RequestTooLarge,
                "etcdserver: request is too large",
            ),
            (
                EtcdError::TooManyOps,
                "etcdserver: too many operations in txn request",
            ),
            (
                EtcdError::DuplicateKey,
                "etcdserver: duplicate key given in txn request",
            ),
            (EtcdError::ValueProvided, "etcdserver: value is provided"),
            (EtcdError::LeaseProvided, "etcdserver: lease is provided"),
            (
                EtcdError::InvalidSortOption,
                "etcdserver: invalid sort option",
            ),
        ];
        for (e, msg) in cases {
            assert_eq!(wire(e), (Code::InvalidArgument, msg.to_string()));
        }
    }

    #[test]
    fn store_errors_keep_etcds_codes_and_prefix() {
        let cases = [
            (
                MvccError::Compacted,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                MvccError::FutureRevision,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                MvccError::LeaseTtlTooLarge,
                Code::OutOfRange,
                "etcdserver: too large lease TTL",
            ),
            (
                MvccError::KeyNotFound,
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                MvccError::LeaseNotFound,
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                MvccError::LeaseExists,
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                MvccError::Storage("disk".into()),
                Code::Unavailable,
                "etcdserver: storage failed: disk",
            ),
        ];
        for (e, code, msg) in cases {
            assert_eq!(wire(e.into()), (code, msg.to_string()));
        }
    }

    #[test]
    fn auth_errors_map_by_variant() {
        use AuthError::*;
        let cases = [
            (RootUserNotExist, Code::FailedPrecondition),
            (RootRoleNotExist, Code::FailedPrecondition),
            (UserAlreadyExist, Code::FailedPrecondition),
            (UserEmpty, Code::InvalidArgument),
            (UserNotFound, Code::FailedPrecondition),
            (RoleAlreadyExist, Code::FailedPrecondition),
            (RoleNotFound, Code::FailedPrecondition),
            (RoleEmpty, Code::InvalidArgument),
            (RoleNotGranted, Code::FailedPrecondition),
            (PermissionNotGranted, Code::FailedPrecondition),
            (InvalidAuthMgmt, Code::InvalidArgument),
            (PermissionNotGiven, Code::InvalidArgument),
            (AuthFailed, Code::InvalidArgument),
            (PermissionDenied, Code::PermissionDenied),
            (AuthNotEnabled, Code::FailedPrecondition),
            (InvalidAuthToken, Code::Unauthenticated),
            (AuthOldRevision, Code::InvalidArgument),
        ];
        for (a, code) in cases {
            let msg = format!("etcdserver: {a}");
            // Whether it comes from a check or from the store, it answers the same.
            assert_eq!(wire(EtcdError::Auth(a.clone())), (code, msg.clone()));
            let from_store = EtcdError::from(MvccError::Auth(a.clone()));
            assert!(matches!(&from_store, EtcdError::Auth(b) if *b == a));
            assert_eq!(from_store.auth(), Some(&a));
            assert_eq!(wire(EtcdError::Mvcc(MvccError::Auth(a))), (code, msg));
        }
        assert_eq!(
            wire(EtcdError::NoPasswordUser),
            (
                Code::Unknown,
                "auth: authentication failed, password was given for no password user".into()
            )
        );
        assert_eq!(
            wire(EtcdError::MaintenancePermissionDenied),
            (Code::Unknown, "auth: permission denied".into())
        );
    }

    #[test]
    fn mast_answers() {
        assert_eq!(
            wire(EtcdError::unimplemented("MoveLeader (clustering)")),
            (
                Code::Unimplemented,
                "MoveLeader (clustering) is not supported by Mast yet".into()
            )
        );
        assert_eq!(
            wire(EtcdError::NoRoute {
                method: "POST".into(),
                path: "/v3/nope".into()
            }),
            (Code::NotFound, "no route for POST /v3/nope".into())
        );
        assert_eq!(
            wire(StorageError("gone".into()).into()),
            (Code::Unavailable, "storage error: gone".into())
        );
        assert_eq!(
            wire(EtcdError::Internal("bug".into())),
            (Code::Internal, "bug".into())
        );
    }

    #[test]
    fn cluster_errors_are_etcds_rpctypes() {
        use EtcdError::*;
        let cases = [
            (NoLeader, Code::Unavailable, "etcdserver: no leader"),
            (
                NotLeader,
                Code::FailedPrecondition,
                "etcdserver: not leader",
            ),
            (
                LeaderChanged,
                Code::Unavailable,
                "etcdserver: leader changed",
            ),
            (Stopped, Code::Unavailable, "etcdserver: server stopped"),
            (Timeout, Code::Unavailable, "etcdserver: request timed out"),
            (
                TimeoutDueToLeaderFail,
                Code::Unavailable,
                "etcdserver: request timed out, possibly due to previous leader failure",
            ),
            (
                TimeoutDueToConnectionLost,
                Code::Unavailable,
                "etcdserver: request timed out, possibly due to connection lost",
            ),
            (
                Unhealthy,
                Code::Unavailable,
                "etcdserver: unhealthy cluster",
            ),
            (
                MemberNotFound,
                Code::NotFound,
                "etcdserver: member not found",
            ),
            (
                MemberExist,
                Code::FailedPrecondition,
                "etcdserver: member ID already exist",
            ),
            (
                PeerUrlExist,
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
            (
                MemberNotEnoughStarted,
                Code::Unknown,
                "etcdserver: re-configuration failed due to not enough started members",
            ),
            (
                MemberBadUrls,
                Code::InvalidArgument,
                "etcdserver: given member URLs are invalid",
            ),
            (
                MemberNotLearner,
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member",
            ),
            (
                LearnerNotReady,
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            (
                TooManyLearners,
                Code::FailedPrecondition,
                "etcdserver: too many learner members in cluster",
            ),
            (
                NotSupportedForLearner,
                Code::Unavailable,
                "etcdserver: rpc not supported for learner",
            ),
            (
                BadLeaderTransferee,
                Code::FailedPrecondition,
                "etcdserver: bad leader transferee",
            ),
            (
                NoSpace,
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (Corrupt, Code::DataLoss, "etcdserver: corrupt cluster"),
            (
                EtcdError::from(MvccError::NoSpace),
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                EtcdError::from(MvccError::Corrupt),
                Code::DataLoss,
                "etcdserver: corrupt cluster",
            ),
        ];
        for (e, code, msg) in cases {
            assert_eq!(wire(e), (code, msg.to_string()));
        }
    }
}
