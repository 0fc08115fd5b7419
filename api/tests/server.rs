//! The server on a real unix socket, with a mock handler: hyper's client for well-formed
//! requests, raw bytes on a std UnixStream for the malformed and slow ones.

// An integration test is a crate of its own: clippy's allow-unwrap-in-tests covers its #[test]
// functions but not the helpers beside them, which may unwrap just the same.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::HeaderMap;
use hyper::Request;
use hyper_util::rt::TokioIo;
use qvm_api::{
    ApiError, ApiReply, ApiRequest, ApiServer, Handler, Method, Route, ServerConfig, API_VERSION,
};
use serde_json::{json, Value};
use tempfile::TempDir;

mod common;
use common::read_all;

/// Records each request and answers by route; some bodies make it misbehave.
#[derive(Default)]
struct Mock {
    seen: Mutex<Vec<ApiRequest>>,
}

impl Handler for Mock {
    fn handle(&self, req: ApiRequest) -> ApiReply {
        self.seen.lock().unwrap().push(req.clone());
        let action = req
            .body
            .as_ref()
            .and_then(|b| b.get("action"))
            .and_then(Value::as_str);
        match (&req.route, action) {
            (Route::Actions, Some("sleep")) => {
                std::thread::sleep(Duration::from_secs(2));
                ApiReply::no_content()
            }
            (Route::Actions, Some("panic")) => panic!("mock handler told to panic"),
            (Route::Actions, Some("bad-status")) => ApiReply::new(99, json!({})),
            (Route::Actions, Some("204-with-body")) => ApiReply::new(204, json!({"x": 1})),
            (Route::Actions, Some("conflict")) => {
                ApiReply::error(409, "the VM is not configured; PUT /vm/config first")
            }
            (Route::Vm, _) => ApiReply::ok(json!({"state": "not_configured", "config": null})),
            (Route::Metrics, _) => ApiReply::ok(json!({"exits": 0})),
            _ => ApiReply::no_content(),
        }
    }
}

impl Mock {
    fn last(&self) -> ApiRequest {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the handler saw no request")
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

struct Fixture {
    dir: TempDir,
    server: ApiServer,
    mock: Arc<Mock>,
}

impl Fixture {
    fn sock(&self) -> &Path {
        self.server.socket()
    }
}

fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path().join("api.sock"));
    tweak(&mut cfg);
    let mock = Arc::new(Mock::default());
    let server = ApiServer::start(cfg, mock.clone()).unwrap();
    Fixture { dir, server, mock }
}

fn start() -> Fixture {
    start_with(|_| {})
}

struct Resp {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        assert_eq!(
            self.headers
                .get("content-type")
                .map(|v| v.to_str().unwrap()),
            Some("application/json"),
            "status {}",
            self.status
        );
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn error(&self) -> String {
        let v = self.json();
        assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
        v["error"].as_str().expect("no error message").to_string()
    }
}

