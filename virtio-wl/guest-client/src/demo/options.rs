//! The command line of `qvm-wl-demo`.

/// Command line of `qvm-wl-demo`.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub title: String,
    pub hold: f64,
    pub copy_path: bool,
    pub transport: Option<String>,
    pub ctx_name: Option<String>,
    pub set_selection: Option<String>,
    pub get_selection: bool,
    /// How long `--get-selection` waits for a selection and its data, in seconds.
    pub wait: f64,
    /// Print the registry's globals (`QVM-WL-GLOBAL <interface> <version> <name>`) and exit.
    pub list_globals: bool,
    /// Bind global name N as `interface` (default `weston_screenshooter`), version 1, then
    /// round-trip and exit: `QVM-WL-BIND ok`, or the error (a refused bind hangs up).
    pub bind_name: Option<(u32, String)>,
    /// What each frame changes (the proxy bench's workloads).
    pub scene: Scene,
    /// Print `QVM-WL-WARM frame=K` once frame K is committed (0 = never): the bench measures
    /// from there, past the first uses of each buffer.
    pub warmup: u32,
}

/// What each frame draws and damages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scene {
    /// Every pixel changes (the pattern the screenshot checks verify); full damage.
    Pattern,
    /// A text cursor blinks: a 2×20 rectangle toggles; only it is damaged (the first use of
    /// each buffer draws and damages everything).
    Blink,
    /// The content scrolls by 8 rows: every row is redrawn; full damage.
    Scroll,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            width: 320,
            height: 240,
            frames: 60,
            title: "qvm-wl-demo".into(),
            hold: 0.0,
            copy_path: false,
            transport: None,
            ctx_name: None,
            set_selection: None,
            get_selection: false,
            wait: 10.0,
            list_globals: false,
            bind_name: None,
            scene: Scene::Pattern,
            warmup: 0,
        }
    }
}

pub const USAGE: &str = "usage: qvm-wl-demo [--width W] [--height H] [--frames N] [--title T] \
[--hold SECS] [--copy-path] [--transport wl0|socket|socket+wl0] [--ctx-name NAME] \
[--set-selection TEXT] [--get-selection] [--wait SECS] [--list-globals] [--bind-name N[:INTERFACE]] \
[--scene pattern|blink|scroll] [--warmup K]";

impl Options {
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Self, String> {
        fn num<T: std::str::FromStr>(s: String, flag: &str) -> Result<T, String> {
            s.parse().map_err(|_| format!("{flag}: bad value {s:?}"))
        }
        let mut o = Options::default();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (a.clone(), None),
            };
            let mut value = || v_or(&inline, &mut it, &flag);
            match flag.as_str() {
                "--width" => o.width = num(value()?, &flag)?,
                "--height" => o.height = num(value()?, &flag)?,
                "--frames" => o.frames = num(value()?, &flag)?,
                "--title" => o.title = value()?,
                "--hold" => o.hold = num(value()?, &flag)?,
                "--transport" => o.transport = Some(value()?),
                "--ctx-name" => o.ctx_name = Some(value()?),
                "--set-selection" => o.set_selection = Some(value()?),
                "--copy-path" => o.copy_path = true,
                "--warmup" => o.warmup = num(value()?, &flag)?,
                "--scene" => {
                    o.scene = match value()?.as_str() {
                        "pattern" => Scene::Pattern,
                        "blink" => Scene::Blink,
                        "scroll" => Scene::Scroll,
                        other => {
                            return Err(format!("--scene {other:?}: use pattern, blink or scroll"))
                        }
                    }
                }
                "--get-selection" => o.get_selection = true,
                "--wait" => o.wait = num(value()?, &flag)?,
                "--list-globals" => o.list_globals = true,
                "--bind-name" => {
                    let v = value()?;
                    let (n, iface) = v.split_once(':').unwrap_or((&v, "weston_screenshooter"));
                    if iface.is_empty() {
                        return Err("--bind-name N:INTERFACE needs an interface".into());
                    }
                    o.bind_name = Some((num(n.to_string(), &flag)?, iface.to_string()));
                }
                "-h" | "--help" => return Err(USAGE.into()),
                _ => return Err(format!("unknown argument {a:?}\n{USAGE}")),
            }
        }
        if o.width == 0 || o.height == 0 || o.width > 8192 || o.height > 8192 {
            return Err("width and height must be 1..=8192".into());
        }
        if o.frames == 0 {
            return Err("--frames must be at least 1".into());
        }
        if !(o.wait >= 0.0 && o.wait.is_finite()) {
            return Err("--wait must be a non-negative number of seconds".into());
        }
        if !(o.hold >= 0.0 && o.hold.is_finite()) {
            return Err("--hold must be a non-negative number of seconds".into());
        }
        if let Some(t) = &o.transport {
            if t != "wl0" && t != "socket" && t != "socket+wl0" {
                return Err(format!(
                    "--transport must be wl0, socket or socket+wl0, not {t:?}"
                ));
            }
        }
        Ok(o)
    }
}

fn v_or(
    inline: &Option<String>,
    it: &mut impl Iterator<Item = String>,
    flag: &str,
) -> Result<String, String> {
    match inline {
        Some(v) => Ok(v.clone()),
        None => it.next().ok_or_else(|| format!("{flag} needs a value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Options, String> {
        Options::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn parse_options() {
        let o = parse("--width 640 --height=480 --frames 3 --title hi --hold 2.5 --copy-path --transport socket").unwrap();
        assert_eq!((o.width, o.height, o.frames), (640, 480, 3));
        assert_eq!(o.title, "hi");
        assert_eq!(o.hold, 2.5);
        assert!(o.copy_path);
        assert_eq!(o.transport.as_deref(), Some("socket"));
        assert_eq!(parse("").unwrap(), Options::default());
        assert!(parse("--width").is_err());
        assert!(parse("--width 0").is_err());
        assert!(parse("--frames 0").is_err());
        assert!(parse("--hold -1").is_err());
        assert!(parse("--transport tcp").is_err());
        assert!(parse("--bogus").is_err());
        let o = parse("--list-globals --bind-name 18").unwrap();
        assert!(o.list_globals);
        assert_eq!(o.bind_name, Some((18, "weston_screenshooter".into())));
        let o = parse("--bind-name=7:wl_shm").unwrap();
        assert_eq!(o.bind_name, Some((7, "wl_shm".into())));
        assert!(parse("--bind-name x").is_err());
        assert!(parse("--bind-name 7:").is_err());
        assert_eq!(parse("--get-selection --wait 90").unwrap().wait, 90.0);
        assert!(parse("--wait -1").is_err());
    }
}
