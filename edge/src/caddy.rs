//! Caddy's admin API over its local Unix socket: `POST /load` applies a whole configuration
//! atomically (Caddy keeps the running one when it refuses the new one), `GET /config/` reads
//! what runs. The socket is root's (0600 in a root-only directory): no network listener can
//! reconfigure the proxy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

use crate::error::{Error, Result};

/// How long one admin request may take: Caddy answers `/load` once the new configuration runs
/// (listeners bound, old servers told to finish), well under a second on an idle node.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The most of an answer that is read (an error message, or the running configuration).
const ANSWER_MAX: usize = 16 * 1024 * 1024;

/// The admin endpoint of one Caddy.
#[derive(Debug, Clone)]
pub struct Admin {
    socket: PathBuf,
}

impl Admin {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Admin {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The address Caddy's own configuration gives for this endpoint (`unix/<path>`).
    pub fn caddy_address(&self) -> String {
        format!("unix/{}", self.socket.display())
    }

    /// Applies `config` (a whole configuration, JSON). A configuration Caddy refuses is
    /// [`Error::Refused`] with Caddy's message; the one it ran before goes on serving.
    pub async fn load(&self, config: &str) -> Result<()> {
        let (status, body) = self
            .request("POST", "/load", Some(config.as_bytes().to_vec()))
            .await?;
        if status.is_success() {
            return Ok(());
        }
        Err(Error::Refused(refusal_message(status, &body)))
    }

    /// The configuration Caddy runs now (JSON; `null` when it has none).
    pub async fn config(&self) -> Result<serde_json::Value> {
        let (status, body) = self.request("GET", "/config/", None).await?;
        if !status.is_success() {
            return Err(Error::Caddy(refusal_message(status, &body)));
        }
        serde_json::from_slice(&body).map_err(|e| Error::Caddy(format!("GET /config/: {e}")))
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Vec<u8>)> {
        let what = format!("{method} {path}");
        let exchange = async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|e| Error::Unreachable {
                    socket: self.socket.clone(),
                    reason: e.to_string(),
                })?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| Error::Caddy(format!("{what}: {e}")))?;
            // The connection's own task: it ends with the exchange (one request per connection).
            let driver = tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                // Caddy checks the Host of admin requests against its listen address, and a Unix
                // socket has no name: an empty Host is the one it allows ("localhost" is refused).
                .header("Host", "");
            if body.is_some() {
                req = req.header("Content-Type", "application/json");
            }
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| Error::Caddy(format!("{what}: {e}")))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| Error::Caddy(format!("{what}: {e}")))?;
            let status = resp.status();
            let limited = http_body_util::Limited::new(resp.into_body(), ANSWER_MAX);
            let bytes = limited
                .collect()
                .await
                .map_err(|e| Error::Caddy(format!("{what}: reading the answer: {e}")))?
                .to_bytes()
                .to_vec();
            driver.abort();
            Ok((status, bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| Error::Caddy(format!("{what}: no answer in {REQUEST_TIMEOUT:?}")))?
    }
}

/// Caddy's error answer in words: the `error` field of its JSON, else the text, bounded.
fn refusal_message(status: StatusCode, body: &[u8]) -> String {
    let text = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    let mut text: String = text.chars().take(2000).collect();
    if text.is_empty() {
        text = "no message".into();
    }
    format!("HTTP {}: {text}", status.as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_caddys_message() {
        let m = refusal_message(
            StatusCode::BAD_REQUEST,
            br#"{"error":"loading config: listen tcp :80: bind: address already in use"}"#,
        );
        assert_eq!(
            m,
            "HTTP 400: loading config: listen tcp :80: bind: address already in use"
        );
        assert_eq!(
            refusal_message(StatusCode::BAD_GATEWAY, b""),
            "HTTP 502: no message"
        );
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable() {
        let admin = Admin::new("/nonexistent/caddy.sock");
        match admin.load("{}").await {
            Err(Error::Unreachable { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(admin.caddy_address(), "unix//nonexistent/caddy.sock");
    }
}
