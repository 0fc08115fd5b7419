#!/usr/bin/env bash
# Builds virtiofsd (not packaged in Debian bookworm) from crates.io into the qvm cache, keyed by
# its version, and prints the binary's path. Needs libseccomp-dev and libcap-ng-dev
# (scripts/install-deps.sh installs them). A second run only prints the path.
set -euo pipefail
version=1.14.0
cache_root=${QVM_CACHE:-$HOME/.cache/qvm}
out="$cache_root/virtiofsd-$version"
if [[ ! -x "$out/bin/virtiofsd" ]]; then
    echo "install-virtiofsd: building virtiofsd $version (a few minutes, once)" >&2
    cargo install --quiet --locked virtiofsd --version "$version" --root "$out.tmp" >&2
    rm -rf "$out"
    mv "$out.tmp" "$out"
fi
echo "$out/bin/virtiofsd"
