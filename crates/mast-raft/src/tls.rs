//! TLS on the peer port, as etcd's `--peer-cert-file`, `--peer-key-file`,
//! `--peer-trusted-ca-file` and `--peer-client-cert-auth`.
//!
//! As etcd, one certificate serves both ends of peer traffic: a member presents it as the
//! server of its peer listener and as the client when it dials another member. The trusted CA
//! checks both directions: the certificates of members that dial in (required only with
//! `--peer-client-cert-auth`) and the certificate of the member dialled (whose peer URL's host
//! must be in it, as a DNS name or an IP address). Without a trusted CA the member dialled is
//! checked against the system's roots, as etcd does.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Peer TLS settings.
#[derive(Clone, Debug)]
pub struct PeerTls {
    /// Certificate chain (PEM) for peer traffic, `--peer-cert-file`.
    pub cert_file: PathBuf,
    /// Its private key (PEM), `--peer-key-file`.
    pub key_file: PathBuf,
    /// CA bundle (PEM) peer certificates must chain to, `--peer-trusted-ca-file`.
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse members that dial in without a certificate signed by the trusted CA,
    /// `--peer-client-cert-auth`.
    pub client_cert_auth: bool,
}

/// A peer TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PeerTlsError {
    /// A file cannot be read.
    #[error("reading {flag} {path}: {source}")]
    Read {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `--peer-client-cert-auth` without `--peer-trusted-ca-file`.
    #[error("--peer-client-cert-auth needs --peer-trusted-ca-file")]
    ClientAuthWithoutCa,
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, PeerTlsError> {
    std::fs::read(path).map_err(|source| PeerTlsError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

impl PeerTls {
    fn identity(&self) -> Result<Identity, PeerTlsError> {
        Ok(Identity::from_pem(
            read("--peer-cert-file", &self.cert_file)?,
            read("--peer-key-file", &self.key_file)?,
        ))
    }

    fn ca(&self) -> Result<Option<Certificate>, PeerTlsError> {
        self.trusted_ca_file
            .as_deref()
            .map(|p| read("--peer-trusted-ca-file", p).map(Certificate::from_pem))
            .transpose()
    }

    /// The peer listener's TLS configuration. PEM contents are checked when the listener
    /// starts (tonic parses them then).
    ///
    /// # Errors
    /// [`PeerTlsError`] when a file cannot be read, or client certificates are required
    /// without a CA to check them.
    pub fn server_config(&self) -> Result<ServerTlsConfig, PeerTlsError> {
        let mut cfg = ServerTlsConfig::new().identity(self.identity()?);
        match (self.ca()?, self.client_cert_auth) {
            (Some(ca), required) => {
                cfg = cfg.client_ca_root(ca).client_auth_optional(!required);
            }
            (None, true) => return Err(PeerTlsError::ClientAuthWithoutCa),
            (None, false) => {}
        }
        Ok(cfg)
    }

    /// The TLS configuration for dialling other members (`https://` peer URLs).
    ///
    /// # Errors
    /// [`PeerTlsError`] when a file cannot be read.
    pub fn client_config(&self) -> Result<ClientTlsConfig, PeerTlsError> {
        let cfg = ClientTlsConfig::new().identity(self.identity()?);
        Ok(match self.ca()? {
            Some(ca) => cfg.ca_certificate(ca),
            None => cfg.with_native_roots(),
        })
    }
}
