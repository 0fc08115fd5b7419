#!/bin/sh
# qvm lab: /init of the L1 VM (copied into the initramfs by prepare-l1.sh).
#
# Stage 1 (pid 1, busybox): load modules, check /dev/kvm + kvm_amd, mount the host root
#   read-only over 9p (tag hostroot) at /host, fresh proc/sys/dev/pts/tmp/run inside it, and the
#   read-write share (tag labshare) at the same absolute path it has on the host (from the
#   kernel parameter qvm_share=PATH). Then move /host over / (switch_root) and run stage 2.
# Stage 2 ("agent", the host's /bin/sh with the host root as /): reads lines from the control serial port
#   /dev/ttyS1:  "run ID"  runs $share/cmd/ID.sh in the background (cwd $share/work), stdout and
#                          stderr to ID.out, then the exit code to ID.rc ("CODE\n", one write);
#                "kill ID" kills a running command and all its descendants.
#                "diag ID" prints what L1 is doing (its tasks with their kernel stacks, interrupts,
#                          timers, whether the share still answers) to the console between
#                          "QVM-LAB-DIAG-BEGIN ID" and "QVM-LAB-DIAG-END ID", with nothing but
#                          shell builtins and a busybox in tmpfs, so a stalled 9p cannot stop it.
#   It also prints "qvm-lab-hb up=SECONDS" on the console every 60 s: when L1 stops ticking, the
#   last heartbeat says when. At start it writes /proc/modules to $share/l1-modules (where the
#   modules sit, to name an address the host's QEMU monitor reports if L1 freezes) and, when the
#   kernel command line has qvm_kallsyms=1, its text symbols to $share/l1-kallsyms.
# Markers on the console (ttyS0): "QVM-LAB-READY" once commands are accepted,
#   "QVM-LAB-FAIL: reason" before powering off on any set-up error.
# Must stay POSIX sh: stage 1 runs under busybox sh, stage 2 under dash.

lab_fail() {
    echo "QVM-LAB-FAIL: $*" > /dev/console
    sleep 1
    echo o > /proc/sysrq-trigger
    exit 1
}

# Kills a process and all its descendants (stop first so it cannot fork meanwhile).
kill_tree() {
    kill -STOP "$1" 2> /dev/null || return 0
    for c in $(cat /proc/"$1"/task/*/children 2> /dev/null); do kill_tree "$c"; done
    kill -KILL "$1" 2> /dev/null
}

bb=/run/qvm-lab/busybox

# The diag verb's report: see the header. Output goes to the caller's stdout (the console).
diag() {
    did=$1 # the loop below reuses the positional parameters
    echo "QVM-LAB-DIAG-BEGIN $did"
    read -r up _ < /proc/uptime
    read -r la < /proc/loadavg
    echo "uptime $up s; loadavg $la"
    echo "tasks (tid state wchan comm; a kernel stack for every user thread and every D task):"
    for d in /proc/[0-9]*; do
        for t in "$d"/task/*; do
            read -r st 2> /dev/null < "$t/stat" || continue
            comm=${st#*(}
            comm=${comm%)*}
            # After "comm) ": state ppid pgrp session tty tpgid flags ... (not cmdline, whose
            # read takes the mmap lock a task stuck in a page fault may hold).
            set -- ${st##*) }
            state=$1
            kthread=$(( $7 & 0x200000 ))
            w=
            read -r w 2> /dev/null < "$t/wchan"
            printf '  %s %s %s %s\n' "${t##*/}" "$state" "${w:--}" "$comm"
            if [ "$kthread" = 0 ] || [ "$state" = D ]; then
                while read -r line; do printf '      %s\n' "$line"; done 2> /dev/null < "$t/stack"
            fi
        done
    done
    echo "interrupts:"
    while read -r line; do printf '  %s\n' "$line"; done < /proc/interrupts
    echo "timers:"
    $bb grep -m 12 -E '^now at|expires_next|^ #[0-9]|hres_active|nohz_mode' /proc/timer_list
    echo "share: $($bb timeout 10 $bb ls -d "$share/cmd" 2>&1 || echo "no answer from 9p within 10 s")"
    echo "QVM-LAB-DIAG-END $did"
}

heartbeat() {
    # Beats on even if a test kills its sleep.
    while :; do
        $bb sleep 60
        read -r up _ < /proc/uptime
        echo "qvm-lab-hb up=$up"
    done
}

