//! Tests of the REST handlers without a socket: each resource's checks on PUT (the same rules
//! and wording as vm.toml), the draft config before start and what changes after it, the
//! wayland resource, path ids and list limits.

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
