//! Paths and methods: the API's table of endpoints.

use std::fmt;

use crate::error::RequestError;

/// The methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    /// Whether a request with this method carries a JSON object.
    pub fn takes_body(self) -> bool {
        matches!(self, Method::Put | Method::Patch)
    }

    pub(crate) fn from_http(m: &hyper::Method) -> Option<Method> {
        Some(match *m {
            hyper::Method::GET => Method::Get,
            hyper::Method::PUT => Method::Put,
            hyper::Method::PATCH => Method::Patch,
            hyper::Method::DELETE => Method::Delete,
            _ => return None,
        })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An endpoint the VMM's handler answers. Ids in paths are checked by [`validate_id`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /vm`: state and the whole config.
    Vm,
    /// `PUT /vm/config`: the whole config at once (vm.toml's schema, as JSON).
    VmConfig,
    /// `PUT /vm/machine`: `{vcpus, memory_mib}`.
    Machine,
    /// `PUT /vm/boot`: `{kernel, initrd?, cmdline?}`.
    Boot,
    /// `PUT /vm/console`: `{mode, path?}`.
    Console,
    /// `PUT|DELETE /vm/disks/{id}`.
    Disk(String),
    /// `PUT|DELETE /vm/net/{id}`.
    Net(String),
    /// `PUT|DELETE /vm/vsock`.
    Vsock,
    /// `PUT|DELETE /vm/fs/{tag}`.
    Fs(String),
    /// `PUT|DELETE /vm/wayland`.
    Wayland,
    /// `PUT /actions`: `{"action": "start"|"pause"|"resume"|"shutdown"|"stop"}`.
    Actions,
    /// `GET /metrics`.
    Metrics,
}

impl Route {
    /// The path as openapi.yaml writes it, with `{id}`/`{tag}` for the parameter.
    pub fn template(&self) -> &'static str {
        match self {
            Route::Vm => "/vm",
            Route::VmConfig => "/vm/config",
            Route::Machine => "/vm/machine",
            Route::Boot => "/vm/boot",
            Route::Console => "/vm/console",
            Route::Disk(_) => "/vm/disks/{id}",
            Route::Net(_) => "/vm/net/{id}",
            Route::Vsock => "/vm/vsock",
            Route::Fs(_) => "/vm/fs/{tag}",
            Route::Wayland => "/vm/wayland",
            Route::Actions => "/actions",
            Route::Metrics => "/metrics",
        }
    }

    /// The methods this route accepts.
    pub fn methods(&self) -> &'static [Method] {
        match self {
            Route::Vm | Route::Metrics => &[Method::Get],
            Route::VmConfig | Route::Machine | Route::Boot | Route::Console | Route::Actions => {
                &[Method::Put]
            }
            Route::Disk(_) | Route::Net(_) | Route::Vsock | Route::Fs(_) | Route::Wayland => {
                &[Method::Put, Method::Delete]
            }
        }
    }

    /// A body to quote in an error message when a PUT has none.
    pub(crate) fn example_body(&self) -> &'static str {
        match self {
            Route::VmConfig => {
                r#"{"machine": {"vcpus": 1, "memory_mib": 512}, "boot": {"kernel": "/path/to/vmlinux"}}"#
            }
            Route::Machine => r#"{"vcpus": 2, "memory_mib": 512}"#,
            Route::Boot => r#"{"kernel": "/path/to/vmlinux", "cmdline": "console=ttyS0"}"#,
            Route::Console => r#"{"mode": "file", "path": "/path/to/console.log"}"#,
            Route::Disk(_) => r#"{"path": "/path/to/disk.img", "read_only": false}"#,
            Route::Net(_) => r#"{"tap": "tap0", "mac": "52:54:00:12:34:56"}"#,
            Route::Vsock => r#"{"guest_cid": 3, "socket": "/path/to/vm.vsock"}"#,
            Route::Fs(_) => {
                r#"{"tag": "<the tag in the path>", "socket": "/path/to/fs.sock", "shared_dir": "/path/to/dir"}"#
            }
            Route::Wayland => r#"{"socket": "wayland-0", "max_buffer_mib": 512}"#,
            Route::Actions => r#"{"action": "start"}"#,
            Route::Vm | Route::Metrics => "{}",
        }
    }
}

/// Every path the server serves (for the 404 message), `/version` included.
pub(crate) const PATHS: &[&str] = &[
    "/version",
    "/vm",
    "/vm/config",
    "/vm/machine",
    "/vm/boot",
    "/vm/console",
    "/vm/disks/{id}",
    "/vm/net/{id}",
    "/vm/vsock",
    "/vm/fs/{tag}",
    "/vm/wayland",
    "/actions",
    "/metrics",
];

/// What a path names: the crate's own `/version` or a route for the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Version,
    Route(Route),
}

impl Endpoint {
    pub(crate) fn methods(&self) -> &'static [Method] {
        match self {
            Endpoint::Version => &[Method::Get],
            Endpoint::Route(r) => r.methods(),
        }
    }
}

/// Longest id or tag in a path.
pub const MAX_ID_LEN: usize = 64;

