//! What a guest prints must not drive the host's terminal. A guest's output may hold escape
//! sequences that set the terminal's title, rewrite the screen, write the host clipboard
//! (OSC 52), answer queries into the terminal's input, or change its character set.
//! [`TermFilter`] passes printable text (any valid UTF-8), newlines and tabs, and drops the
//! rest: C0 controls, DEL, C1 controls (as bytes or UTF-8), every escape sequence whole, and a
//! carriage return that does not end a line (it could overwrite what the line shows) and
//! bidirectional overrides (they reorder what is shown). Invalid UTF-8 becomes U+FFFD.
//! [`escaped`] makes a guest's string safe to quote in a message. Qubes' `qvm-run` filters a guest's output to a terminal the same way.
//!
//! The filter is a streaming one: a sequence or a character split across writes is handled
//! the same as one written whole.

use std::io::{self, Write};

/// Where the filter is in the byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Plain text.
    Ground,
    /// After ESC.
    Escape,
    /// After ESC and intermediate bytes (0x20..=0x2f): ends at a final byte.
    EscapeIntermediate,
    /// In a control sequence (CSI): ends at a final byte (0x40..=0x7e).
    Csi,
    /// In a string (OSC, DCS, SOS, PM, APC): ends at BEL or ST (ESC \).
    String,
    /// ESC inside a string: `\` ends it.
    StringEscape,
    /// After a CR: kept only if a LF follows.
    CarriageReturn,
}

/// A [`Write`] that passes on only what is safe to show on a terminal (see the module docs).
pub struct TermFilter<W: Write> {
    inner: W,
    state: State,
    /// The start of a UTF-8 character whose other bytes have not come yet.
    partial: Vec<u8>,
}

/// The Unicode replacement character, for bytes that are not UTF-8.
const REPLACEMENT: &[u8] = "\u{fffd}".as_bytes();

impl<W: Write> TermFilter<W> {
    pub fn new(inner: W) -> TermFilter<W> {
        TermFilter {
            inner,
            state: State::Ground,
            partial: Vec::new(),
        }
    }

    /// The safe part of `buf`, given what came before.
    fn filter(&mut self, buf: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(buf.len());
        for &b in buf {
            self.byte(b, &mut out);
        }
        out
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        const ESC: u8 = 0x1b;
        const BEL: u8 = 0x07;
        match self.state {
            State::Escape => {
                self.state = match b {
                    b'[' => State::Csi,
                    b']' | b'P' | b'X' | b'^' | b'_' => State::String,
                    0x20..=0x2f => State::EscapeIntermediate,
                    ESC => State::Escape,
                    _ => State::Ground,
                };
                return;
            }
            State::EscapeIntermediate => {
                if !(0x20..=0x2f).contains(&b) {
                    self.state = if b == ESC {
                        State::Escape
                    } else {
                        State::Ground
                    };
                }
                return;
            }
            State::Csi => {
                match b {
                    0x20..=0x3f => {}
                    ESC => self.state = State::Escape,
                    // A final byte ends it; any other byte aborts it (and is dropped).
                    _ => self.state = State::Ground,
                }
                return;
            }
            State::String => {
                match b {
                    BEL => self.state = State::Ground,
                    ESC => self.state = State::StringEscape,
                    _ => {}
                }
                return;
            }
            State::StringEscape => {
                self.state = match b {
                    b'\\' => State::Ground,
                    ESC => State::StringEscape,
                    _ => State::String,
                };
                return;
            }
            State::CarriageReturn => {
                self.state = State::Ground;
                if b == b'\n' {
                    out.extend_from_slice(b"\r\n");
                    return;
                }
            }
            State::Ground => {}
        }
        // Ground: finish or continue a UTF-8 character first.
        if !self.partial.is_empty() {
            if b & 0xc0 == 0x80 {
                self.partial.push(b);
                if let Ok(s) = std::str::from_utf8(&self.partial) {
                    if let Some(c) = s.chars().next() {
                        // U+0080..=U+009F are the C1 controls (CSI, OSC, DCS...), and
                        // bidirectional overrides reorder what a terminal shows: dropped.
                        if !c.is_control() && !is_bidi_control(c) {
                            out.extend_from_slice(&self.partial);
                        }
                    }
                    self.partial.clear();
                } else if self.partial.len() >= utf8_len(self.partial[0])
                    || std::str::from_utf8(&self.partial)
                        .err()
                        .is_some_and(|e| e.error_len().is_some())
                {
                    self.partial.clear();
                    out.extend_from_slice(REPLACEMENT);
                }
                return;
            }
            // The character was cut short.
            self.partial.clear();
            out.extend_from_slice(REPLACEMENT);
        }
        match b {
            b'\n' | b'\t' | 0x20..=0x7e => out.push(b),
            b'\r' => self.state = State::CarriageReturn,
            ESC => self.state = State::Escape,
            0xc2..=0xf4 => self.partial.push(b),
            // Other C0 controls and DEL are dropped; other bytes are not UTF-8.
            0x00..=0x1f | 0x7f => {}
            _ => out.extend_from_slice(REPLACEMENT),
        }
    }
}

