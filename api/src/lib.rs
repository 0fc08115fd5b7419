//! The REST API: built in its own issue. The crate exists so the workspace layout is fixed.
