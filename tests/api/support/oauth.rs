//! A plain HTTPS client of the OAuth front door, for what no stock client
//! sends on purpose (repeated parameters, wrong types, huge bodies): HTTP/1.1
//! (or HTTP/2) over rustls, one connection per request, presenting an SVID or
//! nothing.
use super::app::TestApp;
use mayfly::identity::devcerts::{DevCa, Issued};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;

/// What came back.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The OAuth error code, or panics.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error in {}", String::from_utf8_lossy(&self.body)))
            .to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone)]
pub struct OauthClient {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

/// A TLS client config trusting `ca`, presenting `identity` (or nothing),
/// offering `alpn`.
pub fn client_tls(ca: &DevCa, identity: Option<&Issued>, alpn: &[&[u8]]) -> rustls::ClientConfig {
    mayfly::app::install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut cfg = match identity {
        Some(id) => {
            let chain: Vec<_> = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

impl OauthClient {
    pub fn new(addr: SocketAddr, ca: &DevCa, identity: Option<&Issued>) -> Self {
        let cfg = client_tls(ca, identity, &[b"http/1.1"]);
        OauthClient {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        }
    }

    /// POSTs `body` as a form.
    pub async fn form(&self, path: &str, body: &str) -> Reply {
        self.send(
            "POST",
            path,
            &[("content-type", "application/x-www-form-urlencoded")],
            body.as_bytes().to_vec(),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, &[], vec![]).await
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let mut send = http1(self.addr, &self.tls).await;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(axum::body::Body::from(body)).unwrap();
        let resp = send.send_request(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        let body = axum::body::to_bytes(axum::body::Body::new(body), 1 << 20)
            .await
            .expect("body")
            .to_vec();
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }
}

/// An HTTP/1.1 connection over TLS to `addr` (as `localhost`), driven in the
/// background; its request sender.
pub async fn http1(
    addr: SocketAddr,
    tls: &tokio_rustls::TlsConnector,
) -> hyper::client::conn::http1::SendRequest<axum::body::Body> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tls
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    send
}

impl TestApp {
    /// A front-door client presenting a fresh SVID for `spiffe_id`.
    pub fn oauth(&self, spiffe_id: &str) -> (OauthClient, Issued) {
        let id = self.pki.ca.svid(spiffe_id).unwrap();
        (OauthClient::new(self.grpc, &self.pki.ca, Some(&id)), id)
    }

    /// A front-door client presenting no certificate.
    pub fn oauth_anonymous(&self) -> OauthClient {
        OauthClient::new(self.grpc, &self.pki.ca, None)
    }
}

/// `application/x-www-form-urlencoded` of `pairs`.
pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// A form to mint `read` of `resource` (`customers/eu/42`) of the CRM under
/// `task` for 60 s.
pub fn mint_form(task: &str, resource: &str) -> String {
    form(&[
        ("grant_type", "client_credentials"),
        ("task_id", task),
        ("audience", "crm-api"),
        ("scope", &format!("read:{resource}")),
        ("ttl_seconds", "60"),
    ])
}

impl TestApp {
    /// Rows of every table a refused request must leave alone: audit events,
    /// tokens, revocations, delegation offers, approvals.
    pub async fn stored(&self) -> [i64; 5] {
        let mut n = [0; 5];
        for (i, t) in [
            "audit_events",
            "tokens",
            "revocations",
            "delegations",
            "approvals",
        ]
        .iter()
        .enumerate()
        {
            n[i] = super::db::rows(&self.db_url, t).await;
        }
        n
    }

    /// Completes `task` as the orchestrator.
    pub async fn complete_task(&self, task: &str) {
        self.tasks(super::pki::ORCH)
            .await
            .complete_task(mayfly::api::pb::CompleteTaskRequest {
                task_id: task.into(),
            })
            .await
            .expect("complete task");
    }
}