/// The Unicode bidirectional formatting characters: a terminal that honours them shows text in
/// another order than it was written (a command can look like another).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` for quoting in a message: every control character but tab (and every bidirectional
/// formatting character) written as `\xNN` / `\u{NNNN}`, cut to `max` characters. For what a
/// guest says that ends up in an error or a status line.
pub fn escaped(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() && c != '\t' {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else if is_bidi_control(c) {
            out.push_str(&format!("\\u{{{:04x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// How many bytes a UTF-8 character starting with `lead` has.
fn utf8_len(lead: u8) -> usize {
    match lead {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

impl<W: Write> Write for TermFilter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let safe = self.filter(buf);
        self.inner.write_all(&safe)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `w`, filtered when `filter` (the output is a terminal and the user did not ask for raw
/// output).
pub fn for_terminal<'a>(w: impl Write + 'a, filter: bool) -> Box<dyn Write + 'a> {
    if filter {
        Box::new(TermFilter::new(w))
    } else {
        Box::new(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the filter passes of `input`, written whole and, separately, one byte at a time
    /// (both must agree).
    fn shown(input: &[u8]) -> String {
        let mut whole = TermFilter::new(Vec::new());
        whole.write_all(input).unwrap();
        let mut split = TermFilter::new(Vec::new());
        for b in input {
            split.write_all(&[*b]).unwrap();
        }
        assert_eq!(
            whole.inner, split.inner,
            "split writes differ for {input:?}"
        );
        String::from_utf8(whole.inner).unwrap()
    }

    #[test]
    fn text_newlines_tabs_and_unicode_pass() {
        assert_eq!(shown(b"hello\tworld\r\n"), "hello\tworld\r\n");
        assert_eq!(shown("grüße, 東京, 🦀\n".as_bytes()), "grüße, 東京, 🦀\n");
    }

    #[test]
    fn the_clipboard_title_and_screen_cannot_be_driven() {
        // OSC 52 writes the host clipboard; OSC 0 sets the title; CSI clears the screen.
        assert_eq!(shown(b"a\x1b]52;c;ZXZpbA==\x07b"), "ab");
        assert_eq!(shown(b"a\x1b]0;sudo password:\x1b\\b"), "ab");
        assert_eq!(shown(b"a\x1b[2J\x1b[1;1Hb\x1b[31mc"), "abc");
        // DCS (e.g. a DECRQSS query whose answer lands in the terminal's input), APC, PM.
        assert_eq!(shown(b"a\x1bP$qm\x1b\\b\x1b_x\x1b\\c\x1b^y\x07d"), "abcd");
        // Character-set switches and other two-byte escapes.
        assert_eq!(shown(b"a\x1b(0b\x1bcc\x1b#8d"), "abcd");
    }

    #[test]
    fn c0_c1_and_del_are_dropped() {
        assert_eq!(shown(b"a\x07\x08\x0e\x0f\x7fb\x00c"), "abc");
        // 8-bit CSI as a raw byte (not UTF-8) and as UTF-8 (U+009B).
        assert_eq!(shown(b"a\x9b31mb"), "a\u{fffd}31mb");
        assert_eq!(shown("a\u{9b}31mb\u{9d}c".as_bytes()), "a31mbc");
    }

    #[test]
    fn a_carriage_return_that_does_not_end_a_line_is_dropped() {
        assert_eq!(shown(b"rm -rf ~\rls     \n"), "rm -rf ~ls     \n");
        assert_eq!(shown(b"a\r\r\nb\r"), "a\r\nb");
    }

    #[test]
    fn bidirectional_overrides_are_dropped() {
        // "\u{202e}" would show "txt.exe" as "exe.txt"-like reordered text.
        assert_eq!(shown("a\u{202e}b\u{2066}c\u{200f}d".as_bytes()), "abcd");
        assert_eq!(escaped("x\u{202e}y\x1b[2J", 100), "x\\u{202e}y\\x1b[2J");
        assert_eq!(escaped("abcdef", 3), "abc…");
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(shown(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(shown(b"a\xe6\x9db"), "a\u{fffd}b");
        assert_eq!(shown(b"a\xc3"), "a");
        assert_eq!(shown(b"a\xed\xa0\x80b"), "a\u{fffd}\u{fffd}b");
        // An escape right after a cut-short character: the character is replaced, the
        // escape still dropped.
        assert_eq!(shown(b"a\xe6\x1b[2Jb"), "a\u{fffd}b");
    }

    #[test]
    fn an_unterminated_sequence_hides_only_itself() {
        assert_eq!(shown(b"ok\x1b]0;never ends"), "ok");
        assert_eq!(shown(b"ok\x1b[12"), "ok");
    }
}
