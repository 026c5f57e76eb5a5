#!/usr/bin/env bash
# One command for stsgate's performance numbers (issue 5). Writes bench/RESULTS.md.
#
#   scripts/bench.sh            # ~12 minutes once built (the first release build takes longer)
#
# What it does, all on loopback ports that were free a moment before:
#   1. builds release (stsgate + stsgate-loadgen), installs wrk (apt) or oha (cargo)
#      if neither is there, and Envoy via scripts/install-tools.sh if .tools/bin/envoy is missing;
#   2. runs the criterion benches (benches/exchange.rs), including the crypto ceiling;
#   3. starts stsgate cached, stsgate cached with `dynamic_metadata: []` ("bare"), stsgate
#      cold (cache: {enabled: false}), the do-nothing
#      Check server, plain and "like stsgate" (it answers with the same shape as a cached
#      exchange: one 470-byte overwrite header, 2 dynamic-metadata strings), and six
#      Envoys (one worker each): ext_authz -> stsgate cached | noop | stsgate cold |
#      noop-like | stsgate bare, and jwt_authn RS256 without cache; every route is a
#      direct_response; and a seventh, envoy_cached_mtls (issue 11): the same cached
#      exchange, but Envoy's authz cluster speaks TLS with a client certificate to one
#      more stsgate with `listen.grpc_tls`, `caller_identity: mtls` and a `callers` entry
#      for that certificate (test PKI of tests/fixtures/mtls); its config is otherwise the
#      cached one, so envoy_cached_mtls ÷ envoy_cached is the cost of TLS; and an eighth,
#      envoy_ceiling (issue 17): the noop-like server with `--crypto`, which does the crypto
#      ceiling (RS256 verify + ES256 sign, keys parsed once) in every Check: what a cold
#      exchange cannot avoid, measured in a server under the same load as stsgate cold;
#   4. ROUNDS (3) alternating rounds of: direct gRPC (stsgate-loadgen: 64 calls over
#      2 HTTP/2 channels, 1 s warm-up, 10 s) against stsgate cached, noop, noop-like, cold,
#      the crypto-ceiling server, bare;
#      then wrk -t1 -c64 -d10s --latency (after a 1 s warm-up) through each Envoy
#      (envoy_cached_mtls right before envoy_cached);
#      CPU of the server and of Envoy is read from /proc during each measured window;
#   5. RSS of a fresh stsgate after 100k distinct cached exchanges, and start-up time
#      to SERVING (median of 5);
#   6. bench/report.py turns it all into bench/RESULTS.md (raw data in bench/results/).
#
# Env: ROUNDS=3 DURATION=10 WARMUP=1 CONCURRENCY=64 CHANNELS=2 FILL=100000
#      SKIP_CRITERION=1 (reuse nothing; just skip) LOADTOOL=wrk|oha KEEP_WORK=1
#      PIN=1 (default with >= 2 cores): through Envoy, Envoy runs alone on CPU 1 and the load
#      tool and the ext_authz server share CPU 0, so the scheduler does not put the server or
#      wrk on Envoy's core mid-run (the largest source of noise here); PIN=0 lets them float.
#      The direct gRPC runs always float, like the anchors.
#      QUIET_WAIT=SECONDS: before the criterion benches and before the rounds, wait up to
#      this long for the machine to be quiet (< FOREIGN_LIMIT=0.25 busy cores not ours).
#      CASES=envoy_cached,envoy_cached_mtls: run only these load cases (comma-separated
#      names as in bench/report.py) and skip the memory and start-up parts unless CASES names
#      `memory` (CASES=memory: memory and start-up alone); the report then
#      goes to bench/results/partial.md (raw: partial.json), not bench/RESULTS.md.
#      REPORT=PATH RAW=PATH: where the report and the raw JSON go.
#      PERF=1: record the server of every direct gRPC run with `perf record` (Debian's
#      linux-perf, installed if missing) over its CPU window, and write where stsgate cold's
#      CPU per Check goes beside the crypto-ceiling server's, by category of code, to
#      REPORT's name with -perf.md (bench/perf_categories.py; round 1). Sampling at 999 Hz
#      adds ~1% to both servers' CPU.
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO="$(cd -- "$SCRIPT_DIR/.." && pwd -P)"
cd "$REPO"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-1}"
CONCURRENCY="${CONCURRENCY:-64}"
CHANNELS="${CHANNELS:-2}"
FILL="${FILL:-100000}"
NCPU="$(nproc)"
PIN="${PIN:-$((NCPU >= 2 ? 1 : 0))}"
ALL_CPUS="0-$((NCPU - 1))"
# "Bearer " + the ES256 token this config mints (463 bytes), and the metadata
# strings stsgate sends by default for a request without an actor (sub, aud).
HEADER_BYTES="${HEADER_BYTES:-470}"
METADATA_FIELDS="${METADATA_FIELDS:-2}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
ENVOY="$REPO/.tools/bin/envoy"
ISSUER="https://idp.bench.example/realms/corp"
SUBJECT_AUD="mesh-gateway"
AUDIENCE="bench-api"
# Test PKI (test-only keys): stsgate's gRPC listener serves stsgate.pem for
# envoy_cached_mtls, Envoy presents orders-sidecar.pem, both chain to ca.pem.
MTLS_DIR="$REPO/tests/fixtures/mtls"
MTLS_SERVER_ID="spiffe://cluster.local/ns/stsgate/sa/stsgate"
MTLS_CALLER="orders-sidecar"
MTLS_CALLER_ID="spiffe://cluster.local/ns/shop/sa/orders-sidecar"
ALL_CASES=(direct_cached direct_noop direct_noop_like direct_cold direct_ceiling direct_cached_bare
    envoy_cached envoy_noop envoy_jwt_authn envoy_cold envoy_ceiling envoy_noop_like envoy_cached_bare envoy_cached_mtls memory)
