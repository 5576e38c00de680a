//! One mint over each edge: gRPC `MintToken` on a tonic channel, or the OAuth
//! front door's `POST /oauth/token` (the `client_credentials` form any OAuth
//! client sends) over HTTP/1.1 or HTTP/2; on a connection kept open, or on a
//! new one per request (TCP, TLS handshake, then the request). What the
//! broker's answer counts as is `answer.rs`'s.
use super::answer::{Outcome, chain, door_answer, grpc_refusal};
use super::figures::Failure;
use crate::api::pb;
use crate::api::pb::token_service_client::TokenServiceClient;
use crate::client::{Broker, CONNECT_TIMEOUT, Svid, exit};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

/// One mint: in which task, for what, for how long.
pub(super) struct Ask<'a> {
    pub task: &'a str,
    pub audience: &'a str,
    pub resource: &'a str,
    pub action: &'a str,
    pub ttl: Duration,
}

/// The longest answer read from the front door: a token answer is about a
/// kilobyte.
const MAX_ANSWER: usize = 64 * 1024;

/// The OAuth front door of one broker, as the agent, speaking HTTP/2 or
/// HTTP/1.1 (chosen by ALPN, which offers only the one asked for).
#[derive(Clone)]
pub(super) struct FrontDoor {
    tls: tokio_rustls::TlsConnector,
    authority: String,
    server_name: ServerName<'static>,
    url: String,
    h2: bool,
}

/// An open connection to the front door, and why it ended once it has: a
/// broker refusing the client's certificate says so in a TLS alert that only
/// the connection's own task reads, while a request on it only learns that
/// the connection went away.
pub(super) struct Connection {
    to: Sender,
    ended: watch::Receiver<Option<String>>,
}

enum Sender {
    H1(http1::SendRequest<String>),
    H2(http2::SendRequest<String>),
}

/// How long a failed request waits for its connection's task to say why the
/// connection ended.
const WHY_ENDED: Duration = Duration::from_millis(200);

impl Connection {
    pub fn is_closed(&self) -> bool {
        match &self.to {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    /// Another handle on the same HTTP/2 connection (HTTP/1.1 carries one
    /// request at a time: none).
    fn share(&self) -> Option<Connection> {
        match &self.to {
            Sender::H1(_) => None,
            Sender::H2(s) => Some(Connection {
                to: Sender::H2(s.clone()),
                ended: self.ended.clone(),
            }),
        }
    }

    async fn send(
        &mut self,
        req: hyper::Request<String>,
    ) -> hyper::Result<hyper::Response<Incoming>> {
        match &mut self.to {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }

    /// `e`, and why the connection ended if it did.
    async fn failure(&mut self, e: &hyper::Error) -> String {
        let said = chain(e);
        let why = tokio::time::timeout(WHY_ENDED, self.ended.wait_for(Option::is_some)).await;
        match why {
            Ok(Ok(why)) => match why.as_deref() {
                Some(why) if !said.contains(why) => format!("{said}: {why}"),
                _ => said,
            },
            _ => said,
        }
    }
}

/// Drives a connection in a task of its own; why it ended, if with an error,
/// goes to the receiver.
fn drive<C, E>(conn: C) -> watch::Receiver<Option<String>>
where
    C: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send,
{
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            let _ = tx.send(Some(chain(&e)));
        }
    });
    rx
}

fn unreachable(message: String) -> Failure {
    Failure::new("connect", message, exit::UNREACHABLE)
}

impl FrontDoor {
    pub fn new(broker: &Broker, agent: &Svid, h2: bool) -> anyhow::Result<Self> {
        let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
        let tls = broker.rustls_config(agent, alpn)?;
        Ok(FrontDoor {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            authority: broker.authority().to_string(),
            server_name: broker.server_name().clone(),
            url: broker.url.clone(),
            h2,
        })
    }

