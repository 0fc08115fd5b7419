//! Screenshot checking: decode a PNG, find the demo window by its pattern, verify
//! every pixel of its content.

use std::fmt;
use std::path::Path;

use crate::pattern::{self, BORDER};

/// An RGB image, one `0x00RRGGBB` word per pixel, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u32>,
}

impl Image {
    pub fn at(&self, x: u32, y: u32) -> u32 {
        self.pixels[y as usize * self.width as usize + x as usize]
    }
}

/// Decode an 8- or 16-bit RGB, RGBA, grey or palette PNG into [`Image`].
pub fn decode_png(bytes: &[u8]) -> Result<Image, String> {
    let mut dec = png::Decoder::new(bytes);
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().map_err(|e| format!("png: {e}"))?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("png: {e}"))?;
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err("png: palette was not expanded".into()),
    };
    if info.bit_depth != png::BitDepth::Eight {
        return Err(format!("png: unexpected bit depth {:?}", info.bit_depth));
    }
    let (w, h) = (info.width, info.height);
    let mut pixels = Vec::with_capacity(w as usize * h as usize);
    for row in buf.chunks(info.line_size).take(h as usize) {
        for px in row[..w as usize * channels].chunks_exact(channels) {
            let (r, g, b) = if channels < 3 {
                (px[0], px[0], px[0])
            } else {
                (px[0], px[1], px[2])
            };
            pixels.push(u32::from(r) << 16 | u32::from(g) << 8 | u32::from(b));
        }
    }
    Ok(Image {
        width: w,
        height: h,
        pixels,
    })
}

pub fn load_png(path: &Path) -> Result<Image, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    decode_png(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// One wrong pixel, in content coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    pub x: u32,
    pub y: u32,
    pub expected: u32,
    pub actual: u32,
}

/// The outcome of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every pixel matched.
    Ok { origin: (u32, u32), pixels: u64 },
    /// The marker corner was found but content differs (first mismatches listed).
    Mismatch {
        origin: (u32, u32),
        bad: u64,
        first: Vec<Mismatch>,
    },
    /// No place in the image looks like the window.
    NotFound,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok { origin, pixels } => write!(
                f,
                "QVM-WL-CHECK ok origin=({},{}) pixels={pixels}",
                origin.0, origin.1
            ),
            Outcome::Mismatch { origin, bad, first } => {
                write!(
                    f,
                    "QVM-WL-CHECK mismatch origin=({},{}) bad_pixels={bad}",
                    origin.0, origin.1
                )?;
                for m in first {
                    write!(
                        f,
                        "\n  at ({},{}) expected #{:06x} got #{:06x}",
                        m.x, m.y, m.expected, m.actual
                    )?;
                }
                Ok(())
            }
            Outcome::NotFound => write!(f, "QVM-WL-CHECK not-found: no window with the pattern"),
        }
    }
}

const MAX_REPORTED: usize = 10;

fn expected(x: u32, y: u32, frame: u32) -> u32 {
    pattern::pixel(x, y, frame) & 0x00ff_ffff
}

/// Sample points (content coordinates) a candidate origin must match before a full check:
/// the marker corner and the first interior pixels, which only the true origin has.
fn probes(w: u32, h: u32) -> Vec<(u32, u32)> {
    let mut p = vec![(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)];
    for k in [1, BORDER - 1, BORDER, 2 * BORDER, 3 * BORDER] {
        if k < w {
            p.push((k, 0));
        }
        if k < h {
            p.push((0, k));
        }
    }
    if w > BORDER && h > BORDER {
        p.push((BORDER, BORDER));
        p.push((w - 1, h - 1));
        p.push((w / 2, h / 2));
    }
    p
}

/// Count mismatches of the content at `origin`, stopping early after `limit` (if set).
fn compare(
    img: &Image,
    ox: u32,
    oy: u32,
    w: u32,
    h: u32,
    frame: u32,
    limit: Option<u64>,
) -> (u64, Vec<Mismatch>) {
    let mut bad = 0u64;
    let mut first = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let e = expected(x, y, frame);
            let a = img.at(ox + x, oy + y);
            if a != e {
                bad += 1;
                if first.len() < MAX_REPORTED {
                    first.push(Mismatch {
                        x,
                        y,
                        expected: e,
                        actual: a,
                    });
                }
                if limit.is_some_and(|l| bad >= l) {
                    return (bad, first);
                }
            }
        }
    }
    (bad, first)
}

