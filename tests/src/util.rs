//! Small helpers the lab tests share: a scratch directory both sides of the lab see, reading
//! `KEY value` lines from a script's output, and a shell function that waits for the VMM's log.

use std::path::PathBuf;

use crate::lab;

/// `name` under [`lab::lab_share_dir`], created if missing: a per-test directory at the same
/// absolute path on the host and in L1.
pub fn share_dir(name: &str) -> PathBuf {
    let d = lab::lab_share_dir().join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The rest of the first line of `out` that starts with `key` once its leading white space is
/// dropped, trimmed. Panics, showing the whole of `out`, if no line does.
pub fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim_start().strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{out}"))
        .trim()
}

/// Shell that runs `cmd` (a qvm-vmm command line, in the foreground) with the guest's console
/// on stdout and qvm-vmm's own messages (its stderr) kept in a file of their own, printed after
/// it under a `--- qvm-vmm` line; the script then exits with the VMM's status.
///
/// The two must never share a file: the UART writes the guest's console one byte per write(2)
/// and qvm-vmm prints a message in several writes, so a message could land inside a guest's
/// line (seen: `virtio-wl: NEW_CTX_NAMED: no socket named QVM-WL-HOSTILE huge-alloc err=12`)
/// and the test would not find that line.
pub fn vmm_apart(cmd: &str) -> String {
    format!("{}exit $rc\n", vmm_foreground(cmd))
}

/// Shell that runs `cmd` (a qvm-vmm command line, in the foreground) as [`vmm_apart`] does,
/// then prints `VMM-EXIT <status>` and qvm-vmm's own messages under `--- qvm-vmm`, and goes
/// on with the script (`$rc` holds the status).
pub fn vmm_foreground(cmd: &str) -> String {
    format!(
        r#"vmm_err=$(mktemp)
{cmd} 2>"$vmm_err"
rc=$?
echo "VMM-EXIT $rc"
echo "--- qvm-vmm"
cat "$vmm_err"
rm -f "$vmm_err"
"#
    )
}

/// Shell that defines `waitfor PATTERN`: polls `$log` (the guest's console) and `$log.vmm`
/// (qvm-vmm's own messages, kept apart as [`vmm_apart`] explains) for `PATTERN` every 0.2 s, giving up
/// (printing `TIMEOUT waiting for ...`, status 1) after 3000 tries, or at once (`VMM died
/// waiting for ...`) when the process `$vmm` is gone. Put it in a script with `{WAITFOR_IN_LOG}`
/// after `$log` and `$vmm` are set.
pub const WAITFOR_IN_LOG: &str = r#"waitfor() {
  i=0; until grep -q "$1" $log $log.vmm 2>/dev/null; do
    i=$((i+1)); [ $i -gt 3000 ] && { echo "TIMEOUT waiting for $1"; return 1; }
    kill -0 $vmm 2>/dev/null || { echo "VMM died waiting for $1"; return 1; }
    sleep 0.2
  done
}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_takes_the_first_matching_line_indented_or_not() {
        let out = "noise\n  SUM  abc \nSUM def\nHOST-SUM x\n";
        assert_eq!(field(out, "SUM "), "abc");
        assert_eq!(field(out, "HOST-SUM "), "x");
    }

    #[test]
    #[should_panic(expected = "no \"GONE \" line in:\nnoise")]
    fn field_panics_with_the_output_when_missing() {
        field("noise", "GONE ");
    }
}
