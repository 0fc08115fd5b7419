//! qvm's REST API: HTTP/1.1 on a unix socket, routing, limits and the error format.
//!
//! The VMM runs an [`ApiServer`] on its own thread and answers requests through a [`Handler`].
//! This crate checks everything about a request that does not need the VMM: the path and method
//! (404, 405), the size of the body (413), its Content-Type (415), that it arrives in time (408)
//! and that it is one well-formed JSON object (400). The handler gets an [`ApiRequest`] with a
//! typed [`Route`] and the JSON object as it came; it checks the fields itself. `GET /version`
//! is answered here.
//!
//! `api/openapi.yaml` is the API's contract; a unit test keeps it and [`Route`] in step.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use qvm_api::{ApiReply, ApiRequest, ApiServer, Handler, Route, ServerConfig};
//!
//! struct Vmm;
//! impl Handler for Vmm {
//!     fn handle(&self, req: ApiRequest) -> ApiReply {
//!         match req.route {
//!             Route::Vm => ApiReply::ok(serde_json::json!({"state": "not_configured", "config": null})),
//!             _ => ApiReply::error(409, "the VM is not configured yet; PUT /vm/config first"),
//!         }
//!     }
//! }
//!
//! let server = ApiServer::start(ServerConfig::new("/tmp/vm.sock"), Arc::new(Vmm)).unwrap();
//! // ... the VMM runs ...
//! server.stop();
//! ```
//!
//! From a shell:
//!
//! ```text
//! $ curl --unix-socket /tmp/vm.sock http://localhost/vm
//! {"config":null,"state":"not_configured"}
//! $ curl --unix-socket /tmp/vm.sock -X PUT -H 'Content-Type: application/json' \
//!        -d '{"action": "start"}' http://localhost/actions
//! ```
//!
//! # Decisions a client sees
//!
//! - A body must be sent with `Content-Type: application/json` or with no Content-Type at all;
//!   anything else gets 415 (curl's `-d` sends `application/x-www-form-urlencoded`: add
//!   `-H 'Content-Type: application/json'`).
//! - GET and DELETE take no body: a non-empty one gets 400. PUT needs a JSON object: none,
//!   an empty one or another JSON value gets 400.
//! - The query string is ignored.
//! - A request refused from its method and path alone (404, 405, a bad id) is answered without
//!   reading its body; if it has one, the answer says `Connection: close` (hyper closes then).
//! - A handler reply with status 204 is sent without a body.
//! - Malformed HTTP (a garbage request line, bad headers) is answered by hyper with an empty
//!   400/414/431 and the connection is closed; a client that does not finish its headers within
//!   [`ServerConfig::header_timeout`] (also an idle keep-alive connection) is disconnected
//!   without an answer.

pub mod client;
mod error;
#[cfg(test)]
mod openapi_tests;
mod routes;
mod server;

use std::path::PathBuf;
use std::time::Duration;

pub use error::ApiError;
pub use routes::{validate_id, Method, Route, MAX_ID_LEN};
pub use server::ApiServer;

/// The API version in `GET /version` and openapi.yaml's `info.version`.
pub const API_VERSION: &str = "v1";

/// A request that passed routing and the JSON checks.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    pub method: Method,
    pub route: Route,
    /// The JSON object of a PUT; `None` for GET and DELETE.
    pub body: Option<serde_json::Value>,
}

/// The handler's answer: a status code and a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiReply {
    /// An HTTP status, 200..=599. 204 is sent without a body (whatever `body` holds).
    pub status: u16,
    pub body: serde_json::Value,
}

impl ApiReply {
    pub fn new(status: u16, body: serde_json::Value) -> Self {
        ApiReply { status, body }
    }

    /// 200 with a JSON body.
    pub fn ok(body: serde_json::Value) -> Self {
        ApiReply::new(200, body)
    }

    /// 204 No Content: the usual answer to a successful PUT or DELETE.
    pub fn no_content() -> Self {
        ApiReply::new(204, serde_json::Value::Null)
    }

    /// An error in the API's format, `{"error": message}`. Say what to fix in `message`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        ApiReply::new(status, serde_json::json!({ "error": message.into() }))
    }
}

/// What the VMM implements. Called on a blocking thread (`spawn_blocking`): it may block while
/// the VMM's event loop works on the request, and other connections are served meanwhile. A
/// panic becomes a 500 and the server keeps running (unless the build aborts on panic).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: ApiRequest) -> ApiReply;
}

/// How the server listens and what it tolerates.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The unix socket to listen on (created with mode 0600).
    pub socket: PathBuf,
    /// Largest request body; more gets 413. Default 64 KiB.
    pub max_body_bytes: usize,
    /// Connections served at once; more get 503 and are closed. Default 64.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (also how long an idle keep-alive
    /// connection stays open); then the connection is closed. Default 10 s.
    pub header_timeout: Duration,
    /// Time a client has to send a request's body once its headers are in; then 408 and the
    /// connection is closed. The handler's own time is not limited. Default 30 s.
    pub request_timeout: Duration,
    /// How long [`ApiServer::stop`] lets requests in progress finish before it closes their
    /// connections. Default 1 s.
    pub shutdown_grace: Duration,
    /// Run first on the server thread and on every handler thread, before any request is read
    /// (the VMM installs its seccomp filter for API threads here). Default none.
    pub thread_hook: Option<fn()>,
}

impl ServerConfig {
    /// The defaults, listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        ServerConfig {
            socket: socket.into(),
            max_body_bytes: 64 * 1024,
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(1),
            thread_hook: None,
        }
    }
}
