//! Generates the x86_64 syscall name table the seccomp SIGSYS handler uses to name a forbidden
//! syscall, from the kernel's uapi header (linux-libc-dev). Without the header the table is
//! empty and the handler prints numbers only.

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
    let mut table = String::from(
        "/// (number, name) of every x86_64 syscall, sorted by number.\n\
         pub static SYSCALL_NAMES: &[(u32, &str)] = &[\n",
    );
    for (nr, name) in names {
        table.push_str(&format!("    ({nr}, {name:?}),\n"));
    }
    table.push_str("];\n");
    std::fs::write(out, table).expect("write syscalls.rs");
}
