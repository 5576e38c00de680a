//! A Server-Sent Events client of the revocation feed: HTTP/1.1 over rustls
//! presenting an SVID (or nothing), reading the body as it comes and splitting
//! it into messages as the SSE spec does (fields, a blank line ends a message),
//! independently of the broker's encoder.
use super::app::TestApp;
use super::oauth::client_tls;
use futures::StreamExt;
use mayfly::identity::devcerts::Issued;
use std::sync::Arc;
use std::time::Duration;

/// One message: its fields as sent (`id` only if the message has an `id:` line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseMessage {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseMessage {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("data is not JSON ({e}): {self:?}"))
    }
}

/// An open feed: the answer's head, then its messages.
pub struct SseFeed {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    body: axum::body::BodyDataStream,
    buf: Vec<u8>,
}

impl SseFeed {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The next message, or `None` once the body has ended cleanly; panics if
    /// the body is cut off or nothing comes within 10 s.
    pub async fn next(&mut self) -> Option<SseMessage> {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("a message or the end within 10 s")
    }

    /// As [`SseFeed::next`], `Err` when nothing comes within `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> Result<Option<SseMessage>, ()> {
        tokio::time::timeout(limit, self.read())
            .await
            .map_err(|_| ())
    }

    async fn read(&mut self) -> Option<SseMessage> {
        loop {
            if let Some(m) = take_message(&mut self.buf) {
                return Some(m);
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                Some(Err(e)) => panic!("the feed was cut off, not ended: {e}"),
                None => {
                    assert!(
                        self.buf.iter().all(|b| *b == b'\n'),
                        "the feed ended inside a message: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                    return None;
                }
            }
        }
    }

    /// The next `n` revocation messages, skipping heartbeats.
    pub async fn events(&mut self, n: usize) -> Vec<SseMessage> {
        let mut out = vec![];
        while out.len() < n {
            let m = self.next().await.expect("the feed stays open");
            if m.event == "revocation" {
                out.push(m);
            }
        }
        out
    }

    /// The next heartbeat's head, skipping events (failing if the feed ends).
    pub async fn heartbeat(&mut self) -> u64 {
        loop {
            let m = self.next().await.expect("the feed stays open");
            if m.event == "heartbeat" {
                assert_eq!(m.id, None, "a heartbeat has no id: {m:?}");
                return m.json()["head"].as_u64().expect("a head");
            }
        }
    }

    /// The rest of the body, for an answer that is not a stream.
    pub async fn rest(mut self) -> Vec<u8> {
        while let Some(b) = self.body.next().await {
            self.buf.extend_from_slice(&b.expect("body"));
        }
        self.buf
    }
}

/// Splits the first message off the front of `buf`: the lines (ending in
/// `\n` or `\r\n`) up to the first blank one; comments are skipped, and so is
/// a block of nothing but comments. `None` until a whole message is in.
pub fn take_message(buf: &mut Vec<u8>) -> Option<SseMessage> {
    loop {
        let mut line_start = 0;
        let mut blank = None;
        for (i, b) in buf.iter().enumerate() {
            if *b == b'\n' {
                let line = &buf[line_start..i];
                if line.is_empty() || line == b"\r" {
                    blank = Some((line_start, i + 1));
                    break;
                }
                line_start = i + 1;
            }
        }
        let (block_end, rest) = blank?;
        let block = String::from_utf8(buf[..block_end].to_vec()).expect("UTF-8");
        buf.drain(..rest);
        let mut m = SseMessage {
            id: None,
            event: String::new(),
            data: String::new(),
        };
        let mut data = vec![];
        let mut any = false;
        for line in block.lines() {
            if line.starts_with(':') {
                continue;
            }
            any = true;
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => m.id = Some(value.to_string()),
                "event" => m.event = value.to_string(),
                "data" => data.push(value),
                other => panic!("an unknown SSE field {other:?} in {block:?}"),
            }
        }
        if any {
            m.data = data.join("\n");
            return Some(m);
        }
    }
}

impl TestApp {
    /// GETs `path` from the mTLS port as `identity` (or presenting nothing)
    /// with `headers`, and returns once the answer's head is in.
    pub async fn feed_as(
        &self,
        identity: Option<&Issued>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> SseFeed {
        let cfg = client_tls(&self.pki.ca, identity, &[b"http/1.1"]);
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let mut send = super::oauth::http1(self.grpc, &tls).await;
        let mut req = hyper::Request::builder()
            .uri(path)
            .header("host", "localhost")
            .header("accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(axum::body::Body::empty()).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
            .await
            .expect("an answer within 10 s")
            .expect("response");
        let (parts, body) = resp.into_parts();
        SseFeed {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: axum::body::Body::new(body).into_data_stream(),
            buf: vec![],
        }
    }

    /// The revocation feed at `path` as a fresh SVID for `spiffe_id`.
    pub async fn feed(&self, spiffe_id: &str, path: &str, headers: &[(&str, &str)]) -> SseFeed {
        let id = self.pki.ca.svid(spiffe_id).unwrap();
        self.feed_as(Some(&id), path, headers).await
    }
}
