//! virtio-wl device: built in its own issue. The crate exists so the workspace layout is fixed.
