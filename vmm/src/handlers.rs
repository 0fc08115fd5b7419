//! The REST API's VMM side: what each resource and action does. The transport (HTTP on a unix
//! socket, routing, limits, JSON well-formedness) is `qvm-api`'s; this handler runs on its
//! threads and never touches the VM itself: before start it edits a draft config, after start
//! it forwards to the event loop through [`ControlSender`].
//!
//! Resources take the same schema as the TOML config (`vm.toml`), as JSON.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use qvm_api::{ApiReply, ApiRequest, Handler, Method, Route};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::control::{Command, ControlError, ControlSender};
use qvm_config::{
    BootConfig, ConfigError, ConsoleConfig, DiskConfig, FsConfig, MachineConfig, NetConfig,
    VmConfig, VsockConfig, WaylandConfig, MAX_DISKS, MAX_DISK_ID_LEN, MAX_FS_TAG_LEN, MAX_NETS,
    MAX_VIRTIO_DEVICES,
};

/// How long an API call waits for the event loop.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `shutdown` waits for the guest to power off before it stops the VM.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where the VM is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Being configured through the API (or from `--config`), not started.
    Configuring,
    /// Started: the event loop answers for it.
    Running,
    /// Ended; the string says how.
    Stopped(String),
}

/// The config being put together before start.
#[derive(Debug, Clone, Default)]
struct Draft {
    machine: Option<MachineConfig>,
    boot: Option<BootConfig>,
    console: ConsoleConfig,
    disks: Vec<(String, DiskConfig)>,
    nets: Vec<(String, NetConfig)>,
    vsock: Option<VsockConfig>,
    fs: Vec<(String, FsConfig)>,
    wayland: Option<WaylandConfig>,
}

impl Draft {
    fn from_config(cfg: VmConfig) -> Draft {
        let disks = cfg
            .disks
            .into_iter()
            .enumerate()
            .map(|(i, d)| (d.id.clone().unwrap_or_else(|| format!("disk{i}")), d))
            .collect();
        let nets = cfg
            .nets
            .into_iter()
            .enumerate()
            .map(|(i, n)| (format!("net{i}"), n))
            .collect();
        let fs = cfg
            .filesystems
            .into_iter()
            .map(|f| (f.tag.clone(), f))
            .collect();
        Draft {
            machine: Some(cfg.machine),
            boot: Some(cfg.boot),
            console: cfg.console,
            disks,
            nets,
            vsock: cfg.vsock,
            fs,
            wayland: cfg.wayland,
        }
    }

    /// The full config, or what is missing.
    fn assemble(&self) -> Result<VmConfig, String> {
        let machine = self.machine.clone().ok_or(
            "no machine configured: PUT /vm/machine {\"vcpus\": 1, \"memory_mib\": 256} first",
        )?;
        let boot = self.boot.clone().ok_or(
            "no boot source configured: PUT /vm/boot {\"kernel\": \"/path/to/vmlinux\"} first",
        )?;
        Ok(VmConfig {
            machine,
            boot,
            console: self.console.clone(),
            disks: self.disks.iter().map(|(_, d)| d.clone()).collect(),
            nets: self.nets.iter().map(|(_, n)| n.clone()).collect(),
            vsock: self.vsock.clone(),
            filesystems: self.fs.iter().map(|(_, f)| f.clone()).collect(),
            wayland: self.wayland.clone(),
        })
    }

    fn to_json(&self) -> Value {
        // Not json!: it unwraps, and a path that is not UTF-8 (from a --config file) cannot be
        // serialised; with panic=abort that would take the VM down. Such a value reads as null.
        fn v<T: serde::Serialize>(x: T) -> Value {
            serde_json::to_value(x).unwrap_or(Value::Null)
        }
        let mut o = serde_json::Map::new();
        o.insert("machine".into(), v(&self.machine));
        o.insert("boot".into(), v(&self.boot));
        o.insert("console".into(), v(&self.console));
        o.insert(
            "disk".into(),
            v(self.disks.iter().map(|(_, d)| d).collect::<Vec<_>>()),
        );
        o.insert(
            "net".into(),
            v(self.nets.iter().map(|(_, n)| n).collect::<Vec<_>>()),
        );
        o.insert("vsock".into(), v(&self.vsock));
        o.insert(
            "fs".into(),
            v(self.fs.iter().map(|(_, f)| f).collect::<Vec<_>>()),
        );
        o.insert("wayland".into(), v(&self.wayland));
        Value::Object(o)
    }
}

/// Puts `item` under `key` in an ordered list: replaces an existing entry, or appends.
fn upsert<T>(list: &mut Vec<(String, T)>, key: &str, item: T) {
    match list.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = item,
        None => list.push((key.to_string(), item)),
    }
}

fn remove<T>(list: &mut Vec<(String, T)>, key: &str) -> bool {
    let before = list.len();
    list.retain(|(k, _)| k != key);
    list.len() != before
}

struct State {
    phase: Phase,
    draft: Draft,
    /// Hands the config to the main thread at start (taken then).
    start: Option<Sender<VmConfig>>,
}

/// The [`Handler`] `qvm-vmm --api-sock` serves.
pub struct VmmApi {
    state: Mutex<State>,
    control: Arc<ControlSender>,
}

fn reply(status: u16, body: Value) -> ApiReply {
    ApiReply { status, body }
}

fn no_content() -> ApiReply {
    reply(204, Value::Null)
}

