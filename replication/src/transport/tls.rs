//! mTLS with rustls (ring provider) from PEM files, re-read when they change; the connection type shared by the
//! server (accepted) and the clients (connected).
//!
//! tonic's own TLS settings are fixed when the server is built, so the transport does the handshakes itself with
//! tokio-rustls: every new connection (accepted or dialled) uses the configuration current at that moment;
//! established connections keep theirs.

use core::pin::Pin;
use core::task::{Context, Poll};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::TlsFiles;

/// Why the certificate files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the certificates or key.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

fn file_err(path: &Path, e: impl core::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server and client configurations from the files.
pub fn load(files: &TlsFiles) -> Result<(Arc<ServerConfig>, Arc<ClientConfig>), TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_err(&files.key, e))?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&files.ca)? {
        roots.add(ca).map_err(|e| file_err(&files.ca, e))?;
    }
    let roots = Arc::new(roots);
    let rustls_err = |e: rustls::Error| TlsError::Rustls(e.to_string());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(rustls_err)?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(rustls_err)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(server), Arc::new(client)))
}

/// What identifies a version of a file: modification time, size, inode change time.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The current TLS configurations, reloaded by [`TlsState::reload_if_changed`].
#[derive(Debug)]
pub struct TlsState {
    files: TlsFiles,
    server: RwLock<Arc<ServerConfig>>,
    client: RwLock<Arc<ClientConfig>>,
    stamps: Mutex<[Stamp; 3]>,
}

impl TlsState {
    /// Loads the files.
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let (server, client) = load(&files)?;
        let stamps = [stamp(&files.cert), stamp(&files.key), stamp(&files.ca)];
        Ok(TlsState {
            files,
            server: RwLock::new(server),
            client: RwLock::new(client),
            stamps: Mutex::new(stamps),
        })
    }

    /// Server configuration for the next accepted connection.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        match self.server.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Client configuration for the next connection.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        match self.client.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Name to verify in the server certificate of the peer at `addr`.
    pub fn server_name(&self, addr: SocketAddr) -> Result<ServerName<'static>, TlsError> {
        match &self.files.server_name {
            Some(n) => ServerName::try_from(n.clone()).map_err(|e| TlsError::Rustls(e.to_string())),
            None => Ok(ServerName::IpAddress(addr.ip().into())),
        }
    }

    /// Re-reads the files if any changed (modification time or size): `Ok(true)` when new configurations are in
    /// place, `Ok(false)` when nothing changed, `Err` (old configurations kept) when the new files are unusable,
    /// for example while they are being replaced one by one; the next call tries again.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = [stamp(&self.files.cert), stamp(&self.files.key), stamp(&self.files.ca)];
        let mut stamps = match self.stamps.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if *stamps == now {
            return Ok(false);
        }
        let (server, client) = load(&self.files)?;
        *stamps = now;
        match self.server.write() {
            Ok(mut g) => *g = server,
            Err(p) => *p.into_inner() = server,
        }
        match self.client.write() {
            Ok(mut g) => *g = client,
            Err(p) => *p.into_inner() = client,
        }
        Ok(true)
    }
}

/// A replication connection: plain TCP or TLS over TCP, either side.
#[derive(Debug)]
pub enum Conn {
    /// Plaintext (`insecure_plaintext`).
    Plain(TcpStream),
    /// TLS, accepted by the server.
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS, dialled by a client.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Server(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Conn::Client(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Server(s) => s.is_write_vectored(),
            Conn::Client(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connection information tonic attaches to each request: the peer's address.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// Remote address, if known.
    pub remote: Option<SocketAddr>,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        let remote = match self {
            Conn::Plain(s) => s.peer_addr().ok(),
            Conn::Server(s) => s.get_ref().0.peer_addr().ok(),
            Conn::Client(s) => s.get_ref().0.peer_addr().ok(),
        };
        ConnInfo { remote }
    }
}
