//! qvm-wl-check: verify a compositor screenshot shows qvm-wl-demo's frame exactly.
//!
//! `qvm-wl-check <screenshot.png> --width W --height H --frame N`

use std::path::PathBuf;
use std::process::ExitCode;

use qvm_wl_client::check::{self, Outcome};

const USAGE: &str = "usage: qvm-wl-check <screenshot.png> --width W --height H --frame N";

fn parse() -> Result<(PathBuf, u32, u32, u32), String> {
    let mut path = None;
    let (mut w, mut h, mut f) = (None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let slot = match flag.as_str() {
            "--width" => &mut w,
            "--height" => &mut h,
            "--frame" => &mut f,
            "-h" | "--help" => return Err(USAGE.into()),
            _ if !a.starts_with("--") && path.is_none() => {
                path = Some(PathBuf::from(a));
                continue;
            }
            _ => return Err(format!("unknown argument {a:?}\n{USAGE}")),
        };
        let v = match inline {
            Some(v) => v,
            None => it.next().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        *slot = Some(
            v.parse::<u32>()
                .map_err(|_| format!("{flag}: bad number {v:?}"))?,
        );
    }
    match (path, w, h, f) {
        (Some(p), Some(w), Some(h), Some(f)) if w > 0 && h > 0 => Ok((p, w, h, f)),
        _ => Err(USAGE.into()),
    }
}

fn main() -> ExitCode {
    let (path, w, h, frame) = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("qvm-wl-check: {e}");
            return ExitCode::from(2);
        }
    };
    let img = match check::load_png(&path) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("qvm-wl-check: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = check::check(&img, w, h, frame);
    println!("{outcome}");
    match outcome {
        Outcome::Ok { .. } => ExitCode::SUCCESS,
        _ => {
            eprintln!(
                "qvm-wl-check: {}x{} screenshot does not show the {w}x{h} window at frame {frame}",
                img.width, img.height
            );
            ExitCode::FAILURE
        }
    }
}
