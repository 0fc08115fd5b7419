//! A small blocking client for the API socket: `qvm-vmm ctl` and the tests use it. One request
//! per connection, on hyper's HTTP/1.1 client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::Method;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the API socket {path}: {source} (is qvm-vmm running with --api-sock {path}?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("API request to {path} failed: {message}")]
    Http { path: PathBuf, message: String },
    #[error("no answer from the API socket {path} within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("cannot start the client runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// A reply: status code and body text (JSON, or empty for 204).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Sends one request (`path` like `/vm` or `/actions`, `body` JSON text) and waits up to
/// `timeout` for the whole reply.
pub fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClientError::Runtime)?;
    let http = |message: String| ClientError::Http {
        path: socket.to_path_buf(),
        message,
    };
    rt.block_on(async {
        let fut = async {
            let stream =
                UnixStream::connect(socket)
                    .await
                    .map_err(|source| ClientError::Connect {
                        path: socket.to_path_buf(),
                        source,
                    })?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| http(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut req = Request::builder()
                .method(method.as_str())
                .uri(path)
                .header(header::HOST, "localhost");
            if body.is_some() {
                req = req.header(header::CONTENT_TYPE, "application/json");
            }
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
                .map_err(|e| http(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| http(e.to_string()))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| http(e.to_string()))?
                .to_bytes();
            Ok(Reply {
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            })
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout {
                path: socket.to_path_buf(),
                timeout,
            })?
    })
}
