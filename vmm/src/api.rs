//! The REST API's VMM side: what each resource and action does. The transport (HTTP on a unix
//! socket, routing, limits, JSON well-formedness) is `qvm-api`'s; this handler runs on its
//! threads and never touches the VM itself: before start it edits a draft config, after start
//! it forwards to the event loop through [`ControlSender`].
//!
//! Resources take the same schema as the TOML config (`vm.toml`), as JSON.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use qvm_api::{ApiReply, ApiRequest, Handler, Method, Route};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::config::{
    BootConfig, ConsoleConfig, DiskConfig, FsConfig, MachineConfig, NetConfig, VmConfig,
    VsockConfig,
};
use crate::control::{Command, ControlError, ControlSender};

/// How long an API call waits for the event loop.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

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
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "machine": self.machine,
            "boot": self.boot,
            "console": self.console,
            "disk": self.disks.iter().map(|(_, d)| d).collect::<Vec<_>>(),
            "net": self.nets.iter().map(|(_, n)| n).collect::<Vec<_>>(),
            "vsock": self.vsock,
            "fs": self.fs.iter().map(|(_, f)| f).collect::<Vec<_>>(),
        })
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

fn parse<T: DeserializeOwned>(what: &str, body: Option<Value>) -> Result<T, ApiReply> {
    let body = body.ok_or_else(|| error(400, format!("{what}: a JSON body is required")))?;
    serde_json::from_value(body).map_err(|e| error(400, format!("{what}: {e}")))
}

fn control_error(e: ControlError) -> ApiReply {
    match e {
        ControlError::NotRunning => error(409, e),
        ControlError::Timeout(_) => error(503, e),
        ControlError::PauseFailed(_) | ControlError::Kvm(_) => error(500, e),
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
            return error(
                409,
                format!(
                    "{}: the VM has been started; its configuration cannot change now (stop it and start a new VM)",
                    route_name(&route)
                ),
            );
        }
        let d = &mut st.draft;
        let r = match (method, route) {
            (Method::Put, Route::VmConfig) => {
                parse::<VmConfig>("config", body).map(|c| *d = Draft::from_config(c))
            }
            (Method::Put, Route::Machine) => parse("machine", body).map(|m| d.machine = Some(m)),
            (Method::Put, Route::Boot) => parse("boot", body).map(|b| d.boot = Some(b)),
            (Method::Put, Route::Console) => parse("console", body).map(|c| d.console = c),
            (Method::Put, Route::Disk(id)) => with_key(body, "id", &id, 20)
                .and_then(|b| parse::<DiskConfig>("disk", Some(b)))
                .map(|disk| upsert(&mut d.disks, &id, disk)),
            (Method::Put, Route::Net(id)) => {
                parse::<NetConfig>("net", body).map(|n| upsert(&mut d.nets, &id, n))
            }
            (Method::Put, Route::Vsock) => parse("vsock", body).map(|v| d.vsock = Some(v)),
            (Method::Put, Route::Fs(tag)) => with_key(body, "tag", &tag, 36)
                .and_then(|b| parse::<FsConfig>("fs", Some(b)))
                .map(|f| upsert(&mut d.fs, &tag, f)),
            (Method::Delete, Route::Disk(id)) => found(remove(&mut d.disks, &id), "disk", &id),
            (Method::Delete, Route::Net(id)) => found(remove(&mut d.nets, &id), "net", &id),
            (Method::Delete, Route::Fs(tag)) => found(remove(&mut d.fs, &tag), "fs", &tag),
            (Method::Delete, Route::Vsock) => found(d.vsock.take().is_some(), "vsock", ""),
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
        }
        let action = match parse::<Action>("actions", body) {
            Ok(a) => a.action,
            Err(e) => return e,
        };
        let phase = self.lock().phase.clone();
        match (action.as_str(), &phase) {
            ("start", Phase::Configuring) => self.start(),
            ("start", _) => error(409, "the VM has already been started"),
            ("pause" | "resume" | "stop", Phase::Running) => {
                let cmd = match action.as_str() {
                    "pause" => Command::Pause,
                    "resume" => Command::Resume,
                    _ => Command::Stop,
                };
                match self.control.call(cmd, CONTROL_TIMEOUT) {
                    Ok(_) => no_content(),
                    Err(e) => control_error(e),
                }
            }
            ("pause" | "resume" | "stop", Phase::Configuring) => {
                error(409, format!("{action}: the VM has not been started (PUT /actions {{\"action\": \"start\"}})"))
            }
            ("pause" | "resume" | "stop", Phase::Stopped(_)) => {
                error(409, format!("{action}: the VM has stopped"))
            }
            ("shutdown", _) => error(
                501,
                "shutdown (a guest-visible power button) is not implemented yet: use \"stop\"",
            ),
            _ => error(
                400,
                format!("unknown action {action:?}: use start, pause, resume, shutdown or stop"),
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
        if let Err(e) = crate::boot::detect_format(&cfg.boot.kernel) {
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
        _ => {
            o.insert(key.into(), Value::String(id.to_string()));
        }
    }
    Ok(body)
}

fn found(yes: bool, what: &str, id: &str) -> Result<(), ApiReply> {
    if yes {
        Ok(())
    } else {
        Err(error(404, format!("no {what} {id:?} is configured")))
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