agent() {
    share=$1
    mkdir -p /run/qvm-lab
    cmd=$share/cmd
    [ -d "$cmd" ] || lab_fail "control directory $cmd missing in L1"
    [ -c /dev/ttyS1 ] || lab_fail "control serial port /dev/ttyS1 missing"
    stty -F /dev/ttyS1 raw -echo || lab_fail "stty on /dev/ttyS1 failed"
    exec 3< /dev/ttyS1
    cat /proc/modules > "$share/l1-modules" 2> /dev/null
    # The kernel's text symbols, once per L1 image (the host keeps them; L1 boots nokaslr):
    # Debian's System.map is a placeholder.
    case " $(cat /proc/cmdline) " in
        *" qvm_kallsyms=1 "*)
            ($bb grep -E ' [Tt] ' /proc/kallsyms > "$share/l1-kallsyms.tmp" \
                && $bb mv "$share/l1-kallsyms.tmp" "$share/l1-kallsyms") 3<&- &
            ;;
    esac
    heartbeat > /dev/console 2>&1 3<&- &
    echo "QVM-LAB-READY kernel=$(uname -r) cpus=$(nproc) share=$share" > /dev/console
    while read -r verb id <&3; do
        case $id in
            '' | *[!A-Za-z0-9_-]*) echo "qvm-lab agent: bad id '$id'" > /dev/console; continue ;;
        esac
        case $verb in
            run)
                # Only a fork and one exec (sh) per command: under TCG every exec of a host binary
                # costs 80-400 ms (mv ~400 ms, setsid ~250 ms), so the exit code is written with a
                # single write(2) of "CODE\n" instead of tmp+mv; the host only accepts the file
                # once it ends with a newline, which makes it just as atomic.
                (
                    cd "$share/work" 2> /dev/null || cd /
                    sh "$cmd/$id.sh" > "$cmd/$id.out" 2>&1 < /dev/null
                    echo $? > "$cmd/$id.rc"
                ) 3<&- &
                echo $! > "/run/qvm-lab/$id.pid"
                ;;
            kill)
                pid=$(cat "/run/qvm-lab/$id.pid" 2> /dev/null)
                [ -n "$pid" ] && kill_tree "$pid"
                ;;
            diag) diag "$id" > /dev/console 2>&1 3<&- & ;;
            *) echo "qvm-lab agent: bad command '$verb'" > /dev/console ;;
        esac
    done
    lab_fail "control channel closed"
}

if [ "$1" = agent ]; then
    agent "$2"
    exit 1
fi

# ---- stage 1: pid 1 in the initramfs ----
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

while read -r name kind; do
    if ! insmod "/lib/modules/$name.ko" 2> /tmp/insmod.err; then
        if [ "$kind" = required ]; then
            lab_fail "insmod $name: $(cat /tmp/insmod.err)"
        fi
        echo "qvm-lab: optional module $name failed: $(cat /tmp/insmod.err)"
    fi
done < /etc/qvm-lab-modules

[ -d /sys/module/kvm_amd ] || lab_fail "kvm_amd is not loaded (is the L1 CPU -cpu max with svm?)"
[ -c /dev/kvm ] || lab_fail "/dev/kvm missing in L1 although kvm_amd loaded"

share=
for arg in $(cat /proc/cmdline); do
    case $arg in qvm_share=*) share=${arg#qvm_share=} ;; esac
done
[ -n "$share" ] || lab_fail "kernel parameter qvm_share= missing"

ip link set lo up 2> /dev/null

o9p="trans=virtio,version=9p2000.L,msize=524288"
mount -t 9p -o "$o9p,ro" hostroot /host || lab_fail "mounting host root (9p tag hostroot) failed"
mount -t proc proc /host/proc || lab_fail "mount /proc"
mount -t sysfs sysfs /host/sys || lab_fail "mount /sys"
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup 2> /dev/null
mount -t devtmpfs devtmpfs /host/dev || lab_fail "mount /dev"
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /host/dev/pts || lab_fail "mount /dev/pts"
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
# /tmp is a fresh tmpfs in L1, but host paths the tests need may live under the host's /tmp
# (a CI checkout, a cache): keep those visible, read-only, at the same paths (qvm_expose=).
mkdir -p /hosttmp && mount --bind /host/tmp /hosttmp || lab_fail "bind host /tmp"
mount -t tmpfs -o mode=1777 tmpfs /host/tmp || lab_fail "mount /tmp"
expose=
for arg in $(cat /proc/cmdline); do
    case $arg in qvm_expose=*) expose=${arg#qvm_expose=} ;; esac
done
for p in $(echo "$expose" | tr ',' ' '); do
    rel=${p#/tmp/}
    [ -d "/hosttmp/$rel" ] || continue
    mkdir -p "/host/tmp/$rel" && mount --bind "/hosttmp/$rel" "/host/tmp/$rel" \
        || lab_fail "exposing host $p in L1 failed"
done
mount -t tmpfs -o mode=0755 tmpfs /host/run || lab_fail "mount /run"
mkdir -p /host/run/qvm-lab && cp /bin/busybox /host/run/qvm-lab/busybox \
    || lab_fail "copying busybox to /run"
[ -d "/host$share" ] || lab_fail "share mount point $share does not exist on the host"
mount -t 9p -o "$o9p" labshare "/host$share" || lab_fail "mounting share (9p tag labshare) at $share failed"
cp /init /host/run/qvm-lab-init.sh

# switch_root, not a plain chroot: the kernel refuses user namespaces to a chrooted process
# (current_chrooted()), and the sandbox's tests need them. With the host root moved over /,
# "." is the namespace's root, so the chroot below changes nothing the kernel checks.
cd /host || lab_fail "cd /host"
mount --move . / || lab_fail "moving the host root over / failed"
exec chroot . /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/root/.cargo/bin \
    HOME=/root TERM=dumb LANG=C.UTF-8 QVM_LAB_SHARE="$share" QVM_IN_LAB=1 \
    /bin/sh /run/qvm-lab-init.sh agent "$share"
