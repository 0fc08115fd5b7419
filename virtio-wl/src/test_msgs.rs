//! Wayland messages for the tests, built byte by byte as a client or the compositor would
//! send them: one set of builders for the policy's unit tests and the device tests.

/// One message: `object`, `opcode`, argument bytes.
pub(crate) fn msg(object: u32, opcode: u16, args: &[u8]) -> Vec<u8> {
    let size = 8 + args.len() as u32;
    let mut b = object.to_le_bytes().to_vec();
    b.extend_from_slice(&((size << 16) | u32::from(opcode)).to_le_bytes());
    b.extend_from_slice(args);
    b
}

/// `int`/`uint`/`object`/`new_id` arguments.
pub(crate) fn words(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A `string` argument: length with the NUL, the bytes, the NUL, padded to 4.
pub(crate) fn string_arg(s: impl AsRef<[u8]>) -> Vec<u8> {
    let s = s.as_ref();
    let mut b = ((s.len() + 1) as u32).to_le_bytes().to_vec();
    b.extend_from_slice(s);
    b.push(0);
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
    b
}

/// `wl_registry.global(name, interface, version)` on registry `reg`.
pub(crate) fn global(reg: u32, name: u32, iface: &str, version: u32) -> Vec<u8> {
    let mut a = words(&[name]);
    a.extend(string_arg(iface));
    a.extend(words(&[version]));
    msg(reg, 0, &a)
}

/// `wl_registry.bind(name, interface, version, id)` on registry `reg`.
pub(crate) fn bind(reg: u32, name: u32, iface: &str, version: u32, id: u32) -> Vec<u8> {
    let mut a = words(&[name]);
    a.extend(string_arg(iface));
    a.extend(words(&[version, id]));
    msg(reg, 0, &a)
}
