//! `[limits]`: what a client may cost the broker (connections, handshakes,
//! deadlines, HTTP/2 settings, message sizes), with the defaults a broker facing
//! an untrusted network should run with.
use super::{ConfigError, invalid};
use serde::Deserialize;
use std::time::Duration;

/// What a client may cost the broker before (and after) it has proved who it is:
/// connections, handshakes, deadlines, HTTP/2 settings and message sizes. Every
/// listener is held to them. The defaults are what a broker facing an untrusted
/// network should run with; README "Hardening and limits" explains each.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open connections, all listeners together (each costs a file descriptor).
    /// Clamped at start to what the process's file descriptor limit leaves after
    /// the database pool and files. At the cap, a new connection evicts the
    /// oldest one that has not proved an identity (a handshake in progress, a
    /// connection without a valid SVID, any HTTP-port connection); if every
    /// connection has, the new one is closed at once.
    pub max_connections: usize,
    /// TLS handshakes in progress at once, counted from the ClientHello (a client
    /// that never sends one holds no handshake slot). At the cap, the oldest
    /// handshake in progress is dropped for the new one.
    pub max_handshakes: usize,
    /// From accepting the TCP connection to the end of the TLS handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// From the end of the handshake (or the TCP accept, on the HTTP port) to
    /// the first request; also how long a connection without a valid X.509-SVID
    /// may stay open with no call in flight.
    #[serde(with = "humantime_serde")]
    pub first_request_timeout: Duration,
    /// How long an authenticated connection may stay open with no call in flight.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// HTTP/1 (the HTTP port): the time to receive a request's headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// HTTP/2 keepalive: a PING after this long without frames; no answer within
    /// `keepalive_timeout` closes the connection.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// HTTP/2 streams (calls) in flight on one connection.
    pub max_concurrent_streams: u32,
    /// Request headers (HTTP/2 header list, HTTP/1 header block), in bytes.
    pub max_header_bytes: u32,
    /// Largest request message per gRPC service, in bytes. TaskService carries
    /// objectives and scope lists; the others tokens, IDs and short reasons.
    pub task_message_bytes: usize,
    pub token_message_bytes: usize,
    pub admin_message_bytes: usize,
    pub verifier_message_bytes: usize,
    /// Refused handshakes, refused and evicted connections are counted in
    /// metrics and summed up in one log line per interval, never logged one by one.
    #[serde(with = "humantime_serde")]
    pub log_summary_interval: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 4096,
            max_handshakes: 512,
            handshake_timeout: Duration::from_secs(5),
            first_request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
            header_read_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_concurrent_streams: 128,
            max_header_bytes: 16 * 1024,
            task_message_bytes: 64 * 1024,
            token_message_bytes: 16 * 1024,
            admin_message_bytes: 16 * 1024,
            verifier_message_bytes: 16 * 1024,
            log_summary_interval: Duration::from_secs(60),
        }
    }
}

impl LimitsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let l = self;
        for (key, n, min, max) in [
            ("limits.max_connections", l.max_connections, 16, 1_000_000),
            ("limits.max_handshakes", l.max_handshakes, 1, 100_000),
            (
                "limits.max_concurrent_streams",
                l.max_concurrent_streams as usize,
                1,
                10_000,
            ),
            (
                "limits.max_header_bytes",
                l.max_header_bytes as usize,
                4096,
                1 << 20,
            ),
            (
                "limits.task_message_bytes",
                l.task_message_bytes,
                1024,
                16 << 20,
            ),
            (
                "limits.token_message_bytes",
                l.token_message_bytes,
                1024,
                16 << 20,
            ),
            (
                "limits.admin_message_bytes",
                l.admin_message_bytes,
                1024,
                16 << 20,
            ),
            (
                "limits.verifier_message_bytes",
                l.verifier_message_bytes,
                1024,
                16 << 20,
            ),
        ] {
            if !(min..=max).contains(&n) {
                return Err(invalid(key, format!("must be between {min} and {max}")));
            }
        }
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        for (key, d, min, max) in [
            (
                "limits.handshake_timeout",
                l.handshake_timeout,
                ms(100),
                s(60),
            ),
            (
                "limits.first_request_timeout",
                l.first_request_timeout,
                ms(100),
                s(300),
            ),
            ("limits.idle_timeout", l.idle_timeout, s(1), s(86_400)),
            (
                "limits.header_read_timeout",
                l.header_read_timeout,
                ms(100),
                s(60),
            ),
            (
                "limits.keepalive_interval",
                l.keepalive_interval,
                s(1),
                s(3600),
            ),
            (
                "limits.keepalive_timeout",
                l.keepalive_timeout,
                ms(100),
                s(300),
            ),
            (
                "limits.log_summary_interval",
                l.log_summary_interval,
                s(1),
                s(3600),
            ),
        ] {
            if !(min..=max).contains(&d) {
                return Err(invalid(
                    key,
                    format!(
                        "must be between {} and {}",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                ));
            }
        }
        Ok(())
    }
}
