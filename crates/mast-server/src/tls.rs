//! TLS on the client port with rustls, as etcd's `--cert-file`, `--key-file`,
//! `--trusted-ca-file` and `--client-cert-auth`. gRPC (h2) and HTTP/1.1 share the TLS port
//! through ALPN.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::authority::AuthorityFixStream;
use crate::combine::CombinedWrites;

/// TLS settings of the client port.
#[derive(Clone, Debug, Default)]
pub struct TlsConfig {
    /// Server certificate chain (PEM), `--cert-file`.
    pub cert_file: PathBuf,
    /// Server private key (PEM), `--key-file`.
    pub key_file: PathBuf,
    /// CA bundle (PEM) that client certificates must chain to, `--trusted-ca-file`.
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate signed by the trusted CA, `--client-cert-auth`.
    pub client_cert_auth: bool,
}

impl TlsConfig {
    /// Builds the rustls server configuration.
    ///
    /// # Errors
    /// When a file cannot be read or parsed, or `client_cert_auth` is set without a CA.
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert_file)
            .with_context(|| format!("reading --cert-file {}", self.cert_file.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing --cert-file {}", self.cert_file.display()))?;
        if certs.is_empty() {
            bail!(
                "--cert-file {} holds no certificate",
                self.cert_file.display()
            );
        }
        let key = PrivateKeyDer::from_pem_file(&self.key_file)
            .with_context(|| format!("reading --key-file {}", self.key_file.display()))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match (&self.trusted_ca_file, self.client_cert_auth) {
            (Some(ca), client_auth) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca)
                    .with_context(|| format!("reading --trusted-ca-file {}", ca.display()))?
                {
                    roots.add(c.with_context(|| {
                        format!("parsing --trusted-ca-file {}", ca.display())
                    })?)?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if client_auth {
                    verifier.build()?
                } else {
                    verifier.allow_unauthenticated().build()?
                };
                builder.with_client_cert_verifier(verifier)
            }
            (None, true) => bail!("--client-cert-auth needs --trusted-ca-file"),
            (None, false) => builder.with_no_client_auth(),
        };
        let mut cfg = builder
            .with_single_cert(certs, key)
            .context("the key does not match the certificate")?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

/// The common name of the client's verified certificate, if it sent one.
pub fn peer_common_name(tls: &TlsStream<tokio::net::TcpStream>) -> Option<Arc<str>> {
    let (_, conn) = tls.get_ref();
    let der = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(Arc::from(cn))
}

/// A listener that completes TLS handshakes off the accept loop (a slow or silent client never
/// holds up the others) and hands out the established connections.
pub struct TlsListener {
    local: std::net::SocketAddr,
    rx: mpsc::Receiver<(
        AuthorityFixStream<CombinedWrites<TlsStream<tokio::net::TcpStream>>>,
        std::net::SocketAddr,
    )>,
}

/// Longest time a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl TlsListener {
    /// Starts accepting on `listener` with `config`.
    pub fn new(listener: TcpListener, config: rustls::ServerConfig) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, addr) = match listener.accept().await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let io = AuthorityFixStream::new(CombinedWrites::new(tls));
                            let _ = tx.send((io, addr)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(client = %addr, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(client = %addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { local, rx })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = AuthorityFixStream<CombinedWrites<TlsStream<tokio::net::TcpStream>>>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(v) => v,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
