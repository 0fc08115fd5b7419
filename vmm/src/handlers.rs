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
mod tests;
