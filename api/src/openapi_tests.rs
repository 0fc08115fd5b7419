//! openapi.yaml is the API's single truth: it and the routing table must agree.

use std::collections::BTreeSet;

use serde_yaml_ng::Value;

use crate::routes::tests::all_routes;
use crate::routes::{Method, PATHS};
use crate::API_VERSION;

const DOC: &str = include_str!("../openapi.yaml");

fn doc() -> Value {
    serde_yaml_ng::from_str(DOC).expect("openapi.yaml is not valid YAML")
}

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// (path, method) for every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_mapping().expect("paths is a mapping");
    let mut ops = BTreeSet::new();
    for (path, item) in paths {
        let path = path.as_str().expect("path is a string");
        for (key, _) in item.as_mapping().expect("path item is a mapping") {
            let key = key.as_str().expect("path item key is a string");
            if HTTP_METHODS.contains(&key) {
                ops.insert((path.to_string(), key.to_uppercase()));
            }
        }
    }
    ops
}

/// (path, method) for everything the server serves.
fn served() -> BTreeSet<(String, String)> {
    let mut ops: BTreeSet<_> = all_routes()
        .iter()
        .flat_map(|r| {
            r.methods()
                .iter()
                .map(|m| (r.template().to_string(), m.as_str().to_string()))
        })
        .collect();
    ops.insert(("/version".into(), "GET".into()));
    ops
}

#[test]
fn routes_and_document_agree() {
    let doc = doc();
    assert_eq!(doc["openapi"].as_str(), Some("3.0.3"));
    assert_eq!(doc["info"]["version"].as_str(), Some(API_VERSION));
    let documented = documented(&doc);
    let served = served();
    let missing: Vec<_> = served.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "served but not in openapi.yaml: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "in openapi.yaml but not served: {extra:?}"
    );
    let paths: BTreeSet<_> = doc["paths"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    let known: BTreeSet<_> = PATHS.iter().map(|p| p.to_string()).collect();
    assert_eq!(paths, known);
}

#[test]
fn bodies_are_documented_where_the_server_wants_them() {
    let doc = doc();
    for (path, method) in served() {
        let op = &doc["paths"][path.as_str()][method.to_lowercase().as_str()];
        let body = &op["requestBody"];
        let takes_body = match method.as_str() {
            "PUT" => Method::Put.takes_body(),
            _ => false,
        };
        if takes_body {
            assert_eq!(body["required"].as_bool(), Some(true), "{method} {path}");
            let schema = &body["content"]["application/json"]["schema"];
            assert!(
                schema["$ref"].as_str().is_some(),
                "{method} {path}: no schema"
            );
        } else {
            assert!(body.is_null(), "{method} {path} takes no body");
        }
        // Every request's body is read (and refused on GET and DELETE) within the server's
        // limits, so any of them can get these.
        for code in ["400", "408", "413", "415", "503"] {
            assert!(
                !op["responses"][code].is_null(),
                "{method} {path}: no {code}"
            );
        }
    }
    // shutdown may still be missing from a VMM.
    assert!(!doc["paths"]["/actions"]["put"]["responses"]["501"].is_null());
}

/// Every `$ref` points at something in the document.
#[test]
fn references_resolve() {
    fn walk(v: &Value, doc: &Value, refs: &mut usize) {
        match v {
            Value::Mapping(m) => {
                for (k, child) in m {
                    if k.as_str() == Some("$ref") {
                        let target = child.as_str().expect("$ref is a string");
                        let pointer = target.strip_prefix("#/").expect("local $ref");
                        let mut node = doc;
                        for part in pointer.split('/') {
                            node = &node[part];
                        }
                        assert!(!node.is_null(), "dangling $ref {target}");
                        *refs += 1;
                    } else {
                        walk(child, doc, refs);
                    }
                }
            }
            Value::Sequence(s) => s.iter().for_each(|c| walk(c, doc, refs)),
            _ => {}
        }
    }
    let doc = doc();
    let mut refs = 0;
    walk(&doc, &doc, &mut refs);
    assert!(refs > 50, "{refs}");
}

/// The config schemas keep vm.toml's key names, and reject unknown keys as the VMM does.
#[test]
fn config_schema_mirrors_vm_toml() {
    let doc = doc();
    let schemas = &doc["components"]["schemas"];
    let keys = |name: &str| -> Vec<String> {
        schemas[name]["properties"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{name} has no properties"))
            .keys()
            .map(|k| k.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        keys("VmConfig"),
        ["machine", "boot", "console", "disk", "net", "vsock", "fs", "wayland"]
    );
    assert_eq!(keys("VmDraft"), keys("VmConfig"));
    // Every key of the draft is present in GET /vm (null or empty when not set).
    let required: Vec<String> = schemas["VmDraft"]["required"]
        .as_sequence()
        .expect("VmDraft has a required list")
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert_eq!(required, keys("VmDraft"));
    assert_eq!(keys("MachineConfig"), ["vcpus", "memory_mib"]);
    assert_eq!(keys("BootConfig"), ["kernel", "initrd", "cmdline"]);
    assert_eq!(keys("ConsoleConfig"), ["mode", "path", "limit_mib"]);
    assert_eq!(keys("DiskConfig"), ["path", "read_only", "id", "direct_io"]);
    assert_eq!(keys("NetConfig"), ["tap", "fd", "mac"]);
    assert_eq!(keys("VsockConfig"), ["guest_cid", "socket"]);
    assert_eq!(
        keys("WaylandConfig"),
        [
            "socket",
            "named",
            "max_buffer_mib",
            "max_vfds",
            "name",
            "allow_globals",
            "clipboard"
        ]
    );
    assert_eq!(keys("NamedWaylandSocket"), ["name", "socket"]);
    for fs in ["FsConfig", "FsPut"] {
        assert_eq!(
            keys(fs),
            ["tag", "socket", "shared_dir", "read_only", "virtiofsd"]
        );
    }
    for name in [
        "VmConfig",
        "MachineConfig",
        "BootConfig",
        "ConsoleConfig",
        "DiskConfig",
        "NetConfig",
        "VsockConfig",
        "FsConfig",
        "FsPut",
        "WaylandConfig",
        "NamedWaylandSocket",
        "VmDraft",
        "Action",
    ] {
        assert_eq!(
            schemas[name]["additionalProperties"].as_bool(),
            Some(false),
            "{name}"
        );
    }
}
