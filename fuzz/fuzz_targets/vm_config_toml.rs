//! Fuzzes the VM config parser: the input as `vm.toml` text through `VmConfig::parse` and
//! `validate`, and the same bytes as a JSON body (`PUT /vm/config` deserializes the same
//! types with serde_json). Whatever parses must validate without panicking and survive a
//! serialize/parse round trip unchanged. It needs only the qvm-config crate.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use qvm_config::VmConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = VmConfig::parse(text, Path::new("fuzz.toml"), Path::new("/")) {
            let _ = cfg.validate(Some(1024));
            // Paths are absolute now, so a second parse resolves nothing.
            if let Ok(again) = cfg.to_toml() {
                let back = VmConfig::parse(&again, Path::new("again.toml"), Path::new("/"))
                    .unwrap_or_else(|e| panic!("re-parse of {again:?}: {e}"));
                assert_eq!(back, cfg, "TOML round trip of {again:?}");
            }
        }
    }
    if let Ok(cfg) = serde_json::from_slice::<VmConfig>(data) {
        let _ = cfg.validate(Some(1024));
        let again = serde_json::to_vec(&cfg).expect("a VmConfig serializes to JSON");
        let back: VmConfig = serde_json::from_slice(&again).expect("JSON re-parse");
        assert_eq!(back, cfg, "JSON round trip");
    }
});