fn error(status: u16, msg: impl std::fmt::Display) -> ApiReply {
    reply(status, json!({ "error": msg.to_string() }))
}

/// The body, or a 400 that names `what`.
fn required(what: &str, body: Option<Value>) -> Result<Value, ApiReply> {
    body.ok_or_else(|| error(400, format!("{what}: a JSON body is required")))
}

fn parse<T: DeserializeOwned>(what: &str, body: Option<Value>) -> Result<T, ApiReply> {
    serde_json::from_value(required(what, body)?).map_err(|e| error(400, format!("{what}: {e}")))
}

fn control_error(e: ControlError) -> ApiReply {
    match e {
        ControlError::NotRunning => error(409, e),
        ControlError::Timeout(_) => error(503, e),
        ControlError::PauseFailed(_) | ControlError::Kvm(_) => error(500, e),
        ControlError::Paused | ControlError::NoWayland => error(409, e),
    }
}

impl VmmApi {
    /// `cfg`: the config from `--config`, if any. `start` receives the config at start.
    pub fn new(cfg: Option<VmConfig>, start: Sender<VmConfig>, control: ControlSender) -> Self {
        VmmApi {
            state: Mutex::new(State {
                phase: Phase::Configuring,
                draft: cfg.map(Draft::from_config).unwrap_or_default(),
                start: Some(start),
            }),
            control: Arc::new(control),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the VM started (when the main thread started it from `--config`).
    pub fn set_running(&self) {
        let mut st = self.lock();
        st.phase = Phase::Running;
        st.start = None;
    }

    /// Marks the VM ended; `how` is shown in `GET /vm`.
    pub fn set_stopped(&self, how: impl Into<String>) {
        self.lock().phase = Phase::Stopped(how.into());
    }

    fn get_vm(&self) -> ApiReply {
        let (phase, config) = {
            let st = self.lock();
            (st.phase.clone(), st.draft.to_json())
        };
        match phase {
            Phase::Configuring => {
                let configured = self.lock().draft.assemble().is_ok();
                reply(
                    200,
                    json!({
                        "state": if configured { "configured" } else { "not_configured" },
                        "config": config,
                    }),
                )
            }
            Phase::Running => match self.control.call(Command::Status, CONTROL_TIMEOUT) {
                Ok(mut status) => {
                    if let Value::Object(o) = &mut status {
                        o.insert("config".into(), config);
                    }
                    reply(200, status)
                }
                Err(ControlError::NotRunning) => {
                    reply(200, json!({ "state": "stopped", "config": config }))
                }
                Err(e) => control_error(e),
            },
            Phase::Stopped(how) => reply(
                200,
                json!({ "state": "stopped", "config": config, "exit": how }),
            ),
        }
    }

    /// PUT/DELETE on a config resource: only before start.
    fn edit(&self, method: Method, route: Route, body: Option<Value>) -> ApiReply {
        let mut st = self.lock();
        if st.phase != Phase::Configuring {
            // 400, not 409: no state of a started VM accepts this change (the contract).
            return error(
                400,
                format!(
                    "{}: the VM has been started; its configuration cannot change now (stop it and start a new VM)",
                    route_name(&route)
                ),
            );
        }
        let d = &mut st.draft;
        let r = match (method, route) {
            (Method::Put, Route::VmConfig) => {
                checked_resolved("config", body, resolve_config, check_config)
                    .map(|c| *d = Draft::from_config(c))
            }
            (Method::Put, Route::Machine) => {
                checked("machine", body, check_machine).map(|m| d.machine = Some(m))
            }
            (Method::Put, Route::Boot) => {
                checked("boot", body, check_boot).map(|b| d.boot = Some(b))
            }
            (Method::Put, Route::Console) => {
                checked("console", body, check_console).map(|c| d.console = c)
            }
            (Method::Put, Route::Disk(id)) => with_key(body, "id", &id, MAX_DISK_ID_LEN)
                .and_then(|b| checked("disk", Some(b), check_disk))
                .and_then(|disk| upsert_within(&mut d.disks, &id, disk, MAX_DISKS, "disks")),
            (Method::Put, Route::Net(id)) => checked("net", body, check_net)
                .and_then(|n| upsert_within(&mut d.nets, &id, n, MAX_NETS, "network interfaces")),
            (Method::Put, Route::Vsock) => {
                checked("vsock", body, check_vsock).map(|v| d.vsock = Some(v))
            }
            (Method::Put, Route::Fs(tag)) => with_key(body, "tag", &tag, MAX_FS_TAG_LEN)
                .and_then(|b| checked("fs", Some(b), check_fs))
                .and_then(|f| upsert_within(&mut d.fs, &tag, f, MAX_VIRTIO_DEVICES, "fs shares")),
            (Method::Put, Route::Wayland) => {
                checked_resolved("wayland", body, resolve_wayland_here, check_wayland)
                    .map(|w| d.wayland = Some(w))
            }
            (Method::Delete, Route::Disk(id)) => found(remove(&mut d.disks, &id), "disk", &id),
            (Method::Delete, Route::Net(id)) => found(remove(&mut d.nets, &id), "net", &id),
            (Method::Delete, Route::Fs(tag)) => found(remove(&mut d.fs, &tag), "fs", &tag),
            (Method::Delete, Route::Vsock) => found(d.vsock.take().is_some(), "vsock", ""),
            (Method::Delete, Route::Wayland) => found(d.wayland.take().is_some(), "wayland", ""),
            (_, route) => Err(error(
                405,
                format!("{} does not take this method", route_name(&route)),
            )),
        };
        match r {
            Ok(()) => no_content(),
            Err(e) => e,
        }
    }

    fn action(&self, body: Option<Value>) -> ApiReply {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Action {
            action: String,
            /// shutdown only: seconds the guest gets to power off before the VM is stopped.
            timeout_s: Option<f64>,
        }
        let (action, timeout_s) = match parse::<Action>("actions", body) {
            Ok(a) => (a.action, a.timeout_s),
            Err(e) => return e,
        };
        if timeout_s.is_some() && action != "shutdown" {
            return error(
                400,
                format!("timeout_s only applies to shutdown, not {action:?}: drop it"),
            );
        }
        let phase = self.lock().phase.clone();
        match (action.as_str(), &phase) {
            ("start", Phase::Configuring) => self.start(),
            ("start", _) => error(409, "the VM has already been started"),
            ("pause" | "resume" | "stop" | "allow_paste", Phase::Running) => {
                let cmd = match action.as_str() {
                    "pause" => Command::Pause,
                    "resume" => Command::Resume,
                    "allow_paste" => Command::AllowPaste,
                    _ => Command::Stop,
                };
                match self.control.call(cmd, CONTROL_TIMEOUT) {
                    Ok(_) => no_content(),
                    Err(e) => control_error(e),
                }
            }
            ("pause" | "resume" | "stop" | "allow_paste", Phase::Configuring) => {
                error(409, format!("{action}: the VM has not been started (PUT /actions {{\"action\": \"start\"}})"))
            }
            ("pause" | "resume" | "stop" | "allow_paste", Phase::Stopped(_)) => {
                error(409, format!("{action}: the VM has stopped"))
            }
            ("shutdown", Phase::Running) => {
                let secs = timeout_s.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT.as_secs_f64());
                if !(0.0..=MAX_SHUTDOWN_TIMEOUT.as_secs_f64()).contains(&secs) {
                    return error(
                        400,
                        format!("timeout_s {secs} is out of range: use 0 to {}", MAX_SHUTDOWN_TIMEOUT.as_secs()),
                    );
                }
                match self
                    .control
                    .call(Command::Shutdown(Duration::from_secs_f64(secs)), CONTROL_TIMEOUT)
                {
                    Ok(_) => no_content(),
                    Err(e) => control_error(e),
                }
            }
            ("shutdown", Phase::Configuring) => {
                error(409, "shutdown: the VM has not been started")
            }
            ("shutdown", Phase::Stopped(_)) => error(409, "shutdown: the VM has stopped"),
            _ => error(
                400,
                format!("unknown action {action:?}: use start, pause, resume, shutdown, stop or allow_paste"),
            ),
        }
    }

    fn start(&self) -> ApiReply {
        let mut st = self.lock();
        let cfg = match st.draft.assemble() {
            Ok(c) => c,
            Err(e) => return error(400, e),
        };
        if let Err(e) = cfg.validate_here() {
            return error(400, e);
        }
        if let Err(e) = qvm_config::boot::detect_format(&cfg.boot.kernel) {
            return error(400, e);
        }
        let Some(tx) = st.start.take() else {
            return error(409, "the VM has already been started");
        };
        if tx.send(cfg).is_err() {
            return error(500, "the VMM's main thread is gone");
        }
        st.phase = Phase::Running;
        no_content()
    }

    fn metrics(&self) -> ApiReply {
        let phase = self.lock().phase.clone();
        match phase {
            Phase::Running => match self.control.call(Command::Metrics, CONTROL_TIMEOUT) {
                Ok(m) => reply(200, m),
                Err(e) => control_error(e),
            },
            Phase::Configuring => reply(200, json!({ "state": "not_started", "devices": {} })),
            Phase::Stopped(_) => reply(200, json!({ "state": "stopped", "devices": {} })),
        }
    }
}

/// The body with `key` set to the path's id (a body that names another id is refused).
fn with_key(body: Option<Value>, key: &str, id: &str, max: usize) -> Result<Value, ApiReply> {
    let mut body =
        body.ok_or_else(|| error(400, format!("{key} {id}: a JSON body is required")))?;
    if id.len() > max {
        return Err(error(
            400,
            format!("{key} {id:?} is longer than {max} bytes: use a shorter one"),
        ));
    }
    let Value::Object(o) = &mut body else {
        return Err(error(400, "the body must be a JSON object"));
    };
    match o.get(key) {
        Some(Value::String(s)) if s != id => {
            return Err(error(
                400,
                format!("the body's {key} {s:?} differs from the path's {id:?}: drop it from the body or make them match"),
            ))
        }
        Some(Value::String(_) | Value::Null) | None => {
            o.insert(key.into(), Value::String(id.to_string()));
        }
        Some(v) => {
            return Err(error(
                400,
                format!("the body's {key} is {v}, not a string: drop it from the body (the path names it)"),
            ))
        }
    }
    Ok(body)
}

/// Like [`upsert`], but a new key beyond `max` entries is refused (409).
fn upsert_within<T>(
    list: &mut Vec<(String, T)>,
    key: &str,
    item: T,
    max: usize,
    what: &str,
) -> Result<(), ApiReply> {
    if list.len() >= max && !list.iter().any(|(k, _)| k == key) {
        return Err(error(
            409,
            format!("{key:?}: {max} {what} are configured already, the most a VM takes; delete one first"),
        ));
    }
    upsert(list, key, item);
    Ok(())
}

// Checks of values alone, made on PUT: each section's own validate() in qvm-config (the
// constraints api/openapi.yaml's schemas state), so that a draft (and GET /vm) never holds a
// value the document rules out. What needs the host (files, tap devices, inherited fds, its RAM)
// and what spans entries (duplicates, the device total) is checked at start, by
// VmConfig::validate. A ConfigError is a 400 whose body names the resource, then says what
// vm.toml would say without its section header (ConfigError::detail).

/// Parses a body and checks its values; either failure is a 400 that names `what`.
fn checked<T: DeserializeOwned>(
    what: &str,
    body: Option<Value>,
    check: fn(&T) -> Result<(), String>,
) -> Result<T, ApiReply> {
    checked_resolved(what, body, |_| {}, check)
}

/// [`checked`], with `resolve` applied between parsing and checking (the checks see the
/// values the draft will hold).
fn checked_resolved<T: DeserializeOwned>(
    what: &str,
    body: Option<Value>,
    resolve: fn(&mut T),
    check: fn(&T) -> Result<(), String>,
) -> Result<T, ApiReply> {
    let mut v: T = qvm_config::from_json(required(what, body)?)
        .map_err(|e| error(400, format!("{what}: {}", config_message(&e))))?;
    resolve(&mut v);
    check(&v).map_err(|e| error(400, format!("{what}: {e}")))?;
    Ok(v)
}

/// A whole config's error as PUT /vm/config words it: `wayland: max_vfds = 0: ...`,
/// `disk #2: id = ...`, or the message itself when no one section is at fault.
fn config_message(e: &ConfigError) -> String {
    match e.section() {
        Some(s) => format!("{}: {}", s.api_name(), e.detail()),
        None => e.to_string(),
    }
}

// Paths in bodies are used as the VMM process sees them (relative ones from its working
// directory), with one exception that vm.toml makes too: a Wayland socket given as a bare name
// (`wayland-0`, as WAYLAND_DISPLAY names it) is in $XDG_RUNTIME_DIR. It is resolved on PUT,
// with the VMM's own environment, so that GET /vm shows the path that will be used and the
// length limit applies to it.

/// The VMM's `$XDG_RUNTIME_DIR`, if set and not empty.
fn runtime_dir() -> Option<PathBuf> {
    qvm_config::paths::xdg_runtime_dir().filter(|d| !d.as_os_str().is_empty())
}

/// Takes bare socket names (one relative component) in `runtime`, as `VmConfig::parse` does;
/// other paths, and all of them without `runtime`, stay as they are (no base: see above).
fn resolve_wayland(w: &mut WaylandConfig, runtime: Option<&Path>) {
    w.resolve_sockets(runtime, None);
}

fn resolve_wayland_here(w: &mut WaylandConfig) {
    resolve_wayland(w, runtime_dir().as_deref());
}

fn resolve_config(c: &mut VmConfig) {
    if let Some(w) = c.wayland.as_mut() {
        resolve_wayland_here(w);
    }
}

// One line each: the PUT of one resource checks that section's values; list entries are
// numbered by the path's id, not by position, so their header ("[[disk]] #1 ") is dropped.

fn check_config(c: &VmConfig) -> Result<(), String> {
    c.validate_values().map_err(|e| config_message(&e))
}

fn check_machine(m: &MachineConfig) -> Result<(), String> {
    m.validate(None).map_err(|e| e.detail())
}

fn check_boot(b: &BootConfig) -> Result<(), String> {
    b.validate().map_err(|e| e.detail())
}

fn check_console(c: &ConsoleConfig) -> Result<(), String> {
    c.validate().map_err(|e| e.detail())
}

fn check_disk(d: &DiskConfig) -> Result<(), String> {
    d.validate(0).map_err(|e| e.detail())
}

fn check_net(n: &NetConfig) -> Result<(), String> {
    n.validate(0).map_err(|e| e.detail())
}

fn check_vsock(v: &VsockConfig) -> Result<(), String> {
    v.validate().map_err(|e| e.detail())
}

fn check_fs(f: &FsConfig) -> Result<(), String> {
    f.validate(0).map_err(|e| e.detail())
}

fn check_wayland(w: &WaylandConfig) -> Result<(), String> {
    w.validate().map_err(|e| e.detail())
}

fn found(yes: bool, what: &str, id: &str) -> Result<(), ApiReply> {
    match (yes, id) {
        (true, _) => Ok(()),
        // A device there is at most one of.
        (false, "") => Err(error(404, format!("no {what} is configured"))),
        (false, _) => Err(error(404, format!("no {what} {id:?} is configured"))),
    }
}

fn route_name(r: &Route) -> String {
    match r {
        Route::Vm => "/vm".into(),
        Route::VmConfig => "/vm/config".into(),
        Route::Machine => "/vm/machine".into(),
        Route::Boot => "/vm/boot".into(),
        Route::Console => "/vm/console".into(),
        Route::Disk(id) => format!("/vm/disks/{id}"),
        Route::Net(id) => format!("/vm/net/{id}"),
        Route::Vsock => "/vm/vsock".into(),
        Route::Fs(t) => format!("/vm/fs/{t}"),
        Route::Wayland => "/vm/wayland".into(),
        Route::Actions => "/actions".into(),
        Route::Metrics => "/metrics".into(),
    }
}

impl Handler for VmmApi {
    fn handle(&self, req: ApiRequest) -> ApiReply {
        match (req.method, req.route) {
            (Method::Get, Route::Vm) => self.get_vm(),
            (Method::Get, Route::Metrics) => self.metrics(),
            (Method::Put, Route::Actions) => self.action(req.body),
            (m, r) => self.edit(m, r, req.body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qvm_config::{MAX_CMDLINE_LEN, MAX_WL_BUFFER_MIB, MAX_WL_NAME_LEN, MAX_WL_VFDS};

    fn body(v: Value) -> Option<Value> {
        Some(v)
    }

    #[test]
    fn values_the_document_rules_out_are_refused_on_put() {
        let bad = |what, v: Value, check| {
            let r = checked::<MachineConfig>(what, body(v), check).unwrap_err();
            assert_eq!(r.status, 400, "{:?}", r.body);
        };
        bad(
            "machine",
            json!({"vcpus": 0, "memory_mib": 64}),
            check_machine,
        );
        bad(
            "machine",
            json!({"vcpus": 255, "memory_mib": 64}),
            check_machine,
        );
        bad("machine", json!({"memory_mib": 31}), check_machine);
        bad("machine", json!({"memory_mib": 1048577}), check_machine);
        assert!(checked(
            "machine",
            body(json!({"vcpus": 254, "memory_mib": 32})),
            check_machine
        )
        .is_ok());

        let long = "x".repeat(MAX_CMDLINE_LEN);
        for cmdline in [long.as_str(), "é", "a\u{0}b"] {
            let b = json!({"kernel": "/k", "cmdline": cmdline});
            assert!(checked("boot", body(b), check_boot).is_err(), "{cmdline:?}");
        }
        assert!(checked("console", body(json!({"mode": "file"})), check_console).is_err());
        assert!(checked("console", body(json!({"path": "/c"})), check_console).is_err());
        assert!(checked(
            "console",
            body(json!({"mode": "off", "path": null})),
            check_console
        )
        .is_ok());
        for n in [
            json!({}),
            json!({"tap": "t0", "fd": 3}),
            json!({"fd": 2}),
            json!({"tap": ""}),
            json!({"tap": "a:b"}),
            json!({"tap": "t0", "mac": "52:54:00:12:34"}),
            json!({"tap": "t0", "mac": "52:54:00:12:34:5g"}),
        ] {
            assert!(checked("net", body(n.clone()), check_net).is_err(), "{n}");
        }
        assert!(checked(
            "net",
            body(json!({"tap": "t0", "fd": null, "mac": "52:54:00:12:34:56"})),
            check_net
        )
        .is_ok());
        for v in [
            json!({"guest_cid": 2, "socket": "/v"}),
            json!({"guest_cid": 4294967295u64, "socket": "/v"}),
            json!({"guest_cid": 3, "socket": "/".repeat(97)}),
        ] {
            assert!(
                checked("vsock", body(v.clone()), check_vsock).is_err(),
                "{v}"
            );
        }
        assert!(checked("disk", body(json!({"path": "/d", "id": "a b"})), check_disk).is_err());
        assert!(checked(
            "fs",
            body(json!({"tag": "é".repeat(19), "socket": "/s"})),
            check_fs
        )
        .is_err());
        let disks: Vec<Value> = (0..17).map(|i| json!({"path": format!("/d{i}")})).collect();
        let cfg = json!({"machine": {"memory_mib": 64}, "boot": {"kernel": "/k"}, "disk": disks});
        assert!(checked("config", body(cfg), check_config).is_err());
    }

    /// A refused PUT says what vm.toml would say, after the API's name for the section.
    #[test]
    fn put_errors_use_the_config_file_wording() {
        let msg = |r: Result<MachineConfig, ApiReply>| r.unwrap_err().body["error"].to_string();
        assert_eq!(
            msg(checked(
                "machine",
                body(json!({"vcpus": 0, "memory_mib": 64})),
                check_machine
            )),
            json!("machine: vcpus = 0: a VM needs at least one vCPU; set vcpus = 1 or more")
                .to_string()
        );
        let cfg = json!({"machine": {"memory_mib": 64}, "boot": {"kernel": "/k"},
                         "disk": [{"path": "/a"}, {"path": "/b", "id": "a b"}]});
        let r = checked("config", body(cfg), check_config).unwrap_err();
        assert_eq!(
            r.body["error"],
            "config: disk #2: id = \"a b\": use printable ASCII without spaces"
        );
        // A body that does not parse keeps serde's message.
        let r = checked("machine", body(json!({"memory_mib": "x"})), check_machine).unwrap_err();
        assert_eq!(
            r.body["error"],
            "machine: invalid type: string \"x\", expected u64"
        );
        // A list longer than the API takes, in vm.toml's words.
        let disks: Vec<Value> = (0..17).map(|i| json!({"path": format!("/d{i}")})).collect();
        let cfg = json!({"machine": {"memory_mib": 64}, "boot": {"kernel": "/k"}, "disk": disks});
        let r = checked("config", body(cfg), check_config).unwrap_err();
        assert_eq!(
            r.body["error"],
            "config: 17 [[disk]] entries; qvm supports at most 16"
        );
    }

    fn wl(v: Value) -> WaylandConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn wayland_values_the_document_rules_out_are_refused_on_put() {
        let named = |names: &[&str]| -> Value {
            names
                .iter()
                .map(|n| json!({"name": n, "socket": "/run/user/1000/wayland-1"}))
                .collect()
        };
        for v in [
            json!({}),
            json!({"socket": null}),
            json!({"socket": null, "named": []}),
            json!({"socket": "/w", "max_buffer_mib": 0}),
            json!({"socket": "/w", "max_buffer_mib": MAX_WL_BUFFER_MIB + 1}),
            json!({"socket": "/w", "max_vfds": 0}),
            json!({"socket": "/w", "max_vfds": MAX_WL_VFDS + 1}),
            json!({"socket": "/w", "max_vfds": 4294967296u64}),
            json!({"socket": "/w", "max_buffer_mib": -1}),
            json!({"socket": "/w", "max_buffer_mib": null}),
            json!({"socket": "/w", "named": null}),
            json!({"socket": format!("/{}", "x".repeat(107))}),
            json!({"socket": "/w", "unknown": 1}),
            json!({"named": named(&[""])}),
            json!({"named": named(&["a b"])}),
            json!({"named": named(&["é"])}),
            json!({"named": named(&["tab\t"])}),
            json!({"named": named(&[&"n".repeat(MAX_WL_NAME_LEN + 1)])}),
            json!({"named": named(&["a", "b", "a"])}),
            json!({"named": [{"name": "a"}]}),
            json!({"named": [{"name": "a", "socket": "/s", "x": 1}]}),
            json!({"named": [{"name": "a", "socket": format!("/{}", "s".repeat(107))}]}),
            json!({"socket": "/w", "name": ""}),
            json!({"socket": "/w", "name": "x".repeat(33)}),
            json!({"socket": "/w", "name": "[a]"}),
            json!({"socket": "/w", "name": "a\u{7}"}),
            json!({"socket": "/w", "name": 3}),
            json!({"socket": "/w", "allow_globals": ["bad name"]}),
            json!({"socket": "/w", "allow_globals": ["1abc"]}),
            json!({"socket": "/w", "allow_globals": "wl_shm"}),
            json!({"socket": "/w", "clipboard": "closed"}),
            json!({"socket": "/w", "clipboard": null}),
        ] {
            let r = checked("wayland", body(v.clone()), check_wayland).unwrap_err();
            assert_eq!(r.status, 400, "{v}");
            assert!(
                r.body["error"].as_str().unwrap().starts_with("wayland: "),
                "{v}: {}",
                r.body
            );
        }
        for v in [
            json!({"socket": "/run/user/1000/wayland-0"}),
            json!({"socket": "wayland-0", "named": [], "max_buffer_mib": 1, "max_vfds": 1}),
            json!({"socket": null, "named": named(&["a"])}),
            json!({"named": named(&["a", "b", &"~".repeat(MAX_WL_NAME_LEN)])}),
            json!({"socket": "/w", "name": "work vm", "clipboard": "open",
                   "allow_globals": ["weston_screenshooter", "zwlr_layer_shell_v1"]}),
            json!({"socket": "/w", "name": "é".repeat(32), "clipboard": "gated"}),
            json!({
                "socket": format!("/{}", "x".repeat(106)),
                "max_buffer_mib": MAX_WL_BUFFER_MIB,
                "max_vfds": MAX_WL_VFDS,
            }),
        ] {
            assert!(
                checked("wayland", body(v.clone()), check_wayland).is_ok(),
                "{v}"
            );
        }
        let w = checked("wayland", body(json!({"socket": "/w"})), check_wayland).unwrap();
        assert_eq!((w.max_buffer_mib, w.max_vfds), (512, 256));
        assert!(w.named.is_empty());

        let cfg = json!({"machine": {"memory_mib": 64}, "boot": {"kernel": "/k"},
                         "wayland": {"socket": "/w", "max_vfds": 0}});
        let r = checked("config", body(cfg), check_config).unwrap_err();
        assert!(
            r.body["error"]
                .as_str()
                .unwrap()
                .starts_with("config: wayland: max_vfds = 0"),
            "{}",
            r.body
        );
    }

    /// check_wayland refuses exactly what VmConfig::validate refuses in [wayland] (which looks
    /// at no files there), so a PUT never lets through what start would refuse for its values.
    #[test]
    fn wayland_checks_agree_with_the_config_file_checks() {
        let mut cfg = VmConfig::parse(
            "[machine]\nmemory_mib = 64\n[boot]\nkernel = \"/bin/sh\"\n",
            Path::new("vm.toml"),
            Path::new("/"),
        )
        .unwrap();
        cfg.validate(None).unwrap();
        let s107 = format!("/{}", "x".repeat(106));
        let s108 = format!("/{}", "x".repeat(107));
        for v in [
            json!({"socket": "/w"}),
            json!({"socket": s107}),
            json!({"socket": s108}),
            json!({}),
            json!({"named": [{"name": "a", "socket": s107}]}),
            json!({"named": [{"name": "a", "socket": s108}]}),
            json!({"named": [{"name": "a", "socket": "/a"}, {"name": "a", "socket": "/b"}]}),
            json!({"named": [{"name": "", "socket": "/a"}]}),
            json!({"named": [{"name": "a b", "socket": "/a"}]}),
            json!({"named": [{"name": "x".repeat(31), "socket": "/a"}]}),
            json!({"named": [{"name": "x".repeat(32), "socket": "/a"}]}),
            json!({"socket": "/w", "max_buffer_mib": 0}),
            json!({"socket": "/w", "max_buffer_mib": MAX_WL_BUFFER_MIB}),
            json!({"socket": "/w", "max_buffer_mib": MAX_WL_BUFFER_MIB + 1}),
            json!({"socket": "/w", "max_vfds": 0}),
            json!({"socket": "/w", "max_vfds": MAX_WL_VFDS}),
            json!({"socket": "/w", "max_vfds": MAX_WL_VFDS + 1}),
            json!({"socket": "/w", "name": "work"}),
            json!({"socket": "/w", "name": "my vm 2"}),
            json!({"socket": "/w", "name": ""}),
            json!({"socket": "/w", "name": "x".repeat(32)}),
            json!({"socket": "/w", "name": "x".repeat(33)}),
            json!({"socket": "/w", "name": "a]b"}),
            json!({"socket": "/w", "name": "a\nb"}),
            json!({"socket": "/w", "allow_globals": ["weston_screenshooter"]}),
            json!({"socket": "/w", "allow_globals": [""]}),
            json!({"socket": "/w", "allow_globals": ["a-b"]}),
            json!({"socket": "/w", "allow_globals": ["x".repeat(65)]}),
            json!({"socket": "/w", "clipboard": "open"}),
        ] {
            let w = wl(v.clone());
            let api = check_wayland(&w);
            cfg.wayland = Some(w);
            let file = cfg.validate(None);
            assert_eq!(api.is_ok(), file.is_ok(), "{v}: {api:?} {file:?}");
        }
    }

    #[test]
    fn bare_wayland_socket_names_are_taken_in_the_runtime_dir() {
        let mut w = wl(json!({"socket": "wayland-0", "named": [
            {"name": "a", "socket": "wayland-1"},
            {"name": "b", "socket": "sub/wayland-2"},
            {"name": "c", "socket": "/abs/wayland-3"},
        ]}));
        let before = w.clone();
        resolve_wayland(&mut w, None);
        assert_eq!(w, before);
        resolve_wayland(&mut w, Some(Path::new("/run/user/1000")));
        let again = w.clone();
        resolve_wayland(&mut w, Some(Path::new("/elsewhere")));
        assert_eq!(w, again, "resolving twice changes nothing");
        assert_eq!(w.socket, Some(PathBuf::from("/run/user/1000/wayland-0")));
        let sockets: Vec<_> = w.named.iter().map(|n| n.socket.clone()).collect();
        assert_eq!(
            sockets,
            [
                PathBuf::from("/run/user/1000/wayland-1"),
                PathBuf::from("sub/wayland-2"),
                PathBuf::from("/abs/wayland-3"),
            ]
        );
        // The length limit applies to the resolved path.
        let mut w = wl(json!({"socket": "w".repeat(100)}));
        check_wayland(&w).unwrap();
        resolve_wayland(&mut w, Some(Path::new("/run/user/1000")));
        assert!(check_wayland(&w).unwrap_err().contains("at most 107 bytes"));
    }

    fn api() -> (VmmApi, std::sync::mpsc::Receiver<VmConfig>) {
        let (control, _chan) = crate::control::channel().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        (VmmApi::new(None, tx, control), rx)
    }

    fn call(api: &VmmApi, method: Method, route: Route, body: Option<Value>) -> ApiReply {
        api.handle(ApiRequest {
            method,
            route,
            body,
        })
    }

    fn draft(api: &VmmApi) -> Value {
        let r = call(api, Method::Get, Route::Vm, None);
        assert_eq!(r.status, 200);
        r.body["config"].clone()
    }

    #[test]
    fn allow_paste_needs_a_running_vm() {
        let (api, _rx) = api();
        let act = |a: &str| {
            call(
                &api,
                Method::Put,
                Route::Actions,
                Some(json!({"action": a})),
            )
        };
        let r = act("allow_paste");
        assert_eq!(r.status, 409, "{}", r.body);
        assert!(r.body["error"]
            .as_str()
            .unwrap()
            .contains("not been started"));
        assert!(act("paste").body["error"]
            .as_str()
            .unwrap()
            .contains("allow_paste"));
    }

    #[test]
    fn wayland_put_delete_and_the_draft() {
        let (api, _rx) = api();
        assert_eq!(draft(&api)["wayland"], Value::Null);
        let put = |v: Value| call(&api, Method::Put, Route::Wayland, Some(v)).status;
        assert_eq!(put(json!({"socket": "/run/user/1000/wayland-0"})), 204);
        assert_eq!(
            draft(&api)["wayland"],
            json!({"socket": "/run/user/1000/wayland-0", "named": [],
                   "max_buffer_mib": 512, "max_vfds": 256, "name": null,
                   "allow_globals": [], "clipboard": "gated"})
        );
        // A PUT replaces the whole section; a refused one leaves it alone.
        let w = json!({"socket": null, "named": [{"name": "gpu", "socket": "/run/gpu.sock"}],
                       "max_buffer_mib": 64, "max_vfds": 32, "name": "work",
                       "allow_globals": ["weston_screenshooter"], "clipboard": "open"});
        assert_eq!(put(w.clone()), 204);
        assert_eq!(draft(&api)["wayland"], w);
        assert_eq!(put(json!({"socket": "/w", "max_vfds": 0})), 400);
        assert_eq!(put(json!({"named": []})), 400);
        assert_eq!(
            call(&api, Method::Put, Route::Wayland, None).status,
            400,
            "no body"
        );
        assert_eq!(draft(&api)["wayland"], w);

        let delete = || call(&api, Method::Delete, Route::Wayland, None);
        assert_eq!(delete().status, 204);
        assert_eq!(draft(&api)["wayland"], Value::Null);
        let r = delete();
        assert_eq!(r.status, 404);
        assert_eq!(r.body["error"], "no wayland is configured");
        assert_eq!(
            call(&api, Method::Delete, Route::Vsock, None).body["error"],
            "no vsock is configured"
        );
        assert_eq!(call(&api, Method::Get, Route::Wayland, None).status, 405);

        // After start, like every other config resource: 400.
        assert_eq!(put(json!({"socket": "/w"})), 204);
        api.set_running();
        let r = call(
            &api,
            Method::Put,
            Route::Wayland,
            Some(json!({"socket": "/x"})),
        );
        assert_eq!(r.status, 400);
        assert!(
            r.body["error"]
                .as_str()
                .unwrap()
                .starts_with("/vm/wayland: the VM has been started"),
            "{}",
            r.body
        );
        assert_eq!(delete().status, 400);
    }

    #[test]
    fn wayland_round_trips_through_the_whole_config() {
        let (api, _rx) = api();
        let cfg = json!({
            "machine": {"vcpus": 1, "memory_mib": 64},
            "boot": {"kernel": "/k"},
            "wayland": {"socket": "/run/user/1000/wayland-0",
                        "named": [{"name": "other", "socket": "/run/other.sock"}],
                        "max_vfds": 100},
        });
        assert_eq!(
            call(&api, Method::Put, Route::VmConfig, Some(cfg)).status,
            204
        );
        let d = draft(&api);
        assert_eq!(
            d["wayland"],
            json!({"socket": "/run/user/1000/wayland-0",
                   "named": [{"name": "other", "socket": "/run/other.sock"}],
                   "max_buffer_mib": 512, "max_vfds": 100, "name": null,
                   "allow_globals": [], "clipboard": "gated"})
        );
        // GET /vm's config is a config PUT /vm/config takes back, and assembles to the same.
        let assembled = api.lock().draft.assemble().unwrap();
        assert_eq!(
            serde_json::from_value::<VmConfig>(d.clone()).unwrap(),
            assembled
        );
        assert_eq!(
            call(&api, Method::Put, Route::VmConfig, Some(d.clone())).status,
            204
        );
        assert_eq!(draft(&api), d);
        // A config without [wayland] drops it.
        let cfg = json!({"machine": {"memory_mib": 64}, "boot": {"kernel": "/k"}});
        assert_eq!(
            call(&api, Method::Put, Route::VmConfig, Some(cfg)).status,
            204
        );
        assert_eq!(draft(&api)["wayland"], Value::Null);
        let bad = json!({"machine": {"memory_mib": 64}, "boot": {"kernel": "/k"},
                         "wayland": {"named": [{"name": "a", "socket": "/a"},
                                               {"name": "a", "socket": "/b"}]}});
        let r = call(&api, Method::Put, Route::VmConfig, Some(bad));
        assert_eq!(r.status, 400);
        assert!(
            r.body["error"]
                .as_str()
                .unwrap()
                .starts_with("config: wayland: named #2 name = \"a\": named twice"),
            "{}",
            r.body
        );

        // From a config file: the draft holds its [wayland] as parsed.
        let file = VmConfig::parse(
            "[machine]\nmemory_mib = 64\n[boot]\nkernel = \"/k\"\n\
             [wayland]\nsocket = \"/run/user/1000/wayland-0\"\nmax_buffer_mib = 128\n\
             [[wayland.named]]\nname = \"n\"\nsocket = \"/run/n.sock\"\n",
            Path::new("vm.toml"),
            Path::new("/"),
        )
        .unwrap();
        let d = Draft::from_config(file.clone());
        assert_eq!(d.assemble().unwrap(), file);
        assert_eq!(
            d.to_json()["wayland"],
            json!({"socket": "/run/user/1000/wayland-0",
                   "named": [{"name": "n", "socket": "/run/n.sock"}],
                   "max_buffer_mib": 128, "max_vfds": 256, "name": "vm",
                   "allow_globals": [], "clipboard": "gated"})
        );
    }

    #[test]
    fn a_path_id_in_the_body_must_be_the_same_string() {
        assert_eq!(
            with_key(body(json!({"id": 5})), "id", "d0", 20)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            with_key(body(json!({"id": "d1"})), "id", "d0", 20)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            with_key(body(json!({"id": null})), "id", "d0", 20).unwrap(),
            json!({"id": "d0"})
        );
        assert_eq!(
            with_key(body(json!({})), "id", "d0", 20).unwrap(),
            json!({"id": "d0"})
        );
    }

    #[test]
    fn lists_stop_at_their_limit_but_entries_can_be_replaced() {
        let mut list: Vec<(String, u32)> = Vec::new();
        for i in 0..3 {
            upsert_within(&mut list, &format!("k{i}"), i, 3, "things").unwrap();
        }
        assert_eq!(
            upsert_within(&mut list, "k3", 3, 3, "things")
                .unwrap_err()
                .status,
            409
        );
        upsert_within(&mut list, "k1", 7, 3, "things").unwrap();
        assert_eq!(list[1], ("k1".to_string(), 7));
    }
}
