//! Transport security for both listeners: loading the PEM certificate and key into a rustls
//! (ring) server config, and an accept loop that does the TLS handshakes off the accept path,
//! so a slow or silent client never holds up the others.
//!
//! The same [`AcceptedConnections`] feeds tonic (as a stream) and axum (as a
//! [`axum::serve::Listener`]); with `--insecure` it hands out the plain TCP streams instead.

use anyhow::Context as _;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

/// A client that has not finished its handshake after this long is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the collector's listeners talk to their clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// TLS on both listeners with this certificate.
    Tls(TlsFiles),
    /// Plain text, chosen explicitly with `--insecure`; logged at start.
    Insecure,
}

/// The PEM files of the collector's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA whose client certificates authenticate agents (mTLS); `None` turns client
    /// certificates off.
    pub client_ca_file: Option<PathBuf>,
}

/// The ring crypto provider: the one the whole workspace builds (no C toolchain needed).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file; an unreadable file, bad PEM or no certificate at all
/// is an error naming the file.
pub fn load_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let text = std::fs::read(path)
        .with_context(|| format!("failed to read certificate file `{}`", path.display()))?;
    let certificates = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            anyhow::anyhow!(
                "certificate file `{}` is not valid PEM: {error}",
                path.display()
            )
        })?;
    if certificates.is_empty() {
        anyhow::bail!(
            "certificate file `{}` holds no `BEGIN CERTIFICATE` block",
            path.display()
        );
    }
    Ok(certificates)
}

/// Reads the first private key in a PEM file; errors name the file.
pub fn load_private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let text = std::fs::read(path)
        .with_context(|| format!("failed to read private key file `{}`", path.display()))?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|error| {
        anyhow::anyhow!(
            "private key file `{}` holds no usable PEM private key: {error}",
            path.display()
        )
    })
}

/// The server config for one listener: `alpn` is `h2` for gRPC, `http/1.1` for the HTTP side.
/// Client certificates are requested (not required) when `client_ca_file` is set, so agents
/// with a token still connect.
pub fn server_config(files: &TlsFiles, alpn: &[u8]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certificates = load_certificates(&files.cert_file)?;
    let key = load_private_key(&files.key_file)?;
    let provider = crypto_provider();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("the TLS provider supports no protocol version")?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in load_certificates(path)? {
                roots.add(certificate).map_err(|error| {
                    anyhow::anyhow!(
                        "client CA file `{}` holds an unusable CA certificate: {error}",
                        path.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .with_context(|| format!("client CA file `{}` is unusable", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certificates, key)
        .with_context(|| {
            format!(
                "certificate `{}` and private key `{}` do not make a usable pair",
                files.cert_file.display(),
                files.key_file.display()
            )
        })?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// One accepted connection, TLS or (with `--insecure`) plain.
#[derive(Debug)]
pub enum ServerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl ServerStream {
    /// The verified client certificate chain, leaf first, if the client presented one.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        match self {
            ServerStream::Plain(_) => None,
            ServerStream::Tls(stream) => stream.get_ref().1.peer_certificates(),
        }
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(stream) => Pin::new(stream).poll_read(context, buffer),
            ServerStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(context, buffer),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(stream) => Pin::new(stream).poll_write(context, buffer),
            ServerStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(context, buffer),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(stream) => Pin::new(stream).poll_flush(context),
            ServerStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(context),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(stream) => Pin::new(stream).poll_shutdown(context),
            ServerStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(context),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(stream) => Pin::new(stream).poll_write_vectored(context, buffers),
            ServerStream::Tls(stream) => {
                Pin::new(stream.as_mut()).poll_write_vectored(context, buffers)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerStream::Plain(stream) => stream.is_write_vectored(),
            ServerStream::Tls(stream) => stream.is_write_vectored(),
        }
    }
}

/// What a gRPC handler learns about the connection (a request extension).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    /// The verified client certificate chain, leaf first; `None` without mTLS.
    pub certificates: Option<Arc<[CertificateDer<'static>]>>,
}

impl tonic::transport::server::Connected for ServerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        let remote_addr = match self {
            ServerStream::Plain(stream) => stream.peer_addr().ok(),
            ServerStream::Tls(stream) => stream.get_ref().0.peer_addr().ok(),
        };
        PeerInfo {
            remote_addr,
            certificates: self.peer_certificates().map(Arc::from),
        }
    }
}

/// Connections ready to serve: accepted and, with TLS, past the handshake.
#[derive(Debug)]
pub struct AcceptedConnections {
    receiver: mpsc::Receiver<(ServerStream, SocketAddr)>,
    local_addr: SocketAddr,
}

/// Accepts on `listener` until `stop` turns true or the connections are no longer wanted.
/// With an `acceptor`, each handshake runs in its own task, bounded by [`HANDSHAKE_TIMEOUT`];
/// failed handshakes are logged at debug level (scanners and wrong-scheme clients are common).
pub fn accept(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
    name: &'static str,
) -> io::Result<AcceptedConnections> {
    let local_addr = listener.local_addr()?;
    let (sender, receiver) = mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            let (stream, remote) = tokio::select! {
                () = async { let _ = stop.wait_for(|stopping| *stopping).await; } => return,
                () = sender.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        tracing::warn!(listener = name, %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            match &acceptor {
                None => {
                    if sender
                        .send((ServerStream::Plain(stream), remote))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Some(acceptor) => {
                    let (acceptor, sender) = (acceptor.clone(), sender.clone());
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                        {
                            Ok(Ok(stream)) => {
                                let _ = sender
                                    .send((ServerStream::Tls(Box::new(stream)), remote))
                                    .await;
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(listener = name, %remote, %error, "TLS handshake failed");
                            }
                            Err(_) => {
                                tracing::debug!(listener = name, %remote, "TLS handshake timed out");
                            }
                        }
                    });
                }
            }
        }
    });
    Ok(AcceptedConnections {
        receiver,
        local_addr,
    })
}

impl AcceptedConnections {
    /// The connections as the stream tonic's `serve_with_incoming` takes.
    pub fn into_stream(
        self,
    ) -> impl tokio_stream::Stream<Item = Result<ServerStream, io::Error>> + Send + 'static {
        tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(self.receiver),
            |(stream, _)| Ok(stream),
        )
    }
}

impl axum::serve::Listener for AcceptedConnections {
    type Io = ServerStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (ServerStream, SocketAddr) {
        match self.receiver.recv().await {
            Some(accepted) => accepted,
            // The accept loop stopped: so is the server, by its own shutdown signal.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}
