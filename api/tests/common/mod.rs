//! What the API's integration tests share: reading a raw answer to its end.

use std::io::Read;
use std::os::unix::net::UnixStream;

/// Reads until the server closes the connection (or resets it after its answer), and returns
/// all it sent.
pub fn read_all(s: &mut UnixStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read: {e} after {:?}", String::from_utf8_lossy(&out)),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