/// Find the W×H window showing `frame` in `img` and verify every pixel.
///
/// A candidate origin is a position whose top-left marker colours and a few probe
/// pixels match. If a candidate matches entirely, that's `Ok`. Otherwise the candidate
/// whose top-left marker block (the frame-independent part) matches and has the fewest
/// mismatches is reported, so a stale or corrupted frame shows as `Mismatch`.
pub fn check(img: &Image, w: u32, h: u32, frame: u32) -> Outcome {
    if w == 0 || h == 0 || w > img.width || h > img.height {
        return Outcome::NotFound;
    }
    let corner = expected(0, 0, frame);
    let strict = probes(w, h);
    let band = BORDER.min(w).min(h);
    let mut best: Option<((u32, u32), u64, Vec<Mismatch>)> = None;
    for oy in 0..=img.height - h {
        for ox in 0..=img.width - w {
            if img.at(ox, oy) != corner {
                continue;
            }
            if strict
                .iter()
                .all(|&(x, y)| img.at(ox + x, oy + y) == expected(x, y, frame))
            {
                let (bad, first) = compare(img, ox, oy, w, h, frame, Some(1));
                if bad == 0 {
                    return Outcome::Ok {
                        origin: (ox, oy),
                        pixels: u64::from(w) * u64::from(h),
                    };
                }
                let _ = first;
            }
            // A marker-only match: remember the closest one for the report.
            let marker_ok = (0..band).all(|y| {
                (0..w.min(4 * BORDER)).all(|x| img.at(ox + x, oy + y) == expected(x, y, frame))
            }) && (0..h.min(4 * BORDER))
                .all(|y| (0..band).all(|x| img.at(ox + x, oy + y) == expected(x, y, frame)));
            if marker_ok {
                let limit = best.as_ref().map(|b| b.1);
                let (bad, first) = compare(img, ox, oy, w, h, frame, limit);
                if limit.is_none_or(|l| bad < l) {
                    best = Some(((ox, oy), bad, first));
                }
            }
        }
    }
    match best {
        Some((origin, bad, first)) if bad > 0 => Outcome::Mismatch { origin, bad, first },
        Some((origin, _, _)) => Outcome::Ok {
            origin,
            pixels: u64::from(w) * u64::from(h),
        },
        None => Outcome::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A noisy desktop with the window pasted at (ox, oy).
    fn scene(iw: u32, ih: u32, ox: u32, oy: u32, w: u32, h: u32, frame: u32) -> Image {
        let mut pixels = Vec::with_capacity((iw * ih) as usize);
        let mut s = 0x1234_5678u32;
        for _ in 0..iw * ih {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            pixels.push(s & 0xff_ffff);
        }
        let mut img = Image {
            width: iw,
            height: ih,
            pixels,
        };
        for y in 0..h {
            for x in 0..w {
                img.pixels[((oy + y) * iw + ox + x) as usize] = expected(x, y, frame);
            }
        }
        img
    }

    #[test]
    fn finds_the_window() {
        let img = scene(300, 200, 37, 51, 120, 90, 9);
        assert_eq!(
            check(&img, 120, 90, 9),
            Outcome::Ok {
                origin: (37, 51),
                pixels: 120 * 90
            }
        );
    }

    #[test]
    fn window_at_image_edges() {
        let img = scene(100, 80, 0, 0, 100, 80, 0);
        assert!(matches!(
            check(&img, 100, 80, 0),
            Outcome::Ok { origin: (0, 0), .. }
        ));
        let img = scene(100, 80, 60, 50, 40, 30, 2);
        assert!(matches!(
            check(&img, 40, 30, 2),
            Outcome::Ok {
                origin: (60, 50),
                ..
            }
        ));
    }

    #[test]
    fn wrong_frame_is_a_mismatch_not_a_miss() {
        let img = scene(300, 200, 10, 20, 64, 48, 4);
        match check(&img, 64, 48, 5) {
            Outcome::Mismatch { origin, bad, first } => {
                assert_eq!(origin, (10, 20));
                assert_eq!(bad, u64::from((64 - BORDER) * (48 - BORDER)));
                assert_eq!(first[0].x, BORDER);
                assert_eq!(first[0].y, BORDER);
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn single_bad_pixel_is_reported() {
        let mut img = scene(200, 150, 5, 6, 100, 100, 1);
        let i = ((6 + 70) * 200 + 5 + 33) as usize;
        img.pixels[i] ^= 1;
        match check(&img, 100, 100, 1) {
            Outcome::Mismatch { origin, bad, first } => {
                assert_eq!(origin, (5, 6));
                assert_eq!(bad, 1);
                assert_eq!((first[0].x, first[0].y), (33, 70));
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn absent_window_is_not_found() {
        let img = scene(200, 150, 0, 0, 0, 0, 0);
        assert_eq!(check(&img, 50, 50, 0), Outcome::NotFound);
        assert_eq!(check(&img, 500, 50, 0), Outcome::NotFound);
    }

    #[test]
    fn tiny_window() {
        let img = scene(50, 50, 20, 30, 3, 2, 0);
        assert!(matches!(
            check(&img, 3, 2, 0),
            Outcome::Ok {
                origin: (20, 30),
                ..
            }
        ));
    }

    fn encode(img: &Image, color: png::ColorType) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, img.width, img.height);
            enc.set_color(color);
            enc.set_depth(png::BitDepth::Eight);
            let mut wr = enc.write_header().unwrap();
            let data: Vec<u8> = img
                .pixels
                .iter()
                .flat_map(|&p| {
                    let [b, g, r, _] = p.to_le_bytes();
                    if color == png::ColorType::Rgba {
                        vec![r, g, b, 0xff]
                    } else {
                        vec![r, g, b]
                    }
                })
                .collect();
            wr.write_image_data(&data).unwrap();
        }
        out
    }

    #[test]
    fn png_roundtrip_rgb_and_rgba() {
        let img = scene(64, 40, 3, 4, 30, 20, 7);
        for color in [png::ColorType::Rgb, png::ColorType::Rgba] {
            let decoded = decode_png(&encode(&img, color)).unwrap();
            assert_eq!(decoded, img);
            assert!(matches!(
                check(&decoded, 30, 20, 7),
                Outcome::Ok { origin: (3, 4), .. }
            ));
        }
    }
}
