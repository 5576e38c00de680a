//! Who is calling: X.509-SVID verification, roles, and the caller that travels
//! with every request from the verified peer certificate (`SpiffeId` itself is a
//! domain type).
#[cfg(feature = "server")]
pub mod devcerts;
mod svid;

use crate::domain::{IdPattern, SpiffeId};
pub use svid::{BundleError, Svid, TrustBundles, VerifyError, leaf_id, thumbprint};

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The four kinds of principal. An identity holds only the roles it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Agent,
    Orchestrator,
    Admin,
    Verifier,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Agent => "agent",
            Role::Orchestrator => "orchestrator",
            Role::Admin => "admin",
            Role::Verifier => "verifier",
        })
    }
}

/// Role assignment by SPIFFE ID pattern.
#[derive(Debug, Clone, Default)]
pub struct RoleMap {
    entries: Vec<(Role, IdPattern)>,
}

impl RoleMap {
    pub fn new(entries: Vec<(Role, IdPattern)>) -> Self {
        RoleMap { entries }
    }

    pub fn has(&self, id: &SpiffeId, role: Role) -> bool {
        self.entries
            .iter()
            .any(|(r, p)| *r == role && p.matches(id))
    }
}

/// An authenticated caller: its SPIFFE ID and the thumbprint of the certificate it
/// presented on this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub id: SpiffeId,
    pub thumbprint: String,
    /// The certificate's notAfter (Unix seconds): a connection outliving its SVID
    /// is refused from then on.
    pub valid_until: i64,
}

/// What the transport learned about a connection, attached to every request on it.
/// The SVID is verified once per connection, not once per request.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    pub identity: Result<Caller, VerifyError>,
}

/// A server-side TLS connection with the identity its peer certificate proves.
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    info: ConnInfo,
}

impl TlsConn {
    pub fn new(inner: TlsStream<TcpStream>, bundles: &TrustBundles) -> Self {
        let (tcp, session) = inner.get_ref();
        let remote = tcp.peer_addr().ok();
        let identity = match session.peer_certificates() {
            Some(chain) if !chain.is_empty() => bundles
                .verify(chain, rustls::pki_types::UnixTime::now())
                .map(|svid| Caller {
                    id: svid.id,
                    thumbprint: svid.thumbprint,
                    valid_until: svid.not_after,
                }),
            _ => Err(VerifyError::NoCertificate),
        };
        TlsConn {
            inner,
            info: ConnInfo { remote, identity },
        }
    }

    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// Whether the connection speaks HTTP/2: the client chose `h2` by ALPN, or
    /// offered no ALPN at all (gRPC over TLS without ALPN, as before the
    /// front door spoke HTTP/1.1). Only a client that chose `http/1.1` gets it.
    pub fn is_h2(&self) -> bool {
        self.inner.get_ref().1.alpn_protocol() != Some(b"http/1.1")
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
