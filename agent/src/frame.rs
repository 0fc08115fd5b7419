//! The qvm-run protocol: frames of `type: u8, len: u32 le, payload`, both ways on one stream.
//!
//! host -> guest: `A` one argument (argv[0] first), `E` end of arguments (the agent starts the
//! command), `I` stdin data, `C` stdin closed.
//! guest -> host: `O` stdout data, `R` stderr data, `X` exit status (i32 le; 128+N for signal N),
//! `F` the command could not be started (UTF-8 message), then the agent closes.

use std::io::{self, Read, Write};

pub const ARG: u8 = b'A';
pub const END_ARGS: u8 = b'E';
pub const STDIN: u8 = b'I';
pub const STDIN_CLOSED: u8 = b'C';
pub const STDOUT: u8 = b'O';
pub const STDERR: u8 = b'R';
pub const EXIT: u8 = b'X';
pub const FAILED: u8 = b'F';

/// Largest payload either side accepts; bigger frames end the session.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Most arguments a command may have.
pub const MAX_ARGS: usize = 4096;

pub fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    if payload.len() > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame too large",
        ));
    }
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    w.write_all(&head)?;
    w.write_all(payload)?;
    w.flush()
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes (at most {MAX_PAYLOAD})"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((head[0], payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversize_is_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, ARG, b"echo").unwrap();
        write_frame(&mut buf, END_ARGS, b"").unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r).unwrap(), Some((ARG, b"echo".to_vec())));
        assert_eq!(read_frame(&mut r).unwrap(), Some((END_ARGS, Vec::new())));
        assert_eq!(read_frame(&mut r).unwrap(), None);
        let mut bad = vec![STDIN];
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_frame(&mut &bad[..]).is_err());
        assert!(read_frame(&mut &[STDIN, 1][..]).is_err());
    }
}
