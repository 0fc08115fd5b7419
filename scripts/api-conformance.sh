#!/usr/bin/env bash
# Checks the live REST API against api/openapi.yaml with schemathesis (property-based: valid and
# invalid paths, methods, headers and bodies), and fails on any 5xx or any answer the document
# does not allow (status, Content-Type, body schema, headers).
#
#   scripts/api-conformance.sh [QVM_VMM_BINARY]     (default target/debug/qvm-vmm; builds nothing)
#
# Starts `qvm-vmm --api-sock` unconfigured in a temp dir and reaches its unix socket through
# scripts/tcp-unix-bridge.py. schemathesis and its dependencies (pinned in
# scripts/api-conformance-requirements.txt) are installed from PyPI into a venv cached in
# ~/.cache/qvm (or $QVM_CACHE, like the other heavy artefacts). Environment:
#   QVM_API_EXAMPLES    test cases per operation and phase (default 200: ~4000 cases, ~1 min)
#   QVM_API_SEED        the random seed (default a fixed one, so CI runs are reproducible;
#                       "random" for a new one each run)
#   QVM_API_TIME_LIMIT  seconds schemathesis may take before it counts as a failure (300)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

schemathesis_version=4.32.5
requirements=scripts/api-conformance-requirements.txt
examples=${QVM_API_EXAMPLES:-200}
seed=${QVM_API_SEED:-20260101}
run_limit=${QVM_API_TIME_LIMIT:-300}

bin=${1:-target/debug/qvm-vmm}
[[ $bin = /* ]] || bin=$root/$bin
[[ -x $bin ]] || { echo "api-conformance: $bin not found; cargo build -p qvm-vmm first" >&2; exit 1; }
grep -qx "schemathesis==$schemathesis_version" "$requirements" ||
    { echo "api-conformance: $requirements does not pin schemathesis==$schemathesis_version" >&2; exit 1; }

# The venv: keyed by the pinned requirements, built once, marked complete only when it is.
req_hash=$(sha256sum "$requirements" | cut -c1-12)
venv=${QVM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qvm}/schemathesis-venv-$schemathesis_version-$req_hash
if [[ ! -e $venv/.complete ]]; then
    echo "api-conformance: installing schemathesis $schemathesis_version into $venv" >&2
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    touch "$venv/.complete"
fi

tmp=$(mktemp -d /tmp/qvm-api-conformance.XXXXXX)
vmm_pid=
bridge_pid=
st_pid=
cleanup() {
    local pid
    for pid in "$st_pid" "$bridge_pid" "$vmm_pid"; do
        [[ -n $pid ]] || continue
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

sock=$tmp/api.sock
# Its own working dir: relative paths the generated bodies name land (or are looked up) there.
mkdir "$tmp/cwd"
(cd "$tmp/cwd" && exec "$bin" --api-sock "$sock") </dev/null >"$tmp/vmm.log" 2>&1 &
vmm_pid=$!
python3 scripts/tcp-unix-bridge.py "$sock" "$tmp/port" 2>"$tmp/bridge.log" &
bridge_pid=$!
for _ in $(seq 100); do
    [[ -S $sock && -s $tmp/port ]] && break
    kill -0 "$vmm_pid" 2>/dev/null || { cat "$tmp/vmm.log" >&2; echo "api-conformance: qvm-vmm exited" >&2; exit 1; }
    sleep 0.1
done
[[ -S $sock && -s $tmp/port ]] || { echo "api-conformance: the API socket or the bridge did not come up" >&2; exit 1; }
port=$(cat "$tmp/port")
url=http://127.0.0.1:$port

seed_args=(--seed "$seed")
[[ $seed = random ]] && seed_args=()
checks=not_a_server_error,status_code_conformance,content_type_conformance
checks+=,response_schema_conformance,response_headers_conformance,negative_data_rejection
checks+=,missing_required_header,unsupported_method,allow_header_conformance
checks+=,use_after_free,ensure_resource_availability
# One worker: CPython 3.11 before 3.11.8 can fail ast.parse with "AST constructor recursion
# depth mismatch" when threads parse at once (gh-106905), which hypothesis does for its lambdas.
# The stateful phase follows the document's links (PUT a device, then DELETE it).
args=(--url "$url" --checks "$checks" --mode all --phases examples,coverage,fuzzing,stateful
    --max-examples "$examples" "${seed_args[@]}" --workers 1 --request-timeout 10
    --suppress-health-check too_slow --generation-database none --no-color)
echo "api-conformance: st run api/openapi.yaml ${args[*]}"
start=$SECONDS
status=0
# From the temp dir, where schemathesis and hypothesis leave their caches; in the background so
# that a signal runs the traps at once rather than when schemathesis is done.
(cd "$tmp" && exec timeout --kill-after=10 "$run_limit" "$venv/bin/st" run "$root/api/openapi.yaml" \
    "${args[@]}") &
st_pid=$!
wait "$st_pid" || status=$?
st_pid=
echo "api-conformance: schemathesis took $((SECONDS - start)) s"

if ((status == 124 || status == 137)); then
    echo "api-conformance: schemathesis did not finish within $run_limit s" >&2
fi
# The VMM must have lived through it, still answering, and never panicked.
if ! kill -0 "$vmm_pid" 2>/dev/null; then
    vmm_status=0
    wait "$vmm_pid" || vmm_status=$?
    vmm_pid=
    echo "api-conformance: qvm-vmm exited during the run (status $vmm_status); its log:" >&2
    cat "$tmp/vmm.log" >&2
    status=1
elif ! "$bin" ctl --api-sock "$sock" get /version >/dev/null; then
    echo "api-conformance: qvm-vmm no longer answers GET /version" >&2
    status=1
fi
if grep -q panicked "$tmp/vmm.log"; then
    echo "api-conformance: qvm-vmm panicked; its log:" >&2
    cat "$tmp/vmm.log" >&2
    status=1
fi
if ((status != 0)); then
    echo "api-conformance: FAILED" >&2
    exit 1
fi
echo "api-conformance: ok"
