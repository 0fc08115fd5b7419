//! The Wayland protocol descriptions the proxy understands, read from the protocol XML files in
//! `protocols/` (embedded at build time, parsed once at start-up).
//!
//! Only what relaying needs is kept: per interface its version and, per request and event, the
//! argument types (which are object ids to translate, which are new objects and of which
//! interface, which carry an fd).

use std::collections::HashMap;

/// The protocol files compiled into the proxy. An interface not described here is hidden from
/// guest clients (its messages could carry fds or object ids the proxy cannot find).
pub const BUILTIN: &[(&str, &str)] = &[
    ("wayland.xml", include_str!("../../protocols/wayland.xml")),
    (
        "xdg-shell.xml",
        include_str!("../../protocols/xdg-shell.xml"),
    ),
    (
        "viewporter.xml",
        include_str!("../../protocols/viewporter.xml"),
    ),
    (
        "presentation-time.xml",
        include_str!("../../protocols/presentation-time.xml"),
    ),
    (
        "xdg-decoration-unstable-v1.xml",
        include_str!("../../protocols/xdg-decoration-unstable-v1.xml"),
    ),
    (
        "primary-selection-unstable-v1.xml",
        include_str!("../../protocols/primary-selection-unstable-v1.xml"),
    ),
    (
        "relative-pointer-unstable-v1.xml",
        include_str!("../../protocols/relative-pointer-unstable-v1.xml"),
    ),
    (
        "pointer-constraints-unstable-v1.xml",
        include_str!("../../protocols/pointer-constraints-unstable-v1.xml"),
    ),
    (
        "pointer-gestures-unstable-v1.xml",
        include_str!("../../protocols/pointer-gestures-unstable-v1.xml"),
    ),
    (
        "tablet-unstable-v2.xml",
        include_str!("../../protocols/tablet-unstable-v2.xml"),
    ),
    (
        "text-input-unstable-v3.xml",
        include_str!("../../protocols/text-input-unstable-v3.xml"),
    ),
    (
        "idle-inhibit-unstable-v1.xml",
        include_str!("../../protocols/idle-inhibit-unstable-v1.xml"),
    ),
    (
        "keyboard-shortcuts-inhibit-unstable-v1.xml",
        include_str!("../../protocols/keyboard-shortcuts-inhibit-unstable-v1.xml"),
    ),
    (
        "xdg-activation-v1.xml",
        include_str!("../../protocols/xdg-activation-v1.xml"),
    ),
    (
        "fractional-scale-v1.xml",
        include_str!("../../protocols/fractional-scale-v1.xml"),
    ),
    (
        "single-pixel-buffer-v1.xml",
        include_str!("../../protocols/single-pixel-buffer-v1.xml"),
    ),
    (
        "xdg-output-unstable-v1.xml",
        include_str!("../../protocols/xdg-output-unstable-v1.xml"),
    ),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgType {
    Int,
    Uint,
    Fixed,
    Str,
    /// An existing object (0 = null).
    Object,
    /// A new object of the named interface; `None` = the interface and version travel on the
    /// wire first (`wl_registry.bind`).
    NewId(Option<String>),
    Array,
    Fd,
}

#[derive(Debug, Clone)]
pub struct Message {
    pub name: String,
    pub args: Vec<ArgType>,
}

impl Message {
    pub fn fd_count(&self) -> usize {
        self.args.iter().filter(|a| **a == ArgType::Fd).count()
    }
}

#[derive(Debug, Clone)]
pub struct Interface {
    pub name: String,
    pub version: u32,
    pub requests: Vec<Message>,
    pub events: Vec<Message>,
}

/// Every interface from the loaded files, by index and by name.
#[derive(Debug, Default)]
pub struct Protocols {
    pub interfaces: Vec<Interface>,
    by_name: HashMap<String, usize>,
}

#[derive(Debug, thiserror::Error)]
#[error("protocol file {file}: {what}")]
pub struct XmlError {
    pub file: String,
    pub what: String,
}

impl Protocols {
    /// The built-in protocol set.
    pub fn builtin() -> Result<Protocols, XmlError> {
        let mut p = Protocols::default();
        for (file, text) in BUILTIN {
            p.add(file, text)?;
        }
        Ok(p)
    }

    pub fn lookup(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub fn get(&self, idx: usize) -> &Interface {
        &self.interfaces[idx]
    }

    /// Parses one protocol file and adds its interfaces.
    pub fn add(&mut self, file: &str, text: &str) -> Result<(), XmlError> {
        let err = |what: String| XmlError {
            file: file.to_string(),
            what,
        };
        let mut current: Option<Interface> = None;
        // (is_event, message) being read
        let mut msg: Option<(bool, Message)> = None;
        for tag in Tags::new(text) {
            let tag = tag.map_err(err)?;
            match (tag.closing, tag.name) {
                (false, "interface") => {
                    if current.is_some() {
                        return Err(err("nested <interface>".into()));
                    }
                    let name = tag
                        .attr("name")
                        .ok_or_else(|| err("interface without name".into()))?;
                    let version = tag
                        .attr("version")
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| err(format!("interface {name}: bad version")))?;
                    current = Some(Interface {
                        name: name.to_string(),
                        version,
                        requests: Vec::new(),
                        events: Vec::new(),
                    });
                    if tag.self_closing {
                        return Err(err(format!("interface {name} has no body")));
                    }
                }
                (true, "interface") => {
                    let iface = current
                        .take()
                        .ok_or_else(|| err("stray </interface>".into()))?;
                    let idx = self.interfaces.len();
                    if self.by_name.insert(iface.name.clone(), idx).is_some() {
                        return Err(err(format!("interface {} defined twice", iface.name)));
                    }
                    self.interfaces.push(iface);
                }
                (false, kind @ ("request" | "event")) => {
                    let name = tag
                        .attr("name")
                        .ok_or_else(|| err(format!("{kind} without name")))?;
                    let m = Message {
                        name: name.to_string(),
                        args: Vec::new(),
                    };
                    if tag.self_closing {
                        push_message(current.as_mut(), kind == "event", m).map_err(err)?;
                    } else {
                        msg = Some((kind == "event", m));
                    }
                }
                (true, "request" | "event") => {
                    let (is_event, m) =
                        msg.take().ok_or_else(|| err("stray message end".into()))?;
                    push_message(current.as_mut(), is_event, m).map_err(err)?;
                }
                (false, "arg") => {
                    let Some((_, m)) = msg.as_mut() else {
                        return Err(err("<arg> outside a message".into()));
                    };
                    let ty = match tag.attr("type") {
                        Some("int") => ArgType::Int,
                        Some("uint") => ArgType::Uint,
                        Some("fixed") => ArgType::Fixed,
                        Some("string") => ArgType::Str,
                        Some("object") => ArgType::Object,
                        Some("new_id") => ArgType::NewId(tag.attr("interface").map(str::to_string)),
                        Some("array") => ArgType::Array,
                        Some("fd") => ArgType::Fd,
                        other => return Err(err(format!("{}: bad arg type {other:?}", m.name))),
                    };
                    m.args.push(ty);
                }
                _ => {}
            }
        }
        if current.is_some() {
            return Err(err("unterminated <interface>".into()));
        }
        Ok(())
    }
}

fn push_message(iface: Option<&mut Interface>, is_event: bool, m: Message) -> Result<(), String> {
    let iface = iface.ok_or_else(|| format!("message {} outside an interface", m.name))?;
    if is_event {
        iface.events.push(m);
    } else {
        iface.requests.push(m);
    }
    Ok(())
}

/// One start or end tag.
struct Tag<'a> {
    name: &'a str,
    closing: bool,
    self_closing: bool,
    attrs: Vec<(&'a str, &'a str)>,
}

