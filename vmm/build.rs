//! Generates the x86_64 syscall name table the seccomp SIGSYS handler uses to name a forbidden
//! syscall, from the kernel's uapi header (linux-libc-dev). Without the header the table is
//! empty and the handler prints numbers only.

use std::io::Write;

fn main() {
    let header = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";
    println!("cargo:rerun-if-changed={header}");
    let mut names: Vec<(u32, String)> = std::fs::read_to_string(header)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("#define __NR_")?;
            let mut it = rest.split_whitespace();
            let name = it.next()?.to_string();
            let nr = it.next()?.parse().ok()?;
            Some((nr, name))
        })
        .collect();
    names.sort();
    let out = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("syscalls.rs");
    let mut f = std::fs::File::create(out).expect("create syscalls.rs");
    writeln!(
        f,
        "/// (number, name) of every x86_64 syscall, sorted by number."
    )
    .unwrap();
    writeln!(f, "pub static SYSCALL_NAMES: &[(u32, &str)] = &[").unwrap();
    for (nr, name) in names {
        writeln!(f, "    ({nr}, {name:?}),").unwrap();
    }
    writeln!(f, "];").unwrap();
}
