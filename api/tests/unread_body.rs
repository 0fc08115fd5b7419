//! A request refused from its request line alone (404, 405, a bad id) leaves its body unread,
//! and hyper then closes the connection: the answer must say `Connection: close`, or a client
//! reusing the connection finds it closed under its next request (schemathesis did).

// An integration test is a crate of its own: clippy's allow-unwrap-in-tests covers its #[test]
// functions but not the helpers beside them, which may unwrap just the same.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use qvm_api::{ApiReply, ApiRequest, ApiServer, Handler, ServerConfig};

mod common;

struct Ok204;

impl Handler for Ok204 {
    fn handle(&self, _req: ApiRequest) -> ApiReply {
        ApiReply::no_content()
    }
}

/// Sends the head, then the body a moment later (as clients that write them apart do), and
/// returns the whole answer up to the server's close.
fn head_then_body(sock: &std::path::Path, method: &str, path: &str) -> String {
    let body = br#"{"path": "/tmp/x"}"#;
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // The server may have answered and closed already.
    let _ = s.write_all(body);
    common::read_all(&mut s)
}

#[test]
fn early_refusals_of_requests_with_bodies_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(
        ServerConfig::new(dir.path().join("api.sock")),
        Arc::new(Ok204),
    )
    .unwrap();
    for (method, path, status) in [
        ("GET", "/vm/disks/d0", "405"),
        ("POST", "/vm/machine", "405"),
        ("PUT", "/nope", "404"),
        ("PUT", "/vm/disks/a:b", "400"),
    ] {
        let r = head_then_body(server.socket(), method, path);
        assert!(
            r.starts_with(&format!("HTTP/1.1 {status} ")),
            "{method} {path}: {r}"
        );
        assert!(r.contains("connection: close\r\n"), "{method} {path}: {r}");
    }
    // Without a body the connection stays open for the next request.
    let mut s = UnixStream::connect(server.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    let r = String::from_utf8_lossy(&buf[..n]);
    assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
    assert!(!r.contains("connection: close"), "{r}");
    s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 "));
    server.stop();
}