impl<'a> Tag<'a> {
    fn attr(&self, key: &str) -> Option<&'a str> {
        self.attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

/// The tags of an XML text, skipping text, comments, `<?...?>` and `<!...>`.
struct Tags<'a> {
    rest: &'a str,
}

impl<'a> Tags<'a> {
    fn new(text: &'a str) -> Self {
        Tags { rest: text }
    }
}

impl<'a> Iterator for Tags<'a> {
    type Item = Result<Tag<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let start = self.rest.find('<')?;
            let after = &self.rest[start..];
            if let Some(body) = after.strip_prefix("<!--") {
                let end = body.find("-->")?;
                self.rest = &body[end + 3..];
                continue;
            }
            let end = match after.find('>') {
                Some(e) => e,
                None => return Some(Err("unterminated tag".into())),
            };
            let inner = &after[1..end];
            self.rest = &after[end + 1..];
            if inner.starts_with('?') || inner.starts_with('!') {
                continue;
            }
            let (closing, inner) = match inner.strip_prefix('/') {
                Some(i) => (true, i),
                None => (false, inner),
            };
            let (self_closing, inner) = match inner.strip_suffix('/') {
                Some(i) => (true, i),
                None => (false, inner),
            };
            let inner = inner.trim();
            let name_end = inner.find(char::is_whitespace).unwrap_or(inner.len());
            let name = &inner[..name_end];
            let mut attrs = Vec::new();
            let mut a = inner[name_end..].trim_start();
            while !a.is_empty() {
                let Some(eq) = a.find('=') else {
                    return Some(Err(format!("<{name}>: attribute without value")));
                };
                let key = a[..eq].trim();
                let v = a[eq + 1..].trim_start();
                let Some(quote) = v.chars().next().filter(|c| *c == '"' || *c == '\'') else {
                    return Some(Err(format!("<{name}>: unquoted attribute {key}")));
                };
                let Some(close) = v[1..].find(quote) else {
                    return Some(Err(format!("<{name}>: unterminated attribute {key}")));
                };
                attrs.push((key, &v[1..1 + close]));
                a = v[close + 2..].trim_start();
            }
            return Some(Ok(Tag {
                name,
                closing,
                self_closing,
                attrs,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_protocols_parse_with_the_expected_signatures() {
        let p = Protocols::builtin().unwrap();
        let shm = p.get(p.lookup("wl_shm").unwrap());
        assert_eq!(shm.requests[0].name, "create_pool");
        assert_eq!(
            shm.requests[0].args,
            vec![
                ArgType::NewId(Some("wl_shm_pool".into())),
                ArgType::Fd,
                ArgType::Int
            ]
        );
        let reg = p.get(p.lookup("wl_registry").unwrap());
        assert_eq!(reg.requests[0].name, "bind");
        assert_eq!(
            reg.requests[0].args,
            vec![ArgType::Uint, ArgType::NewId(None)]
        );
        assert_eq!(reg.events[0].name, "global");
        let kb = p.get(p.lookup("wl_keyboard").unwrap());
        assert_eq!(kb.events[0].name, "keymap");
        assert_eq!(kb.events[0].fd_count(), 1);
        assert!(p.get(p.lookup("xdg_wm_base").unwrap()).version >= 2);
        assert!(p
            .lookup("zwp_primary_selection_device_manager_v1")
            .is_some());
        // Every message with an fd is one the proxy knows how to carry.
        for i in &p.interfaces {
            for (dir, list) in [("request", &i.requests), ("event", &i.events)] {
                for m in list.iter().filter(|m| m.fd_count() > 0) {
                    let known = matches!(
                        (i.name.as_str(), m.name.as_str()),
                        ("wl_shm", "create_pool")
                            | ("wl_keyboard", "keymap")
                            | ("wl_data_offer", "receive")
                            | ("wl_data_source", "send")
                            | ("zwp_primary_selection_offer_v1", "receive")
                            | ("zwp_primary_selection_source_v1", "send")
                    );
                    assert!(known, "{dir} {}.{} carries an fd", i.name, m.name);
                }
            }
        }
    }

    #[test]
    fn bad_xml_is_an_error_not_a_panic() {
        for text in [
            "<protocol><interface name=\"a\" version=\"x\"></interface></protocol>",
            "<interface name=\"a\" version=\"1\"><request name=\"r\"><arg name=\"x\" type=\"blob\"/></request></interface>",
            "<interface name=\"a\" version=\"1\">",
            "<arg name=\"x\" type=\"int\"/>",
            "<interface name=\"a\" version=\"1\"><request name=\"r\"",
            "<interface name=a version=\"1\"></interface>",
        ] {
            assert!(Protocols::default().add("t.xml", text).is_err(), "{text}");
        }
    }
}
