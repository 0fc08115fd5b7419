//! qvm-wl-demo: placeholder until the client lands.
fn main() {}
