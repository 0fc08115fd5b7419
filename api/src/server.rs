//! The server: a current-thread tokio runtime on the "qvm-api" thread, hyper's HTTP/1.1 on each
//! accepted unix-socket connection, the handler on tokio's blocking pool.

use std::convert::Infallible;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::error::{ApiError, RequestError};
use crate::routes::{allow_header, resolve, Endpoint, Method};
use crate::{ApiReply, ApiRequest, Handler, ServerConfig, API_VERSION};

/// `sockaddr_un.sun_path` holds 108 bytes with the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// hyper's read buffer, which bounds the request head and each body chunk held at once.
const MAX_BUF_SIZE: usize = 16 * 1024;

type Reply = Response<Full<Bytes>>;

/// The running server. Dropping it stops it too.
pub struct ApiServer {
    socket: PathBuf,
    /// The socket file we created, to remove only that one.
    inode: Option<(u64, u64)>,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds the socket (an error if a server listens there; a stale socket file is replaced),
    /// starts the "qvm-api" thread and returns once connections are accepted.
    pub fn start(cfg: ServerConfig, handler: Arc<dyn Handler>) -> Result<ApiServer, ApiError> {
        if cfg.max_connections == 0 {
            return Err(ApiError::InvalidConfig(
                "max_connections is 0; allow at least 1",
            ));
        }
        if cfg.max_body_bytes == 0 {
            return Err(ApiError::InvalidConfig(
                "max_body_bytes is 0; PUT requests need a body",
            ));
        }
        let std_listener = bind(&cfg.socket)?;
        let meta = std::fs::metadata(&cfg.socket).map_err(|source| {
            let _ = std::fs::remove_file(&cfg.socket);
            ApiError::Bind {
                path: cfg.socket.clone(),
                source,
            }
        })?;
        let inode = Some((meta.dev(), meta.ino()));
        // Only the VMM's user (and root) may use the API. Our euid, not the socket file's
        // owner: the path could be swapped after bind.
        // SAFETY: geteuid cannot fail.
        let owner = unsafe { libc::geteuid() };
        let socket = cfg.socket.clone();
        let remove_on_error = |e: ApiError| {
            let _ = std::fs::remove_file(&socket);
            e
        };
        let hook = cfg.thread_hook;
        let mut builder = tokio::runtime::Builder::new_current_thread();
        if let Some(h) = hook {
            builder.on_thread_start(h);
        }
        let runtime = builder
            .enable_io()
            .enable_time()
            .thread_name("qvm-api-handler")
            .max_blocking_threads(cfg.max_connections)
            .build()
            .map_err(|e| remove_on_error(ApiError::Runtime(e)))?;
        let listener = {
            let _guard = runtime.enter();
            std_listener
                .set_nonblocking(true)
                .and_then(|()| UnixListener::from_std(std_listener))
                .map_err(|e| remove_on_error(ApiError::Runtime(e)))?
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("qvm-api".into())
            .spawn(move || {
                if let Some(h) = hook {
                    h();
                }
                runtime.block_on(serve(listener, owner, cfg, handler, shutdown_rx));
                // Handlers still blocked are left to finish on their own.
                runtime.shutdown_background();
            })
            .map_err(|e| remove_on_error(ApiError::Thread(e)))?;
        log::info!("API listening on {}", socket.display());
        Ok(ApiServer {
            socket,
            inode,
            shutdown,
            thread: Some(thread),
        })
    }

    /// The socket the server listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops accepting, lets requests in progress finish for up to
    /// [`ServerConfig::shutdown_grace`], closes the connections, joins the thread and removes
    /// the socket file.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shutdown.send_replace(true);
        if thread.join().is_err() {
            log::error!("the qvm-api thread panicked");
        }
        let ours = std::fs::metadata(&self.socket)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.inode {
            if let Err(e) = std::fs::remove_file(&self.socket) {
                log::warn!("cannot remove {}: {e}", self.socket.display());
            }
        }
    }
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("socket", &self.socket)
            .field("running", &self.thread.is_some())
            .finish()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// Listens on `path`, replacing a socket file nobody listens on.
fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, ApiError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(ApiError::PathTooLong {
            path: path.to_path_buf(),
            len,
            max: MAX_SOCKET_PATH,
        });
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ApiError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ApiError::SocketInUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(|source| ApiError::RemoveStale {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let listener =
        std::os::unix::net::UnixListener::bind(path).map_err(|source| ApiError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
    // The API controls the VM: only its owner may talk to it.
    if let Err(source) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(path);
        return Err(ApiError::Bind {
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(listener)
}

/// What every request needs.
struct Context {
    cfg: ServerConfig,
    handler: Arc<dyn Handler>,
}

async fn serve(
    listener: UnixListener,
    owner: u32,
    cfg: ServerConfig,
    handler: Arc<dyn Handler>,
    mut shutdown: watch::Receiver<bool>,
) {
    let grace = cfg.shutdown_grace;
    let served = Arc::new(Semaphore::new(cfg.max_connections));
    // Connections over the limit get a 503; this many at most, the rest are closed at once.
    let refused = Arc::new(Semaphore::new(cfg.max_connections));
    let ctx = Arc::new(Context { cfg, handler });
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let stream = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                // The socket is 0600, but its directory's or a caller's mistake must not hand
                // the VM to another user: the peer's credentials decide.
                Ok((stream, _)) => match stream.peer_cred() {
                    Ok(c) if c.uid() == owner || c.uid() == 0 => stream,
                    Ok(c) => {
                        log::warn!(
                            "API: refused a connection from uid {} (only uid {owner}, this VMM's user, and root may use it)",
                            c.uid()
                        );
                        continue;
                    }
                    Err(e) => {
                        log::warn!("API: refused a connection whose credentials cannot be read: {e}");
                        continue;
                    }
                },
                Err(e) => {
                    // EMFILE and the like: wait for connections to close rather than spin.
                    log::warn!("API: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Ok(permit) = served.clone().try_acquire_owned() {
            let ctx = ctx.clone();
            let shutdown = shutdown.clone();
            conns.spawn(async move {
                serve_connection(stream, ctx, shutdown).await;
                drop(permit);
            });
        } else if let Ok(permit) = refused.clone().try_acquire_owned() {
            let ctx = ctx.clone();
            conns.spawn(async move {
                refuse_connection(stream, &ctx).await;
                drop(permit);
            });
        } else {
            drop(stream);
        }
    }
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        log::warn!("API: closing connections with requests still in progress");
    }
    conns.abort_all();
}

fn http1_builder(ctx: &Context) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(ctx.cfg.header_timeout)
        .max_buf_size(MAX_BUF_SIZE);
    b
}

async fn serve_connection(
    stream: UnixStream,
    ctx: Arc<Context>,
    mut shutdown: watch::Receiver<bool>,
) {
    let service = {
        let ctx = ctx.clone();
        service_fn(move |req| {
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(answer(req, &ctx).await) }
        })
    };
    let conn = http1_builder(&ctx).serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        log::debug!("API connection: {e}");
    }
}

/// Answers the one request of a connection over the limit with 503 and closes it.
async fn refuse_connection(stream: UnixStream, ctx: &Context) {
    let max = ctx.cfg.max_connections;
    let service = service_fn(move |_req| async move {
        Ok::<_, Infallible>(error_reply(&RequestError::Overloaded(max)))
    });
    let conn = http1_builder(ctx)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(ctx.cfg.header_timeout, conn).await;
}

/// The answer to one request.
async fn answer(req: Request<Incoming>, ctx: &Context) -> Reply {
    let has_body = !req.body().is_end_stream();
    match route_and_call(req, ctx).await {
        Ok(reply) => reply,
        Err(e) => {
            log::debug!("API: {} {e}", e.status());
            let mut r = error_reply(&e);
            // Refused before its body was read (404, 405, a bad id): hyper then closes the
            // connection unless the body happens to be in already, so say so; a client that
            // reused it would find it closed under its next request.
            if has_body && e.precedes_body() {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            r
        }
    }
}

async fn route_and_call(req: Request<Incoming>, ctx: &Context) -> Result<Reply, RequestError> {
    let path = req.uri().path().to_string();
    let endpoint = resolve(&path)?;
    let allowed = endpoint.methods();
    let method = Method::from_http(req.method())
        .filter(|m| allowed.contains(m))
        .ok_or_else(|| RequestError::MethodNotAllowed {
            method: req.method().to_string(),
            path: path.clone(),
            allow: allow_header(allowed),
        })?;
    let body = read_body(req, ctx).await?;
    let body = check_body(method, &path, &endpoint, body)?;
    let route = match endpoint {
        Endpoint::Version => {
            return Ok(json_reply(
                StatusCode::OK,
                &json!({"name": "qvm-vmm", "version": env!("CARGO_PKG_VERSION"), "api": API_VERSION}),
            ))
        }
        Endpoint::Route(r) => r,
    };
    let handler = ctx.handler.clone();
    let request = ApiRequest {
        method,
        route,
        body,
    };
    let reply = tokio::task::spawn_blocking(move || handler.handle(request))
        .await
        .map_err(|e| {
            if e.is_panic() {
                RequestError::HandlerPanicked(panic_message(e.into_panic()))
            } else {
                RequestError::HandlerFailed(e.to_string())
            }
        })?;
    handler_reply(reply)
}

/// Reads the whole body within the size and time limits, after checking its Content-Type.
async fn read_body(req: Request<Incoming>, ctx: &Context) -> Result<Bytes, RequestError> {
    let limit = ctx.cfg.max_body_bytes;
    let hint = req.body().size_hint();
    if hint.exact() == Some(0) {
        return Ok(Bytes::new());
    }
    if hint.lower() > limit as u64 {
        return Err(RequestError::BodyTooLarge { limit });
    }
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let text = String::from_utf8_lossy(ct.as_bytes());
        let mime = text.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Err(RequestError::UnsupportedMediaType {
                got: text.into_owned(),
            });
        }
    }
    let collect = Limited::new(req.into_body(), limit).collect();
    match tokio::time::timeout(ctx.cfg.request_timeout, collect).await {
        Err(_) => Err(RequestError::Timeout(ctx.cfg.request_timeout)),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(RequestError::BodyTooLarge { limit }),
        Ok(Err(e)) => Err(RequestError::BodyRead(e.to_string())),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// A PUT needs one JSON object; GET and DELETE none.
fn check_body(
    method: Method,
    path: &str,
    endpoint: &Endpoint,
    body: Bytes,
) -> Result<Option<Value>, RequestError> {
    let example = match endpoint {
        Endpoint::Route(r) => r.example_body(),
        Endpoint::Version => "{}",
    };
    if !method.takes_body() {
        if body.is_empty() {
            return Ok(None);
        }
        return Err(RequestError::UnexpectedBody {
            method: method.to_string(),
            path: path.to_string(),
        });
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(RequestError::MissingBody {
            method: method.to_string(),
            path: path.to_string(),
            example,
        });
    }
    let value: Value = serde_json::from_slice(&body).map_err(RequestError::BadJson)?;
    let got = match &value {
        Value::Object(_) => return Ok(Some(value)),
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
    };
    Err(RequestError::NotAnObject {
        method: method.to_string(),
        path: path.to_string(),
        got,
        example,
    })
}

fn handler_reply(reply: ApiReply) -> Result<Reply, RequestError> {
    let status = StatusCode::from_u16(reply.status)
        .ok()
        .filter(|s| s.as_u16() >= 200 && s.as_u16() <= 599)
        .ok_or(RequestError::BadReplyStatus(reply.status))?;
    if status == StatusCode::NO_CONTENT {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = status;
        return Ok(r);
    }
    Ok(json_reply(status, &reply.body))
}

fn json_reply(status: StatusCode, body: &Value) -> Reply {
    // A Value always serializes.
    let mut bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"null".to_vec());
    bytes.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error_reply(e: &RequestError) -> Reply {
    let mut r = json_reply(e.status(), &json!({ "error": e.to_string() }));
    let headers = r.headers_mut();
    if let RequestError::MethodNotAllowed { allow, .. } = e {
        if let Ok(v) = HeaderValue::from_str(allow) {
            headers.insert(header::ALLOW, v);
        }
    }
    if e.closes_connection() {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if matches!(e, RequestError::Overloaded(_)) {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "no message".to_string()
    }
}
