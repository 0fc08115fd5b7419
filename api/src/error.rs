//! Errors: [`ApiError`] when the server cannot start, `RequestError` for a request it refuses.

use std::path::PathBuf;
use std::time::Duration;

use hyper::StatusCode;

/// Why [`crate::ApiServer::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("another server is listening on {path}; stop it or choose another API socket path")]
    SocketInUse { path: PathBuf },
    #[error("{path} exists and is not a unix socket; remove it or choose another API socket path")]
    NotASocket { path: PathBuf },
    #[error(
        "the API socket path {path} is {len} bytes; a unix socket path takes at most {max}, \
         use a shorter one"
    )]
    PathTooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },
    #[error("cannot remove the stale socket {path}: {source}; remove it by hand")]
    RemoveStale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid API server config: {0}")]
    InvalidConfig(&'static str),
    #[error("cannot start the API's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot start the qvm-api thread: {0}")]
    Thread(std::io::Error),
}

/// Why a request is refused. Its message goes to the client as `{"error": message}`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("no such path: {path}; the API serves {}", crate::routes::PATHS.join(", "))]
    NotFound { path: String },
    #[error("{method} is not allowed on {path}; use {allow}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: String,
    },
    #[error("{what} {id:?} in the path: {reason}")]
    BadId {
        what: &'static str,
        id: String,
        reason: String,
    },
    #[error("the request body is larger than {limit} bytes; send a smaller one")]
    BodyTooLarge { limit: usize },
    #[error(
        "Content-Type {got:?} is not supported; send the body as JSON with \
         Content-Type: application/json (curl: -H 'Content-Type: application/json')"
    )]
    UnsupportedMediaType { got: String },
    #[error("the request body did not arrive within {0:?}; send the whole request at once")]
    Timeout(Duration),
    #[error("cannot read the request body: {0}")]
    BodyRead(String),
    #[error("{method} {path} takes no body; send the request without one")]
    UnexpectedBody { method: String, path: String },
    #[error("{method} {path} needs a JSON object as its body, e.g. {example}")]
    MissingBody {
        method: String,
        path: String,
        example: &'static str,
    },
    #[error("the body is not valid JSON: {0}")]
    BadJson(serde_json::Error),
    #[error("{method} {path} needs a JSON object as its body, not {got}; e.g. {example}")]
    NotAnObject {
        method: String,
        path: String,
        got: &'static str,
        example: &'static str,
    },
    #[error(
        "internal error: the VMM's request handler panicked ({0}); the request may be half \
         done, check GET /vm"
    )]
    HandlerPanicked(String),
    #[error("internal error: the VMM's request handler did not finish: {0}")]
    HandlerFailed(String),
    #[error("internal error: the VMM answered with status {0}, which is not a final HTTP status")]
    BadReplyStatus(u16),
    #[error("too many connections (at most {0} at once); close one and retry")]
    Overloaded(usize),
}

impl RequestError {
    pub(crate) fn status(&self) -> StatusCode {
        use RequestError::*;
        match self {
            NotFound { .. } => StatusCode::NOT_FOUND,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            BadId { .. }
            | BodyRead(_)
            | UnexpectedBody { .. }
            | MissingBody { .. }
            | BadJson(_)
            | NotAnObject { .. } => StatusCode::BAD_REQUEST,
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            HandlerPanicked(_) | HandlerFailed(_) | BadReplyStatus(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Found from the request line alone, before the body is read.
    pub(crate) fn precedes_body(&self) -> bool {
        matches!(
            self,
            RequestError::NotFound { .. }
                | RequestError::MethodNotAllowed { .. }
                | RequestError::BadId { .. }
        )
    }

    /// The request's body may be left unread: the connection must not be reused.
    pub(crate) fn closes_connection(&self) -> bool {
        matches!(
            self,
            RequestError::BodyTooLarge { .. }
                | RequestError::Timeout(_)
                | RequestError::BodyRead(_)
                | RequestError::UnsupportedMediaType { .. }
                | RequestError::Overloaded(_)
        )
    }
}
