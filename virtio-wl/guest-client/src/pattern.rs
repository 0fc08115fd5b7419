//! The test pattern: a pure function of pixel position and frame number.
//!
//! Layout (content coordinates, origin = top-left of the window's buffer):
//! * an 8-pixel L-shaped marker band along the top rows and left columns
//!   (`x < 8 || y < 8`): 8×8 blocks of saturated colours, frame-independent, so a
//!   checker can locate the window whatever frame it shows;
//! * everywhere else gradients mixed with the frame number: red follows x, green
//!   follows y, blue is an xor of both plus the high bits of x, y and the frame, so
//!   two consecutive frames differ in every interior pixel, frames repeat only
//!   every 65536, and inside a 1024×1024 window no interior colour repeats.
//!
//! Pixels are XRGB8888 with the X byte set to 0xff.

/// Width of the marker band, in pixels.
pub const BORDER: u32 = 8;

/// Marker colours, cycled per 8×8 block along the band.
pub const MARKERS: [u32; 6] = [
    0x00ff_00ff, // magenta
    0x0000_ffff, // cyan
    0x00ff_ff00, // yellow
    0x00ff_0000, // red
    0x0000_ff00, // green
    0x0000_00ff, // blue
];

/// The colour of content pixel (`x`, `y`) in frame `frame`, as XRGB8888 (alpha/X byte 0xff).
#[inline]
pub fn pixel(x: u32, y: u32, frame: u32) -> u32 {
    let rgb = if x < BORDER || y < BORDER {
        MARKERS[((x / BORDER + y / BORDER) % MARKERS.len() as u32) as usize]
    } else {
        let r = x.wrapping_add(frame.wrapping_mul(3)) & 0xff;
        let g = y.wrapping_add(frame.wrapping_mul(5)) & 0xff;
        let b = ((x ^ y)
            ^ (x >> 8).wrapping_mul(0x35)
            ^ (y >> 8).wrapping_mul(0x6b)
            ^ frame.wrapping_mul(7)
            ^ (frame >> 8).wrapping_mul(0x9d))
            & 0xff;
        (r << 16) | (g << 8) | b
    };
    0xff00_0000 | rgb
}

/// Fill `buf` (rows of `stride` bytes, little-endian XRGB8888) with frame `frame`.
pub fn draw(buf: &mut [u8], width: u32, height: u32, stride: usize, frame: u32) {
    for y in 0..height {
        let row = &mut buf[y as usize * stride..][..width as usize * 4];
        for (x, px) in row.chunks_exact_mut(4).enumerate() {
            px.copy_from_slice(&pixel(x as u32, y, frame).to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_is_opaque() {
        for (x, y, f) in [(0, 0, 0), (100, 3, 7), (9, 9, 1000), (4000, 3000, 70000)] {
            assert_eq!(pixel(x, y, f) >> 24, 0xff);
        }
    }

    #[test]
    fn consecutive_frames_differ_in_every_interior_pixel() {
        for f in [0u32, 1, 255, 256, 1000] {
            for y in BORDER..300 {
                for x in BORDER..300 {
                    assert_ne!(pixel(x, y, f), pixel(x, y, f + 1), "({x},{y}) frame {f}");
                }
            }
        }
    }

    #[test]
    fn marker_band_is_frame_independent() {
        for f in 0..10 {
            for i in 0..200 {
                assert_eq!(pixel(i, 3, f), pixel(i, 3, 0));
                assert_eq!(pixel(5, i, f), pixel(5, i, 0));
            }
        }
    }

    #[test]
    fn interior_is_unique_within_1024x1024() {
        let mut seen = std::collections::HashSet::new();
        for y in BORDER..1024 {
            for x in BORDER..1024 {
                assert!(seen.insert(pixel(x, y, 3)), "({x},{y}) repeats");
            }
        }
    }

    #[test]
    fn draw_honours_stride() {
        let (w, h, stride) = (10u32, 12u32, 48usize);
        let mut buf = vec![0xaa; stride * h as usize];
        draw(&mut buf, w, h, stride, 5);
        for y in 0..h {
            for x in 0..w {
                let o = y as usize * stride + x as usize * 4;
                assert_eq!(
                    u32::from_le_bytes(buf[o..o + 4].try_into().unwrap()),
                    pixel(x, y, 5)
                );
            }
            assert!(buf[y as usize * stride + 40..][..8]
                .iter()
                .all(|&b| b == 0xaa));
        }
    }
}