/// Checks an id or tag taken from a path: 1 to [`MAX_ID_LEN`] bytes of `[A-Za-z0-9._-]`.
/// Returns what is wrong with it.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("it is empty; put a name at the end of the path".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!(
            "it is {} bytes; use at most {MAX_ID_LEN}",
            id.len()
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err("use only letters, digits, '.', '_' and '-'".into());
    }
    Ok(())
}

fn id(what: &'static str, id: &str) -> Result<String, RequestError> {
    validate_id(id).map_err(|reason| RequestError::BadId {
        what,
        id: id.to_string(),
        reason,
    })?;
    Ok(id.to_string())
}

/// Finds the endpoint a path names (the query string already removed).
pub(crate) fn resolve(path: &str) -> Result<Endpoint, RequestError> {
    let not_found = || RequestError::NotFound {
        path: path.to_string(),
    };
    let rest = path.strip_prefix('/').ok_or_else(not_found)?;
    let segments: Vec<&str> = rest.split('/').collect();
    let route = match segments.as_slice() {
        ["version"] => return Ok(Endpoint::Version),
        ["vm"] => Route::Vm,
        ["vm", "config"] => Route::VmConfig,
        ["vm", "machine"] => Route::Machine,
        ["vm", "boot"] => Route::Boot,
        ["vm", "console"] => Route::Console,
        ["vm", "disks", d] => Route::Disk(id("disk id", d)?),
        ["vm", "net", n] => Route::Net(id("net id", n)?),
        ["vm", "vsock"] => Route::Vsock,
        ["vm", "fs", t] => Route::Fs(id("fs tag", t)?),
        ["vm", "wayland"] => Route::Wayland,
        ["actions"] => Route::Actions,
        ["metrics"] => Route::Metrics,
        _ => return Err(not_found()),
    };
    Ok(Endpoint::Route(route))
}

/// The Allow header's value for an endpoint.
pub(crate) fn allow_header(methods: &[Method]) -> String {
    methods
        .iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One of each variant; the match below stops compiling when a variant is added.
    pub(crate) fn all_routes() -> Vec<Route> {
        let all = vec![
            Route::Vm,
            Route::VmConfig,
            Route::Machine,
            Route::Boot,
            Route::Console,
            Route::Disk("d0".into()),
            Route::Net("n0".into()),
            Route::Vsock,
            Route::Fs("t0".into()),
            Route::Wayland,
            Route::Actions,
            Route::Metrics,
        ];
        for r in &all {
            match r {
                Route::Vm
                | Route::VmConfig
                | Route::Machine
                | Route::Boot
                | Route::Console
                | Route::Disk(_)
                | Route::Net(_)
                | Route::Vsock
                | Route::Fs(_)
                | Route::Wayland
                | Route::Actions
                | Route::Metrics => {}
            }
        }
        all
    }

    fn concrete(r: &Route) -> String {
        match r {
            Route::Disk(i) | Route::Net(i) | Route::Fs(i) => {
                r.template().replace("{id}", i).replace("{tag}", i)
            }
            _ => r.template().to_string(),
        }
    }

    #[test]
    fn every_route_resolves_from_its_path() {
        for r in all_routes() {
            assert_eq!(
                resolve(&concrete(&r)).unwrap(),
                Endpoint::Route(r.clone()),
                "{r:?}"
            );
            assert!(PATHS.contains(&r.template()), "{r:?} missing from PATHS");
        }
        assert_eq!(resolve("/version").unwrap(), Endpoint::Version);
        assert_eq!(PATHS.len(), all_routes().len() + 1);
    }

    #[test]
    fn unknown_paths_are_not_found() {
        for p in [
            "",
            "/",
            "/vm/",
            "//vm",
            "/vm/disks",
            "/vm/disks/a/b",
            "/VM",
            "/version/",
            "vm",
            "/vm/machine/x",
            "/metrics/",
            "/vm/wayland/",
            "/vm/wayland/x",
        ] {
            assert!(
                matches!(resolve(p), Err(RequestError::NotFound { .. })),
                "{p}"
            );
        }
    }

    #[test]
    fn ids_are_checked() {
        assert_eq!(
            resolve("/vm/disks/root-1.img_x").unwrap(),
            Endpoint::Route(Route::Disk("root-1.img_x".into()))
        );
        let long = "a".repeat(MAX_ID_LEN);
        assert!(resolve(&format!("/vm/net/{long}")).is_ok());
        for p in [
            "/vm/disks/".to_string(),
            format!("/vm/net/{long}a"),
            "/vm/fs/a%20b".to_string(),
            "/vm/fs/a:b".to_string(),
            "/vm/disks/é".to_string(),
        ] {
            let e = resolve(&p).unwrap_err();
            assert!(matches!(e, RequestError::BadId { .. }), "{p}: {e:?}");
            assert_eq!(e.status(), hyper::StatusCode::BAD_REQUEST);
        }
        let e = resolve("/vm/fs/a:b").unwrap_err().to_string();
        assert_eq!(
            e,
            "fs tag \"a:b\" in the path: use only letters, digits, '.', '_' and '-'"
        );
    }

    #[test]
    fn allow_lists_methods() {
        assert_eq!(allow_header(Route::Vsock.methods()), "PUT, DELETE");
        assert_eq!(allow_header(Route::Wayland.methods()), "PUT, DELETE");
        assert_eq!(allow_header(Route::Vm.methods()), "GET");
    }
}