CASES="${CASES:-}"
if [[ -n "$CASES" ]]; then
    for c in ${CASES//,/ }; do
        [[ " ${ALL_CASES[*]} " == *" $c "* ]] || { echo "unknown case in CASES: $c (known: ${ALL_CASES[*]})" >&2; exit 2; }
    done
    REPORT="${REPORT:-bench/results/partial.md}"
    RAW="${RAW:-bench/results/partial.json}"
else
    REPORT="${REPORT:-bench/RESULTS.md}"
    RAW="${RAW:-bench/results/latest.json}"
fi
want() { [[ -z "$CASES" || ",$CASES," == *",$1,"* ]]; } # case: is it run?

WORK="$(mktemp -d /tmp/stsgate-bench.XXXXXX)"
RUNS="$WORK/runs"
mkdir -p "$RUNS"
PIDS=()

log() { echo "[bench $(date +%T)] $*" >&2; }
die() {
    echo "[bench $(date +%T)] FAILED: $*" >&2
    exit 1
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((${#PIDS[@]})); then
        for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
        sleep 0.5
        for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    fi
    if [[ $rc -ne 0 || "${KEEP_WORK:-0}" == 1 ]]; then
        echo "[bench] logs and raw data kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------------------
# Tools

need() { command -v "$1" >/dev/null 2>&1 || die "$1 is required"; }
need cargo
need python3
need curl
if [[ "${PERF:-0}" == 1 ]] && ! command -v perf >/dev/null 2>&1; then
    [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1 || die "PERF=1 needs perf (Debian: linux-perf)"
    log "installing perf (Debian package linux-perf)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null \
        || die "apt-get install linux-perf failed"
fi

LOADTOOL="${LOADTOOL:-}"
if [[ -z "$LOADTOOL" ]]; then
    if command -v wrk >/dev/null 2>&1; then
        LOADTOOL=wrk
    elif command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
        log "installing wrk (Debian package)"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null \
            || die "apt-get install wrk failed"
        LOADTOOL=wrk
    else
        command -v oha >/dev/null 2>&1 || { log "installing oha (cargo install)"; cargo install --locked oha >&2; }
        LOADTOOL=oha
    fi
fi
need "$LOADTOOL"

if [[ ! -x "$ENVOY" ]]; then
    log "Envoy missing: running scripts/install-tools.sh"
    "$REPO/scripts/install-tools.sh" >&2
fi
[[ -x "$ENVOY" ]] || die "no Envoy at $ENVOY"

log "building release (stsgate, stsgate-loadgen) into $TARGET_DIR"
cargo build --release --features loadgen --bin stsgate --bin stsgate-loadgen >&2 || die "cargo build failed"
STSGATE="$TARGET_DIR/release/stsgate"
LOADGEN="$TARGET_DIR/release/stsgate-loadgen"
[[ -x "$STSGATE" && -x "$LOADGEN" ]] || die "binaries not found under $TARGET_DIR/release"

# ---------------------------------------------------------------------------
# Machine description (before any load)

{
    echo "date $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "nproc $(nproc)"
    echo "cpu $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "mem_gib $(awk '/MemTotal/ {printf "%.0f", $2/1048576}' /proc/meminfo)"
    echo "kernel $(uname -r)"
    echo "os $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
    echo "loadavg_start $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "rustc $(rustc --version)"
    echo "envoy $("$ENVOY" --version 2>/dev/null | grep -o '[0-9a-f]\{40\}/[^ ]*' | head -1)"
    if [[ "$LOADTOOL" == wrk ]]; then
        echo "loadtool $(wrk --version 2>&1 | head -1 | awk '{print "wrk", $2}')"
    else
        echo "loadtool $(oha --version 2>&1 | head -1)"
    fi
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo '+local changes')"
    echo "rounds $ROUNDS"
    echo "duration $DURATION"
    echo "concurrency $CONCURRENCY"
    echo "channels $CHANNELS"
    echo "fill $FILL"
    echo "header_bytes $HEADER_BYTES"
    echo "metadata_fields $METADATA_FIELDS"
    echo "pin $PIN"
    echo "cases ${CASES:-all}"
} >"$WORK/meta.txt"

# Waits (up to QUIET_WAIT s) until the machine's CPU outside our own servers is
# below FOREIGN_LIMIT cores over 2 s: other jobs on a shared box skew every ratio.
wait_quiet() { # what
    local limit="${FOREIGN_LIMIT:-0.25}" waited=0 busy
    while :; do
        local t0 m0 o0 t1 m1 o1
        t0=$(now_s); m0=$(machine_seconds); o0=$(ours_seconds)
        sleep 2
        t1=$(now_s); m1=$(machine_seconds); o1=$(ours_seconds)
        busy=$(awk -v d="$(awk -v a="$m0" -v b="$m1" -v c="$o0" -v e="$o1" 'BEGIN { print (b - a) - (e - c) }')" \
            -v w="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" 'BEGIN { x = d / w; printf "%.2f", (x < 0 ? 0 : x) }')
        if awk -v b="$busy" -v l="$limit" 'BEGIN { exit !(b < l) }'; then
            return 0
        fi
        if ((waited >= ${QUIET_WAIT:-0})); then
            ((${QUIET_WAIT:-0} > 0)) && log "machine still busy ($busy cores not ours) after ${waited}s; going on ($1)"
            return 0
        fi
        log "machine busy ($busy cores not ours); waiting before $1"
        sleep 8
        waited=$((waited + 10))
    done
}
CLK_TCK="$(getconf CLK_TCK)"
# CPU sampling window: from DIRECT_DELAY (direct) or 0.3 s (wrk) after the load tool
# starts, for WINDOW s, ending 0.5 s before the tool's measured part does.
DIRECT_DELAY="$(awk -v w="$WARMUP" 'BEGIN { print w + 0.3 }')"
WINDOW="$(awk -v d="$DURATION" 'BEGIN { x = d - 0.8; print (x < 0.5 ? 0.5 : x) }')"
cpu_seconds() { # pid -> utime+stime in seconds (all threads); "nan" once it has exited
    awk -v t="$CLK_TCK" '{ sub(/^.*\) /, ""); printf "%.3f", ($12 + $13) / t }' "/proc/$1/stat" 2>/dev/null || echo nan
}
ours_seconds() { # utime+stime of every process this script started, in seconds
    local files=() pid
    if ((${#PIDS[@]})); then
        for pid in "${PIDS[@]}"; do [[ -r /proc/$pid/stat ]] && files+=("/proc/$pid/stat"); done
    fi
    if ((${#files[@]} == 0)); then
        echo 0
        return
    fi
    cat "${files[@]}" 2>/dev/null | awk -v t="$CLK_TCK" '{ sub(/^.*\) /, ""); s += $12 + $13 } END { printf "%.3f", s / t }'
}
now_s() { date +%s.%N; }
machine_seconds() { # user+nice+system+irq+softirq of the whole machine, in seconds
    # (a task's stime includes the irq/softirq ticks taken while it ran, /proc/stat lists them apart)
    awk -v t="$CLK_TCK" '/^cpu / { printf "%.3f", ($2 + $3 + $4 + $7 + $8) / t }' /proc/stat
}

# ---------------------------------------------------------------------------
# Criterion (before any server is up, so it has the cores to itself)

if [[ "${SKIP_CRITERION:-0}" != 1 ]]; then
    wait_quiet "the criterion benches"
    log "criterion benches (benches/exchange.rs)"
    CRITERION_HOME="$WORK/criterion" cargo bench --features loadgen --bench exchange >"$WORK/criterion.log" 2>&1 \
        || { tail -30 "$WORK/criterion.log" >&2; die "cargo bench failed"; }
    grep -E '^[a-z_/0-9]+ +time:|^ +time:' -B1 "$WORK/criterion.log" | grep -v '^--' >&2 || true
fi

# ---------------------------------------------------------------------------
# Fixtures, ports, configs

"$LOADGEN" mint-subjects --out "$WORK/idp" --issuer "$ISSUER" --aud "$SUBJECT_AUD" --count 1 || die "mint-subjects failed"
TOKEN="$(cat "$WORK/idp/token.txt")"
JWKS_FILE="$WORK/idp/idp-jwks.json"

# N distinct free loopback ports, all bound at once so none repeats.
read -r -a P <<<"$(python3 - <<'EOF'
import socket
socks = []
for _ in range(32):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)"
((${#P[@]} == 32)) || die "could not reserve ports"

render() { # template out KEY=VALUE...
    python3 - "$@" <<'EOF'
import sys
tmpl, out, *pairs = sys.argv[1:]
text = open(tmpl).read()
for pair in pairs:
    k, v = pair.split("=", 1)
    text = text.replace("{{" + k + "}}", v)
if "{{" in text:
    sys.exit(f"render: unfilled placeholder in {out}: " + text[text.index("{{"):][:40])
open(out, "w").write(text)
EOF
}

# stsgate's default metadata is sub, aud and actor; with no actor that is 2
# strings, which the noop-like server mirrors. METADATA_FIELDS=8 sends every
# field, 0 none (to measure what the metadata costs).
case "$METADATA_FIELDS" in
    0) METADATA_LIST="[]" ;;
    2) METADATA_LIST="[sub, aud, actor]" ;;
    8) METADATA_LIST="[decision, rule, sub, aud, actor, scope, jti, subject_issuer]" ;;
    *) die "METADATA_FIELDS must be 0, 2 or 8" ;;
esac
stsgate_cfg() { # name grpc http cache [metadata list] [listen.grpc_tls lines] [ext_authz caller lines]
    render bench/stsgate.yaml.tmpl "$WORK/$1.yaml" GRPC_PORT="$2" HTTP_PORT="$3" CACHE="$4" \
        ISSUER="$ISSUER" SUBJECT_AUD="$SUBJECT_AUD" JWKS_FILE="$JWKS_FILE" METADATA="${5:-$METADATA_LIST}" \
        GRPC_TLS="${6:-}" CALLERS="${7:-}"
}
CACHED_GRPC=${P[0]}
COLD_GRPC=${P[2]}
RSS_GRPC=${P[4]}
START_GRPC=${P[6]}
NOOP=${P[8]}
NOOP_LIKE=${P[9]}
# The do-nothing server answering like stsgate that also does the crypto
# ceiling (RS256 verify + ES256 sign) per Check: the cold path's baseline.
CEILING=${P[30]}
# The same cached exchange with `dynamic_metadata: []`: what the metadata costs.
BARE_GRPC=${P[28]}
# The same cached exchange over mTLS (issue 11): TLS on the gRPC listener, the
# caller identified by its certificate and admitted by `callers` for bench-*.
MTLS_GRPC=${P[26]}
MTLS_HTTP=${P[27]}
STSGATE_TLS="  grpc_tls:
    cert: $MTLS_DIR/stsgate.pem
    key: $MTLS_DIR/stsgate-key.pem
    client_ca: $MTLS_DIR/ca.pem"
STSGATE_CALLERS="  caller_identity: mtls
  callers:
    - identity: \"$MTLS_CALLER_ID\"
      audiences: [\"bench-*\"]"
stsgate_cfg stsgate-cached "$CACHED_GRPC" "${P[1]}" "{enabled: true}"
stsgate_cfg stsgate-cold "$COLD_GRPC" "${P[3]}" "{enabled: false}"
stsgate_cfg stsgate-bare "$BARE_GRPC" "${P[29]}" "{enabled: true}" "[]"
stsgate_cfg stsgate-mtls "$MTLS_GRPC" "$MTLS_HTTP" "{enabled: true}" "$METADATA_LIST" "$STSGATE_TLS" "$STSGATE_CALLERS"
stsgate_cfg stsgate-rss "$RSS_GRPC" "${P[5]}" "{enabled: true, max_bytes: 1073741824}"
stsgate_cfg stsgate-startup "$START_GRPC" "${P[7]}" "{enabled: true}"
"$STSGATE" check-config "$WORK/stsgate-cached.yaml" >/dev/null || die "bench config rejected"
"$STSGATE" check-config "$WORK/stsgate-mtls.yaml" >/dev/null || die "bench mTLS config rejected"

JWKS_INLINE="$(cat "$JWKS_FILE")"
# Envoy cases: name listen admin template authz-port
ENVOY_CASES=(envoy_cached envoy_noop envoy_jwt_authn envoy_cold envoy_noop_like envoy_cached_bare envoy_cached_mtls envoy_ceiling)
declare -A E_LISTEN E_ADMIN E_PID
i=10
for name in "${ENVOY_CASES[@]}"; do
    E_LISTEN[$name]=${P[$i]}
    E_ADMIN[$name]=${P[$((i + 1))]}
    i=$((i + 2))
done
# The authz cluster's transport socket for envoy_cached_mtls: Envoy's client
# certificate, and only stsgate's SPIFFE ID accepted (as in envoy/chain-*.yaml.tmpl).
AUTHZ_TLS="    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          alpn_protocols: [\"h2\"]
          tls_certificates:
          - certificate_chain: {filename: \"$MTLS_DIR/$MTLS_CALLER.pem\"}
            private_key: {filename: \"$MTLS_DIR/$MTLS_CALLER-key.pem\"}
          validation_context:
            trusted_ca: {filename: \"$MTLS_DIR/ca.pem\"}
            match_typed_subject_alt_names:
            - san_type: URI
              matcher: {exact: \"$MTLS_SERVER_ID\"}"
envoy_cfg() { # name authz-port|jwt [tls]
    if [[ "$2" == jwt ]]; then
        render bench/envoy/jwt_authn.yaml.tmpl "$WORK/$1.yaml" LISTEN_PORT="${E_LISTEN[$1]}" ADMIN_PORT="${E_ADMIN[$1]}" \
            ISSUER="$ISSUER" SUBJECT_AUD="$SUBJECT_AUD" JWKS="$JWKS_INLINE"
    else
        render bench/envoy/ext_authz.yaml.tmpl "$WORK/$1.yaml" LISTEN_PORT="${E_LISTEN[$1]}" ADMIN_PORT="${E_ADMIN[$1]}" \
            AUTHZ_PORT="$2" AUDIENCE="$AUDIENCE" AUTHZ_TLS="$([[ "${3:-}" == tls ]] && echo "$AUTHZ_TLS" || true)"
    fi
}
envoy_cfg envoy_cached "$CACHED_GRPC"
envoy_cfg envoy_noop "$NOOP"
envoy_cfg envoy_jwt_authn jwt
envoy_cfg envoy_cold "$COLD_GRPC"
envoy_cfg envoy_noop_like "$NOOP_LIKE"
envoy_cfg envoy_cached_bare "$BARE_GRPC"
envoy_cfg envoy_cached_mtls "$MTLS_GRPC" tls
envoy_cfg envoy_ceiling "$CEILING"
ENVOY_RUN=()
for name in "${ENVOY_CASES[@]}"; do want "$name" && ENVOY_RUN+=("$name"); done

# ---------------------------------------------------------------------------
# Processes

spawn() { # name cmd... ; detached (own session), pid recorded for cleanup
    local name=$1
    shift
    setsid "$@" </dev/null >"$WORK/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    eval "PID_$name=$pid"
}
alive() { kill -0 "$1" 2>/dev/null || die "$2 exited early: $(tail -5 "$WORK/$2.log")"; }

export RUST_LOG=warn
spawn stsgate_cached "$STSGATE" serve --config "$WORK/stsgate-cached.yaml"
spawn stsgate_cold "$STSGATE" serve --config "$WORK/stsgate-cold.yaml"
spawn stsgate_bare "$STSGATE" serve --config "$WORK/stsgate-bare.yaml"
spawn stsgate_mtls "$STSGATE" serve --config "$WORK/stsgate-mtls.yaml"
spawn noop "$LOADGEN" noop-server --listen "127.0.0.1:$NOOP"
spawn noop_like "$LOADGEN" noop-server --listen "127.0.0.1:$NOOP_LIKE" --header-bytes "$HEADER_BYTES" \
    --metadata-fields "$METADATA_FIELDS"
spawn noop_crypto "$LOADGEN" noop-server --listen "127.0.0.1:$CEILING" --header-bytes "$HEADER_BYTES" \
    --metadata-fields "$METADATA_FIELDS" --crypto "$WORK/idp/token.txt"
for t in "$CACHED_GRPC" "$COLD_GRPC" "$NOOP" "$NOOP_LIKE" "$BARE_GRPC" "$CEILING"; do
    "$LOADGEN" wait-serving --target "127.0.0.1:$t" --timeout 20s || die "gRPC server on $t not SERVING"
done
# The mTLS instance's gRPC listener wants a client certificate: ask its HTTP /readyz.
code=000
for _ in $(seq 1 200); do
    code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$MTLS_HTTP/readyz" || true)"
    [[ "$code" == 200 ]] && break
    sleep 0.1
done
alive "$PID_stsgate_mtls" stsgate_mtls
[[ "$code" == 200 ]] || die "stsgate (mTLS) /readyz answered $code"

BASE_ID=$((1500000000 + ($$ % 1000000) * 8))
n=0
for name in "${ENVOY_RUN[@]}"; do
    if ((PIN)); then
        spawn "$name" taskset -c 1 "$ENVOY" -c "$WORK/$name.yaml" --concurrency 1 --base-id $((BASE_ID + n)) -l warn
    else
        spawn "$name" "$ENVOY" -c "$WORK/$name.yaml" --concurrency 1 --base-id $((BASE_ID + n)) -l warn
    fi
    n=$((n + 1))
done
for name in "${ENVOY_RUN[@]}"; do
    url="http://127.0.0.1:${E_LISTEN[$name]}/"
    code=000
    for _ in $(seq 1 200); do
        code="$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $TOKEN" "$url" || true)"
        [[ "$code" == 200 ]] && break
        sleep 0.1
    done
    pid_var="PID_$name"
    alive "${!pid_var}" "$name"
    [[ "$code" == 200 ]] || die "$name answered $code instead of 200 (log: $(tail -3 "$WORK/$name.log"))"
done
log "all servers up: stsgate cached :$CACHED_GRPC, cold :$COLD_GRPC, mTLS :$MTLS_GRPC, noop :$NOOP, noop-like :$NOOP_LIKE, crypto ceiling :$CEILING; Envoys ${ENVOY_RUN[*]}"

# ---------------------------------------------------------------------------
# Measurement helpers

# Samples CPU inside the measured window (from DELAY s after the load tool starts
# to 0.3 s before its measured part ends): the server, Envoy (or -), the load tool
# and the whole machine. What the machine spent beyond those is "foreign" load
# (other jobs on this box), reported per run so that noisy rounds can be told apart.
sample_cpu() { # out delay server_pid envoy_pid|- load_pid
    local out=$1 delay=$2 spid=$3 epid=$4 lpid=$5
    sleep "$delay"
    local t0 s0 e0=0 l0 m0 t1 s1 e1=0 l1 m1
    t0=$(now_s); m0=$(machine_seconds); s0=$(cpu_seconds "$spid"); l0=$(cpu_seconds "$lpid")
    if [[ "$epid" != - ]]; then e0=$(cpu_seconds "$epid"); fi
    sleep "$WINDOW"
    t1=$(now_s); m1=$(machine_seconds); s1=$(cpu_seconds "$spid"); l1=$(cpu_seconds "$lpid")
    if [[ "$epid" != - ]]; then e1=$(cpu_seconds "$epid"); fi
    python3 - "$t0" "$t1" "$s0" "$s1" "$e0" "$e1" "$l0" "$l1" "$m0" "$m1" "$epid" >"$out" <<'PY'
import sys
import math
t0, t1, s0, s1, e0, e1, l0, l1, m0, m1 = map(float, sys.argv[1:11])
has_envoy = sys.argv[11] != "-"
wall, server, load, machine = t1 - t0, s1 - s0, l1 - l0, m1 - m0
envoy = e1 - e0 if has_envoy else 0.0
print("wall_s", wall)
print("server_cpu_s", server)
print("envoy_cpu_s", envoy if has_envoy else "null")
# A process that ended inside the window reads as nan: no CPU figure then.
print("load_cpu_s", "null" if math.isnan(load) else load)
print("machine_cpu_s", machine)
foreign = machine - server - envoy - load
print("foreign_cores", "null" if math.isnan(foreign) else max(foreign, 0.0) / wall)
PY
}
foreign() { awk '/foreign_cores/ { if ($2 == "null") print "?"; else printf "%.2f", $2 }' "$1"; }

direct() { # round case target server_pid
    local r=$1 c=$2 target=$3 spid=$4 base="$RUNS/r$1-$2"
    want "$c" || return 0
    alive "$spid" "$c"
    "$LOADGEN" grpc --target "127.0.0.1:$target" --token "$TOKEN" --audience "$AUDIENCE" \
        --concurrency "$CONCURRENCY" --channels "$CHANNELS" --duration "${DURATION}s" --warmup "${WARMUP}s" \
        --label "$c" >"$base.json" 2>"$base.err" &
    local lpid=$!
    sample_cpu "$base.cpu" "$DIRECT_DELAY" "$spid" - "$lpid" &
    local sampler=$!
    local recorder=
    if [[ "${PERF:-0}" == 1 ]]; then
        # The server's stacks over the same window as its CPU figure.
        (sleep "$DIRECT_DELAY" && exec perf record -q -F 999 -p "$spid" -o "$base.perf" -- sleep "$WINDOW") \
            >/dev/null 2>"$base.perf.err" &
        recorder=$!
    fi
    wait "$lpid" || { cat "$base.err" >&2; die "loadgen $c failed"; }
    wait "$sampler"
    if [[ -n "$recorder" ]]; then wait "$recorder" || die "perf record of $c failed: $(cat "$base.perf.err")"; fi
    log "round $r $(cat "$base.err") [foreign load $(foreign "$base.cpu") cores]"
}

through_envoy() { # round case server_pid|-
    local r=$1 c=$2 spid=$3 base="$RUNS/r$1-$2"
    want "$c" || return 0
    local epid_var="PID_$c" url="http://127.0.0.1:${E_LISTEN[$c]}/"
    alive "${!epid_var}" "$c"
    local lpid pin=()
    if ((PIN)); then
        pin=(taskset -c 0)
        # Every thread of the ext_authz server onto CPU 0 for this run.
        if [[ "$spid" != - ]]; then taskset -a -p -c 0 "$spid" >/dev/null; fi
    fi
    if [[ "$LOADTOOL" == wrk ]]; then
        "${pin[@]}" wrk -t1 -c"$CONCURRENCY" -d"${WARMUP}s" -H "authorization: Bearer $TOKEN" "$url" >/dev/null
        "${pin[@]}" wrk -t1 -c"$CONCURRENCY" -d"${DURATION}s" --latency -H "authorization: Bearer $TOKEN" "$url" >"$base.wrk" 2>&1 &
        lpid=$!
    else
        "${pin[@]}" oha -z "${WARMUP}s" -c "$CONCURRENCY" --no-tui -H "authorization: Bearer $TOKEN" "$url" >/dev/null
        "${pin[@]}" oha -z "${DURATION}s" -c "$CONCURRENCY" --no-tui --json -H "authorization: Bearer $TOKEN" "$url" >"$base.oha" 2>&1 &
        lpid=$!
    fi
    if [[ "$spid" == - ]]; then # Envoy alone (jwt_authn): it is the "server"
        sample_cpu "$base.cpu" 0.3 "${!epid_var}" - "$lpid" &
    else
        sample_cpu "$base.cpu" 0.3 "$spid" "${!epid_var}" "$lpid" &
    fi
    local sampler=$!
    wait "$lpid" || die "$LOADTOOL $c failed"
    wait "$sampler"
    if ((PIN)) && [[ "$spid" != - ]]; then taskset -a -p -c "$ALL_CPUS" "$spid" >/dev/null; fi
    if [[ "$spid" == - ]]; then echo "server_is_envoy 1" >>"$base.cpu"; fi
    local summary
    if [[ "$LOADTOOL" == wrk ]]; then
        summary="$(grep -E 'Requests/sec|  99%|Non-2xx' "$base.wrk" | tr -s ' ' | tr '\n' ';')"
    else
        summary="$(head -c 200 "$base.oha")"
    fi
    log "round $r $c: $summary [foreign load $(foreign "$base.cpu") cores]"
}

# ---------------------------------------------------------------------------
# Rounds: direct gRPC, then through Envoy, alternating

for r in $(seq 1 "$ROUNDS"); do
    wait_quiet "round $r"
    log "round $r of $ROUNDS"
    direct "$r" direct_cached "$CACHED_GRPC" "$PID_stsgate_cached"
    direct "$r" direct_noop "$NOOP" "$PID_noop"
    direct "$r" direct_noop_like "$NOOP_LIKE" "$PID_noop_like"
    direct "$r" direct_cold "$COLD_GRPC" "$PID_stsgate_cold"
    direct "$r" direct_ceiling "$CEILING" "$PID_noop_crypto"
    direct "$r" direct_cached_bare "$BARE_GRPC" "$PID_stsgate_bare"
    # Right before envoy_cached, so that both pairs (mTLS/plaintext, cached/noop) run back to back.
    through_envoy "$r" envoy_cached_mtls "$PID_stsgate_mtls"
    through_envoy "$r" envoy_cached "$PID_stsgate_cached"
    through_envoy "$r" envoy_noop "$PID_noop"
    through_envoy "$r" envoy_jwt_authn -
    through_envoy "$r" envoy_cold "$PID_stsgate_cold"
    through_envoy "$r" envoy_ceiling "$PID_noop_crypto"
    through_envoy "$r" envoy_noop_like "$PID_noop_like"
    through_envoy "$r" envoy_cached_bare "$PID_stsgate_bare"
done

# How many connections each Envoy opened to its ext_authz server over the whole run
# (and TLS handshakes): Envoy keeps one HTTP/2 connection, so TLS costs no handshakes
# per request. (The curl readiness probe, the warm-ups and the rounds share it.)
for name in "${ENVOY_RUN[@]}"; do
    [[ "$name" == envoy_jwt_authn ]] && continue
    stats="$(curl -s -G --data-urlencode 'filter=^cluster\.authz\.(upstream_cx_total|upstream_rq_total|ssl\.handshake)$' \
        "http://127.0.0.1:${E_ADMIN[$name]}/stats" || true)"
    echo "$name $(echo "$stats" | tr -d ' ' | tr '\n' ' ')"
done >"$RUNS/envoy-upstream.txt"
log "Envoy → ext_authz connections: $(tr '\n' ';' <"$RUNS/envoy-upstream.txt")"

# The load servers are done: stop them so the memory and start-up runs are quiet.
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
sleep 0.5

if want memory; then # a partial run (CASES) skips memory and start-up unless it names `memory`

    # ---------------------------------------------------------------------------
    # Memory: a fresh stsgate, FILL distinct exchanges (one token, FILL audiences)

    rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
    spawn stsgate_rss "$STSGATE" serve --config "$WORK/stsgate-rss.yaml"
    "$LOADGEN" wait-serving --target "127.0.0.1:$RSS_GRPC" --timeout 20s || die "stsgate (rss) not SERVING"
    sleep 0.5
    {
        echo "rss_start_kib $(rss_kib "$PID_stsgate_rss")"
        "$LOADGEN" grpc --target "127.0.0.1:$RSS_GRPC" --token "$TOKEN" --audience-prefix bench-fill- --audiences "$FILL" \
            --count "$FILL" --concurrency 32 --channels 2 --label fill >"$RUNS/fill.json" 2>"$RUNS/fill.err" \
            || { cat "$RUNS/fill.err" >&2; die "fill failed"; }
        sleep 1
        echo "rss_filled_kib $(rss_kib "$PID_stsgate_rss")"
        # The same FILL requests again: all answered from the cache if it kept them.
        "$LOADGEN" grpc --target "127.0.0.1:$RSS_GRPC" --token "$TOKEN" --audience-prefix bench-fill- --audiences "$FILL" \
            --count "$FILL" --concurrency 32 --channels 2 --label refill >"$RUNS/refill.json" 2>"$RUNS/refill.err" \
            || { cat "$RUNS/refill.err" >&2; die "refill failed"; }
        echo "rss_after_hits_kib $(rss_kib "$PID_stsgate_rss")"
        echo "hwm_kib $(awk '/^VmHWM/ {print $2}' "/proc/$PID_stsgate_rss/status")"
    } >"$RUNS/rss.txt"
    log "memory: $(tr '\n' ' ' <"$RUNS/rss.txt"); fill: $(cat "$RUNS/fill.err"); refill: $(cat "$RUNS/refill.err")"
    kill "$PID_stsgate_rss" 2>/dev/null || true
    sleep 0.3

    # ---------------------------------------------------------------------------
    # Start-up to SERVING (local JWKS file), median of 5

    "$LOADGEN" startup --stsgate "$STSGATE" --config "$WORK/stsgate-startup.yaml" --target "127.0.0.1:$START_GRPC" --runs 5 \
        >"$RUNS/startup.json" || die "startup measurement failed"
    log "startup: $(cat "$RUNS/startup.json")"
fi

# ---------------------------------------------------------------------------
# Report

mkdir -p "$(dirname "$REPORT")" "$(dirname "$RAW")"
python3 bench/report.py --work "$WORK" --out "$REPORT" --raw "$RAW" || die "report failed"
log "wrote $REPORT (raw: $RAW)"
if [[ "${PERF:-0}" == 1 ]] && want direct_cold && want direct_ceiling; then
    # Where stsgate cold's CPU per Check goes beside the crypto-ceiling server's, round 1.
    python3 bench/perf_categories.py --runs "$RUNS" --round 1 direct_cold direct_ceiling >"${REPORT%.md}-perf.md" \
        || die "perf categories failed"
    log "wrote ${REPORT%.md}-perf.md"
    cat "${REPORT%.md}-perf.md" >&2
fi
sed -n '/^## \(Targets\|mTLS\)/,/^## Load runs/p' "$REPORT" | head -60 >&2