    /// A new connection: TCP, the TLS handshake, the HTTP handshake.
    pub async fn connect(&self) -> Result<Connection, Failure> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connect_now()).await {
            Ok(r) => r,
            Err(_) => Err(unreachable(format!(
                "no connection to {} within {CONNECT_TIMEOUT:?}",
                self.url
            ))),
        }
    }

    async fn connect_now(&self) -> Result<Connection, Failure> {
        let tcp = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| unreachable(format!("TCP to {}: {e}", self.authority)))?;
        // As tonic's channels do: a request is one small write, sent at once.
        tcp.set_nodelay(true)
            .map_err(|e| unreachable(format!("TCP_NODELAY: {e}")))?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| unreachable(format!("TLS handshake with {}: {}", self.url, chain(&e))))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        if h2 != self.h2 {
            return Err(unreachable(format!(
                "the broker at {} did not agree to {} (ALPN)",
                self.url,
                if self.h2 { "h2" } else { "http/1.1" }
            )));
        }
        let io = TokioIo::new(tls);
        let broken = |e: hyper::Error| unreachable(format!("HTTP handshake: {}", chain(&e)));
        Ok(if h2 {
            let (send, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(broken)?;
            Connection {
                to: Sender::H2(send),
                ended: drive(conn),
            }
        } else {
            let (send, conn) = http1::handshake(io).await.map_err(broken)?;
            Connection {
                to: Sender::H1(send),
                ended: drive(conn),
            }
        })
    }

    /// One mint on `send`; whether the connection is still usable after it.
    async fn mint(&self, send: &mut Connection, ask: &Ask<'_>) -> (Outcome, bool) {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("task_id", ask.task)
            .append_pair("audience", ask.audience)
            .append_pair("scope", &format!("{}:{}", ask.action, ask.resource))
            .append_pair("ttl_seconds", &ask.ttl.as_secs().to_string())
            .finish();
        // HTTP/2 requests carry the authority in the URI; HTTP/1.1 ones in Host.
        let uri = match send.to {
            Sender::H1(_) => "/oauth/token".to_string(),
            Sender::H2(_) => format!("https://{}/oauth/token", self.authority),
        };
        let req = hyper::Request::post(uri)
            .header(hyper::header::HOST, &self.authority)
            .header(
                hyper::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body);
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                return (
                    Outcome::Failed(Failure::new("request", e.to_string(), 1)),
                    true,
                );
            }
        };
        let resp = match send.send(req).await {
            Ok(r) => r,
            Err(e) => {
                let why = send.failure(&e).await;
                return (Outcome::Failed(Failure::new("http", why, 1)), false);
            }
        };
        let status = resp.status().as_u16();
        match read_body(resp.into_body()).await {
            Ok(body) => (door_answer(status, &body), true),
            Err(why) => (Outcome::Failed(Failure::new("http", why, 1)), false),
        }
    }
}

/// A response body, at most [`MAX_ANSWER`] bytes.
async fn read_body(mut body: Incoming) -> Result<Vec<u8>, String> {
    use http_body::Body;
    let mut out = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| chain(&e))?;
        if let Ok(data) = frame.into_data() {
            out.extend_from_slice(&data);
            if out.len() > MAX_ANSWER {
                return Err(format!("an answer over {MAX_ANSWER} bytes"));
            }
        }
    }
    Ok(out)
}

/// How a worker reaches the broker.
pub(super) enum Route {
    /// A kept gRPC channel (shared with other workers: HTTP/2 multiplexes).
    Grpc(TokenServiceClient<Channel>),
    /// A new gRPC connection for every request (one endpoint for all workers).
    GrpcFresh(Arc<Endpoint>),
    /// A kept front-door connection (HTTP/2 ones shared); none after one
    /// broke, until the next request opens another.
    Door {
        door: FrontDoor,
        send: Option<Connection>,
    },
    /// A new front-door connection for every request.
    DoorFresh(FrontDoor),
}

impl Route {
    /// One mint, within `timeout` (a connection opened for it included).
    pub async fn mint(&mut self, ask: &Ask<'_>, timeout: Duration) -> Outcome {
        let late = || {
            Outcome::Failed(Failure::new(
                "timeout",
                format!("no answer within {timeout:?}"),
                exit::UNREACHABLE,
            ))
        };
        match self {
            Route::Grpc(client) => tokio::time::timeout(timeout, grpc_mint(client, ask))
                .await
                .unwrap_or_else(|_| late()),
            Route::GrpcFresh(endpoint) => {
                let once = async {
                    match endpoint.connect().await {
                        Ok(ch) => grpc_mint(&mut TokenServiceClient::new(ch), ask).await,
                        Err(e) => Outcome::Failed(unreachable(chain(&e))),
                    }
                };
                tokio::time::timeout(timeout, once)
                    .await
                    .unwrap_or_else(|_| late())
            }
            Route::Door { door, send } => {
                let once = async {
                    let s = match send {
                        Some(s) if !s.is_closed() => s,
                        // Closed by the broker or broken by an earlier failure:
                        // a new connection, its handshake counted in this mint.
                        _ => match door.connect().await {
                            Ok(s) => send.insert(s),
                            Err(f) => return (Outcome::Failed(f), true),
                        },
                    };
                    door.mint(s, ask).await
                };
                match tokio::time::timeout(timeout, once).await {
                    Ok((outcome, true)) => outcome,
                    Ok((outcome, false)) => {
                        *send = None;
                        outcome
                    }
                    // A request abandoned half-way leaves its connection
                    // unusable (HTTP/1.1 has no way to cancel it).
                    Err(_) => {
                        *send = None;
                        late()
                    }
                }
            }
            Route::DoorFresh(door) => {
                let once = async {
                    match door.connect().await {
                        Ok(mut s) => door.mint(&mut s, ask).await.0,
                        Err(f) => Outcome::Failed(f),
                    }
                };
                tokio::time::timeout(timeout, once)
                    .await
                    .unwrap_or_else(|_| late())
            }
        }
    }

