//! A deterministic byte stream and a fast checksum, so both ends of a transfer can check it
//! without shipping the data twice (and without a crypto dependency in static guest tools).

/// The stream for `seed`: xorshift64* words, little-endian.
pub struct Pattern {
    state: u64,
    buf: [u8; 8],
    used: usize,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed | 1,
            buf: [0; 8],
            used: 8,
        }
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out.iter_mut() {
            if self.used == 8 {
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                self.buf = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                self.used = 0;
            }
            *b = self.buf[self.used];
            self.used += 1;
        }
    }
}

/// FNV-1a over 64-bit words (the tail zero-padded), plus the length. Streaming: feeding the
/// same bytes in any split gives the same result.
#[derive(Clone)]
pub struct Checksum {
    h: u64,
    pending: [u8; 8],
    npending: usize,
    len: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Checksum {
            h: 0xcbf2_9ce4_8422_2325,
            pending: [0; 8],
            npending: 0,
            len: 0,
        }
    }
}

impl Checksum {
    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(0x0000_0100_0000_01b3);
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        while self.npending != 0 && !data.is_empty() {
            self.pending[self.npending] = data[0];
            self.npending += 1;
            data = &data[1..];
            if self.npending == 8 {
                self.word(u64::from_le_bytes(self.pending));
                self.npending = 0;
            }
        }
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        for &b in chunks.remainder() {
            self.pending[self.npending] = b;
            self.npending += 1;
        }
    }

    /// `<len> <hex>`.
    pub fn finish(mut self) -> String {
        if self.npending != 0 {
            self.pending[self.npending..].fill(0);
            self.word(u64::from_le_bytes(self.pending));
        }
        format!("{} {:016x}", self.len, self.h)
    }
}

/// Checksum of the first `n` bytes of the stream for `seed`.
pub fn expected(seed: u64, n: u64) -> String {
    let mut p = Pattern::new(seed);
    let mut c = Checksum::default();
    let mut buf = vec![0u8; 64 << 10];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        p.fill(&mut buf[..k]);
        c.update(&buf[..k]);
        left -= k as u64;
    }
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_does_not_depend_on_how_data_is_split() {
        let mut data = vec![0u8; 1000];
        Pattern::new(7).fill(&mut data);
        let mut whole = Checksum::default();
        whole.update(&data);
        let mut parts = Checksum::default();
        for c in data.chunks(13) {
            parts.update(c);
        }
        assert_eq!(whole.finish(), parts.finish());
        assert_eq!(expected(7, 1000), {
            let mut c = Checksum::default();
            c.update(&data);
            c.finish()
        });
    }

    #[test]
    fn pattern_is_the_same_in_any_split() {
        let mut a = vec![0u8; 100];
        Pattern::new(3).fill(&mut a);
        let mut b = vec![0u8; 100];
        let mut p = Pattern::new(3);
        p.fill(&mut b[..37]);
        p.fill(&mut b[37..]);
        assert_eq!(a, b);
        assert_ne!(expected(3, 100), expected(4, 100));
    }
}