fn build(method: &str, path: &str, content_type: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Sends requests one after the other on one keep-alive connection.
fn call_many(sock: &Path, reqs: Vec<Request<Full<Bytes>>>) -> Vec<Resp> {
    runtime().block_on(async {
        let stream = tokio::net::UnixStream::connect(sock).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut out = Vec::new();
        for req in reqs {
            let resp = sender.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            out.push(Resp {
                status,
                headers,
                body: String::from_utf8(body.to_vec()).unwrap(),
            });
        }
        out
    })
}

fn call(sock: &Path, method: &str, path: &str, body: Option<&str>) -> Resp {
    let ct = body.map(|_| "application/json");
    call_with(sock, method, path, ct, body.unwrap_or(""))
}

fn call_with(sock: &Path, method: &str, path: &str, ct: Option<&str>, body: &str) -> Resp {
    call_many(sock, vec![build(method, path, ct, body)])
        .pop()
        .unwrap()
}

/// Writes `bytes` and reads until the server closes (or errors after its answer).
fn raw(sock: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer and close before it has read everything (413): ignore EPIPE.
    let _ = s.write_all(bytes);
    read_all(&mut s)
}

fn status_of(raw_response: &str) -> u16 {
    raw_response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {raw_response:?}"))
}

fn body_of(raw_response: &str) -> Value {
    let (_, body) = raw_response.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap()
}

#[test]
fn every_route_reaches_the_handler() {
    let f = start();
    let obj = r#"{"a": [1, {"b": null}], "unknown_field": true}"#;
    let cases: Vec<(&str, &str, Option<&str>, Method, Route)> = vec![
        ("GET", "/vm", None, Method::Get, Route::Vm),
        ("PUT", "/vm/config", Some(obj), Method::Put, Route::VmConfig),
        ("PUT", "/vm/machine", Some(obj), Method::Put, Route::Machine),
        ("PUT", "/vm/boot", Some(obj), Method::Put, Route::Boot),
        ("PUT", "/vm/console", Some(obj), Method::Put, Route::Console),
        (
            "PUT",
            "/vm/disks/root",
            Some(obj),
            Method::Put,
            Route::Disk("root".into()),
        ),
        (
            "DELETE",
            "/vm/disks/root",
            None,
            Method::Delete,
            Route::Disk("root".into()),
        ),
        (
            "PUT",
            "/vm/net/eth-0",
            Some(obj),
            Method::Put,
            Route::Net("eth-0".into()),
        ),
        (
            "DELETE",
            "/vm/net/eth-0",
            None,
            Method::Delete,
            Route::Net("eth-0".into()),
        ),
        ("PUT", "/vm/vsock", Some(obj), Method::Put, Route::Vsock),
        ("DELETE", "/vm/vsock", None, Method::Delete, Route::Vsock),
        (
            "PUT",
            "/vm/fs/home.v1",
            Some(obj),
            Method::Put,
            Route::Fs("home.v1".into()),
        ),
        (
            "DELETE",
            "/vm/fs/home.v1",
            None,
            Method::Delete,
            Route::Fs("home.v1".into()),
        ),
        ("PUT", "/vm/wayland", Some(obj), Method::Put, Route::Wayland),
        (
            "DELETE",
            "/vm/wayland",
            None,
            Method::Delete,
            Route::Wayland,
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action": "start"}"#),
            Method::Put,
            Route::Actions,
        ),
        ("GET", "/metrics", None, Method::Get, Route::Metrics),
    ];
    for (i, (method, path, body, want_method, want_route)) in cases.into_iter().enumerate() {
        let r = call(f.sock(), method, path, body);
        assert_eq!(f.mock.count(), i + 1, "{method} {path}");
        let seen = f.mock.last();
        assert_eq!(seen.method, want_method, "{method} {path}");
        assert_eq!(seen.route, want_route, "{method} {path}");
        assert_eq!(
            seen.body,
            body.map(|b| serde_json::from_str::<Value>(b).unwrap()),
            "{method} {path}"
        );
        match want_route {
            Route::Vm => assert_eq!(r.json()["state"], "not_configured"),
            Route::Metrics => assert_eq!(r.json(), json!({"exits": 0})),
            _ => {
                assert_eq!(r.status, 204, "{method} {path}");
                assert!(r.body.is_empty());
            }
        }
    }
    // The query string is ignored.
    let r = call(f.sock(), "GET", "/vm?pretty=1", None);
    assert_eq!(r.status, 200);
    assert_eq!(f.mock.last().route, Route::Vm);
}

#[test]
fn version_is_answered_without_the_handler() {
    let f = start();
    let r = call(f.sock(), "GET", "/version", None);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"name": "qvm-vmm", "version": env!("CARGO_PKG_VERSION"), "api": API_VERSION})
    );
    assert_eq!(f.mock.count(), 0);
}

/// Connects to `sock` as `uid` (a forked child that drops to it), sends `req` and reads.
/// Returns how many bytes came back before the server closed (None: the connect failed).
fn talk_as(uid: u32, sock: &Path, req: &[u8]) -> Option<usize> {
    use std::os::unix::ffi::OsStrExt;
    // Everything the child needs, built before fork (the child must not allocate).
    // SAFETY: sockaddr_un is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(sock.as_os_str().as_bytes()) {
        *d = *s as libc::c_char;
    }
    let tv = libc::timeval {
        tv_sec: 10,
        tv_usec: 0,
    };
    // SAFETY: the child makes only raw syscalls on stack data, then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: raw syscalls on valid stack data in the forked child.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                libc::_exit(250);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if fd < 0 || libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                libc::_exit(251);
            }
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            libc::write(fd, req.as_ptr().cast(), req.len());
            let mut buf = [0u8; 4096];
            let mut got = 0usize;
            loop {
                let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                if n <= 0 {
                    break;
                }
                got += n as usize;
            }
            libc::_exit(got.min(200) as i32);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    match libc::WEXITSTATUS(status) {
        250 => panic!("cannot drop to uid {uid}"),
        251 => None,
        n => Some(n as usize),
    }
}