    /// Opens again a kept front-door connection that the broker closed (say,
    /// idle past its `limits.idle_timeout` between two phases); whether it did.
    pub async fn reopen_if_closed(&mut self) -> Result<bool, Failure> {
        match self {
            Route::Door { door, send } if send.as_ref().is_none_or(Connection::is_closed) => {
                *send = Some(door.connect().await?);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

async fn grpc_mint(client: &mut TokenServiceClient<Channel>, ask: &Ask<'_>) -> Outcome {
    let req = pb::MintTokenRequest {
        task_id: ask.task.to_string(),
        scope: Some(pb::Scope {
            audience: ask.audience.to_string(),
            resource: ask.resource.to_string(),
            action: ask.action.to_string(),
        }),
        ttl_seconds: ask.ttl.as_secs(),
    };
    match client.mint_token(req).await {
        Ok(r) => {
            let r = r.into_inner();
            if !r.token.is_empty() {
                Outcome::Minted
            } else if r.approval.is_some() {
                Outcome::Failed(Failure::new(
                    "step-up",
                    "the action waits for a security team's approval; bench an action without step-up",
                    exit::CONFLICT,
                ))
            } else {
                Outcome::Failed(Failure::new("no token", "the answer holds no token", 1))
            }
        }
        Err(s) => grpc_refusal(&s),
    }
}

/// The connections of `concurrency` workers, one each: HTTP/1.1 carries one
/// request at a time, so each worker holds its own connection; gRPC and h2
/// share a few, as an agent fleet's processes would multiplex theirs.
/// `fresh`: none kept, a new one per request.
pub(super) async fn routes(
    edge: super::Edge,
    concurrency: usize,
    fresh: bool,
    broker: &Broker,
    agent: &Svid,
) -> anyhow::Result<Vec<Route>> {
    use super::Edge;
    let shared = concurrency.clamp(1, SHARED);
    let door_failed = |f: Failure| -> anyhow::Error {
        crate::client::Failed {
            code: f.code,
            message: format!(
                "cannot connect to the broker's front door at {}: {}",
                broker.url, f.message
            ),
        }
        .into()
    };
    let mut routes = Vec::with_capacity(concurrency);
    match (edge, fresh) {
        (Edge::Grpc, true) => {
            let endpoint = Arc::new(broker.endpoint(agent)?);
            routes.extend((0..concurrency).map(|_| Route::GrpcFresh(endpoint.clone())));
        }
        (Edge::Grpc, false) => {
            let mut channels = Vec::with_capacity(shared);
            for _ in 0..shared {
                channels.push(
                    broker
                        .connect(agent)
                        .await
                        .map_err(|e| crate::client::Failed {
                            code: exit::UNREACHABLE,
                            message: format!("{e:#}"),
                        })?,
                );
            }
            routes.extend(
                (0..concurrency)
                    .map(|w| Route::Grpc(TokenServiceClient::new(channels[w % shared].clone()))),
            );
        }
        (Edge::Http | Edge::H2, true) => {
            let door = FrontDoor::new(broker, agent, edge == Edge::H2)?;
            routes.extend((0..concurrency).map(|_| Route::DoorFresh(door.clone())));
        }
        (Edge::H2, false) => {
            let door = FrontDoor::new(broker, agent, true)?;
            let mut sends = Vec::with_capacity(shared);
            for _ in 0..shared {
                sends.push(door.connect().await.map_err(door_failed)?);
            }
            routes.extend((0..concurrency).map(|w| Route::Door {
                door: door.clone(),
                send: sends[w % shared].share(),
            }));
        }
        (Edge::Http, false) => {
            let door = FrontDoor::new(broker, agent, false)?;
            for _ in 0..concurrency {
                let send = door.connect().await.map_err(door_failed)?;
                routes.push(Route::Door {
                    door: door.clone(),
                    send: Some(send),
                });
            }
        }
    }
    Ok(routes)
}

/// Kept HTTP/2 connections the workers of a multiplexing edge share.
const SHARED: usize = 4;