/// Another local user who can reach the socket (its mode loosened to 0666, as a careless
/// directory or caller might leave it) still cannot use the API: the peer's credentials
/// decide, and the connection is closed without an answer. Root and the owner are let in.
#[test]
fn another_user_is_refused_even_when_it_can_reach_the_socket() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test connects as another uid, which needs root (CI runs as root)"
    );
    let f = start();
    let mode = std::fs::metadata(f.sock()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    std::fs::set_permissions(f.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(f.sock(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let req = b"GET /version HTTP/1.1\r\nHost: qvm\r\nConnection: close\r\n\r\n";
    assert_eq!(talk_as(65534, f.sock(), req), Some(0));
    assert!(talk_as(0, f.sock(), req).is_some_and(|n| n > 0));
    assert_eq!(status_of(&raw(f.sock(), req)), 200);
}

#[test]
fn unknown_path_is_404_and_wrong_method_is_405() {
    let f = start();
    let r = call(f.sock(), "GET", "/vms", None);
    assert_eq!(r.status, 404);
    let e = r.error();
    assert!(
        e.starts_with("no such path: /vms; the API serves /version, /vm,"),
        "{e}"
    );

    let r = call(f.sock(), "DELETE", "/vm", None);
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET");
    assert_eq!(r.error(), "DELETE is not allowed on /vm; use GET");

    let r = call(f.sock(), "GET", "/vm/disks/d1", None);
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "PUT, DELETE");

    let r = call(f.sock(), "POST", "/actions", Some(r#"{"action": "start"}"#));
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "PUT");
    assert_eq!(f.mock.count(), 0);
}

#[test]
fn bad_path_ids_are_400() {
    let f = start();
    let long = "x".repeat(65);
    for path in [
        "/vm/disks/a%20b".to_string(),
        "/vm/net/a:b".to_string(),
        format!("/vm/fs/{long}"),
        "/vm/disks/".to_string(),
    ] {
        let r = call(f.sock(), "DELETE", &path, None);
        assert_eq!(r.status, 400, "{path}");
        let e = r.error();
        assert!(e.contains("in the path: "), "{e}");
    }
    assert_eq!(f.mock.count(), 0);
}

#[test]
fn bad_bodies_are_400() {
    let f = start();
    let r = call(
        f.sock(),
        "PUT",
        "/vm/machine",
        Some("{\n  \"vcpus\": 2,\n}"),
    );
    assert_eq!(r.status, 400);
    let e = r.error();
    assert!(e.starts_with("the body is not valid JSON: "), "{e}");
    assert!(e.contains("line 3 column 1"), "{e}");

    let r = call(f.sock(), "PUT", "/vm/machine", Some(r#"{"vcpus": 2} {"#));
    assert_eq!(r.status, 400);
    assert!(r
        .error()
        .contains("trailing characters at line 1 column 14"));

    let r = call(f.sock(), "PUT", "/actions", Some(r#"["start"]"#));
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error(),
        r#"PUT /actions needs a JSON object as its body, not an array; e.g. {"action": "start"}"#
    );

    let r = call(f.sock(), "PUT", "/vm/boot", None);
    assert_eq!(r.status, 400);
    assert!(r
        .error()
        .starts_with("PUT /vm/boot needs a JSON object as its body, e.g. {\"kernel\""));

    let r = call(f.sock(), "PUT", "/vm/boot", Some("  \n"));
    assert_eq!(r.status, 400);

    // GET and DELETE take no body; an empty one is fine.
    let r = call(f.sock(), "GET", "/vm", Some("{}"));
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error(),
        "GET /vm takes no body; send the request without one"
    );
    let r = call(f.sock(), "DELETE", "/vm/vsock", Some("{}"));
    assert_eq!(r.status, 400);
    assert_eq!(f.mock.count(), 0);
    let r = raw(
        f.sock(),
        b"GET /vm HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), 200);
}

#[test]
fn content_type_must_be_json_or_missing() {
    let f = start();
    let body = r#"{"action": "start"}"#;
    let r = call_with(
        f.sock(),
        "PUT",
        "/actions",
        Some("application/x-www-form-urlencoded"),
        body,
    );
    assert_eq!(r.status, 415);
    assert_eq!(
        r.error(),
        "Content-Type \"application/x-www-form-urlencoded\" is not supported; send the body as \
         JSON with Content-Type: application/json (curl: -H 'Content-Type: application/json')"
    );
    assert_eq!(f.mock.count(), 0);
    for ct in [
        None,
        Some("application/json; charset=utf-8"),
        Some("Application/JSON"),
    ] {
        let r = call_with(f.sock(), "PUT", "/actions", ct, body);
        assert_eq!(r.status, 204, "{ct:?}");
    }
    assert_eq!(f.mock.count(), 3);
}

#[test]
fn large_bodies_are_413() {
    let f = start_with(|c| c.max_body_bytes = 1024);
    // Announced too large: refused before a byte of the body is read.
    let r = raw(
        f.sock(),
        b"PUT /vm/config HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100000000000\r\n\r\n{",
    );
    assert_eq!(status_of(&r), 413, "{r}");
    assert!(r.contains("connection: close\r\n"), "{r}");
    assert_eq!(
        body_of(&r)["error"],
        "the request body is larger than 1024 bytes; send a smaller one"
    );

    // Exactly the limit is fine; one more byte is not.
    let ok = format!(r#"{{"k": "{}"}}"#, "x".repeat(1024 - 9));
    assert_eq!(ok.len(), 1024);
    assert_eq!(call(f.sock(), "PUT", "/vm/config", Some(&ok)).status, 204);
    let big = format!(r#"{{"k": "{}"}}"#, "x".repeat(1024 - 8));
    assert_eq!(call(f.sock(), "PUT", "/vm/config", Some(&big)).status, 413);

    // Chunked, no length announced: cut off while streaming.
    let mut req =
        b"PUT /vm/config HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..64 {
        req.extend_from_slice(b"100\r\n");
        req.extend_from_slice(&[b' '; 256]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = raw(f.sock(), &req);
    assert_eq!(status_of(&r), 413, "{r}");
    assert_eq!(f.mock.count(), 1);
    // Still serving.
    assert_eq!(call(f.sock(), "GET", "/version", None).status, 200);
}

#[test]
fn slow_headers_are_disconnected() {
    let f = start_with(|c| c.header_timeout = Duration::from_millis(300));
    let t0 = Instant::now();
    let r = raw(f.sock(), b"GET /version HTTP/1.1\r\nHost: x\r\n");
    let took = t0.elapsed();
    assert_eq!(r, "", "closed without an answer");
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // An idle keep-alive connection is closed after the same time.
    let mut s = UnixStream::connect(f.sock()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let t0 = Instant::now();
    let r = read_all(&mut s);
    assert_eq!(status_of(&r), 200);
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(call(f.sock(), "GET", "/version", None).status, 200);
}

#[test]
fn slow_body_is_408() {
    let f = start_with(|c| c.request_timeout = Duration::from_millis(300));
    let t0 = Instant::now();
    let r = raw(
        f.sock(),
        b"PUT /actions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"action\"",
    );
    assert_eq!(status_of(&r), 408, "{r}");
    assert!(r.contains("connection: close\r\n"), "{r}");
    assert!(body_of(&r)["error"]
        .as_str()
        .unwrap()
        .starts_with("the request body did not arrive within 300ms"));
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(f.mock.count(), 0);
}

#[test]
fn garbage_gets_400_and_the_server_goes_on() {
    let f = start();
    let r = raw(f.sock(), b"HELLO THERE\r\n\r\n");
    assert_eq!(status_of(&r), 400, "{r}");
    let r = raw(f.sock(), b"\x00\x01\x02 / HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&r), 400, "{r}");
    let r = raw(
        f.sock(),
        b"PUT /actions HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
    );
    assert_eq!(status_of(&r), 400, "{r}");
    assert_eq!(call(f.sock(), "GET", "/version", None).status, 200);
    assert_eq!(f.mock.count(), 0);
}

#[test]
fn keep_alive_survives_request_errors() {
    let f = start();
    let rs = call_many(
        f.sock(),
        vec![
            build("GET", "/nope", None, ""),
            build("PUT", "/vm/machine", Some("application/json"), "{oops"),
            build("DELETE", "/vm", None, ""),
            build("GET", "/vm", None, ""),
        ],
    );
    let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [404, 400, 405, 200]);
}

#[test]
fn connections_over_the_limit_get_503() {
    let f = start_with(|c| c.max_connections = 2);
    let mut held: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(f.sock()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let r = raw(
        f.sock(),
        b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), 503, "{r}");
    assert!(r.contains("retry-after: 1\r\n"), "{r}");
    assert_eq!(
        body_of(&r)["error"],
        "too many connections (at most 2 at once); close one and retry"
    );
    // The connections in service keep working.
    let s = &mut held[0];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(status_of(&read_all(s)), 200);
    // Once one is gone, a new one is served.
    held.remove(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = raw(
            f.sock(),
            b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        if status_of(&r) == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_slow_handler_does_not_block_other_requests() {
    let f = start();
    let sock = f.sock().to_path_buf();
    let t0 = Instant::now();
    let slow = std::thread::spawn(move || {
        call(&sock, "PUT", "/actions", Some(r#"{"action": "sleep"}"#)).status
    });
    // Wait until the slow request is in the handler.
    while f.mock.count() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(call(f.sock(), "GET", "/version", None).status, 200);
    // The handler itself is called concurrently too.
    assert_eq!(call(f.sock(), "GET", "/vm", None).status, 200);
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "blocked behind the slow handler: {:?}",
        t0.elapsed()
    );
    assert_eq!(slow.join().unwrap(), 204);
    assert!(t0.elapsed() >= Duration::from_secs(2));
}

#[test]
fn handler_panics_and_bad_statuses_are_500() {
    let f = start();
    let r = call(f.sock(), "PUT", "/actions", Some(r#"{"action": "panic"}"#));
    assert_eq!(r.status, 500);
    let e = r.error();
    assert!(
        e.starts_with(
            "internal error: the VMM's request handler panicked (mock handler told to panic)"
        ),
        "{e}"
    );
    assert_eq!(call(f.sock(), "GET", "/vm", None).status, 200);

    let r = call(
        f.sock(),
        "PUT",
        "/actions",
        Some(r#"{"action": "bad-status"}"#),
    );
    assert_eq!(r.status, 500);
    assert!(r.error().contains("status 99"));

    // 204 never carries a body; other statuses pass through with theirs.
    let r = call(
        f.sock(),
        "PUT",
        "/actions",
        Some(r#"{"action": "204-with-body"}"#),
    );
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    let r = call(
        f.sock(),
        "PUT",
        "/actions",
        Some(r#"{"action": "conflict"}"#),
    );
    assert_eq!(r.status, 409);
    assert_eq!(r.error(), "the VM is not configured; PUT /vm/config first");
}

#[test]
fn stop_closes_and_removes_the_socket() {
    let f = start();
    let sock = f.sock().to_path_buf();
    assert_eq!(call(&sock, "GET", "/version", None).status, 200);
    // A connection in keep-alive does not hold stop() up.
    let _idle = UnixStream::connect(&sock).unwrap();
    let t0 = Instant::now();
    f.server.stop();
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(!sock.exists());
    assert!(UnixStream::connect(&sock).is_err());

    // Dropping the server stops it too.
    let g = start();
    let sock = g.sock().to_path_buf();
    drop(g.server);
    assert!(!sock.exists());
}

#[test]
fn start_refuses_a_socket_in_use_and_replaces_a_stale_one() {
    let f = start();
    let cfg = ServerConfig::new(f.sock());
    let e = ApiServer::start(cfg.clone(), Arc::new(Mock::default())).unwrap_err();
    assert!(matches!(e, ApiError::SocketInUse { .. }), "{e}");
    assert!(e.to_string().starts_with("another server is listening on "));
    // The first server is unharmed.
    assert_eq!(call(f.sock(), "GET", "/version", None).status, 200);

    // A socket file nobody listens on is replaced.
    let stale = f.dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let s = ApiServer::start(ServerConfig::new(&stale), Arc::new(Mock::default())).unwrap();
    assert_eq!(call(&stale, "GET", "/version", None).status, 200);
    s.stop();

    // A regular file is not ours to remove.
    let file = f.dir.path().join("file");
    std::fs::write(&file, "keep me").unwrap();
    let e = ApiServer::start(ServerConfig::new(&file), Arc::new(Mock::default())).unwrap_err();
    assert!(matches!(e, ApiError::NotASocket { .. }), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

    let long = f.dir.path().join("x".repeat(120));
    let e = ApiServer::start(ServerConfig::new(&long), Arc::new(Mock::default())).unwrap_err();
    assert!(matches!(e, ApiError::PathTooLong { .. }), "{e}");
}

#[test]
fn stop_does_not_wait_long_for_a_blocked_handler() {
    let f = start_with(|c| c.shutdown_grace = Duration::from_millis(200));
    let sock = f.sock().to_path_buf();
    let slow = std::thread::spawn(move || {
        // The connection is closed under the request: no answer.
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            b"PUT /actions HTTP/1.1\r\nHost: x\r\nContent-Length: 19\r\n\r\n{\"action\": \"sleep\"}",
        )
        .unwrap();
        read_all(&mut s)
    });
    let t0 = Instant::now();
    while f.mock.count() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }
    let sock = f.sock().to_path_buf();
    let t0 = Instant::now();
    f.server.stop();
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(150), "{took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(!sock.exists());
    assert_eq!(slow.join().unwrap(), "");
}
