#!/usr/bin/env bash
# Renders bench/dashboard.png: the Grafana dashboard's panels (deploy/grafana/
# stsgate-dashboard.json), each query run by a real Prometheus (Debian's
# prometheus package) that scraped a real stsgate every second through a short
# scripted run. Not part of the tests; the README shows the picture.
#
#   scripts/dashboard-snapshot.sh      # ~3 minutes once built
#
# The run, on loopback ports: 40 s of cached exchanges (stsgate-loadgen, 16 calls
# in flight); 40 s where one token in ten is hostile (tampered, unknown key,
# another issuer, not a JWT) over 2000 subjects (cold exchanges); a reload that
# succeeds, one that fails (a broken file), and 30 s of the first load again.
# Env: OUT (default bench/dashboard.png), KEEP_WORK=1.
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO="$(cd -- "$SCRIPT_DIR/.." && pwd -P)"
cd "$REPO"
OUT="${OUT:-bench/dashboard.png}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
die() { echo "dashboard-snapshot: $*" >&2; exit 1; }

command -v prometheus >/dev/null || die "prometheus is missing (Debian package prometheus)"
PLOT="$REPO/.tools/plot"
if [[ ! -f "$PLOT/.installed" ]]; then
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --disable-pip-version-check --quiet --no-input \
        --target "$PLOT" matplotlib==3.10.8 numpy==2.3.5
    touch "$PLOT/.installed"
fi
cargo build --release --quiet --bin stsgate
cargo build --release --quiet --features loadgen --bin stsgate-loadgen
STSGATE="$TARGET_DIR/release/stsgate"
LOADGEN="$TARGET_DIR/release/stsgate-loadgen"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ "${KEEP_WORK:-0}" == 1 ]] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

read -r GRPC HTTP PROM <<<"$(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')"

ISSUER="https://idp.snapshot.example"
"$LOADGEN" mint-subjects --out "$WORK/idp" --issuer "$ISSUER" --aud mesh-gateway --count 2000 >/dev/null
"$LOADGEN" mint-subjects --out "$WORK/other" --issuer "https://idp.other.example" --aud mesh-gateway --count 1 >/dev/null
"$LOADGEN" mint-subjects --out "$WORK/expired" --issuer "$ISSUER" --aud mesh-gateway --count 1 --ttl 1s >/dev/null
# Each mint-subjects call makes a new key: the "expired" token is also signed by
# a key the IdP never published (unknown kid), "other" comes from an untrusted issuer.
head -n 1 "$WORK/idp/tokens.txt" > "$WORK/cached.txt"
python3 - "$WORK" <<'PY'
import sys, random
work = sys.argv[1]
good = open(f"{work}/idp/tokens.txt").read().split()
other = open(f"{work}/other/token.txt").read().strip()
expired = open(f"{work}/expired/token.txt").read().strip()
random.seed(7)
lines = []
for i, t in enumerate(good):
    if i % 10 == 9:
        bad = random.choice([t[:-4] + ("AAAA" if not t.endswith("AAAA") else "BBBB"), other, expired, "not-a-jwt"])
        lines.append(bad)
    else:
        lines.append(t)
open(f"{work}/mixed.txt", "w").write("\n".join(lines) + "\n")
PY

cat > "$WORK/stsgate.yaml" <<YAML
listen: { grpc: "127.0.0.1:$GRPC", http: "127.0.0.1:$HTTP" }
issuer: https://sts.snapshot.example
signing:
  keys: [{ kid: snap-es256, alg: ES256, ephemeral: true }]
trusted_issuers:
  - { issuer: "$ISSUER", jwks_file: "$WORK/idp/idp-jwks.json", algorithms: [RS256], audiences: [mesh-gateway] }
ext_authz: { actor: { mode: none }, default_audience: bench-api }
rules:
  - name: bench
    match: { issuers: ["$ISSUER"], audiences: ["bench-*"] }
    grant: { scopes: ["orders.*", profile, email], max_lifetime: 5m }
YAML
cat > "$WORK/prometheus.yml" <<YAML
global: { scrape_interval: 1s, evaluation_interval: 1s }
scrape_configs:
  - job_name: stsgate
    static_configs: [{ targets: ["127.0.0.1:$HTTP"] }]
YAML

RUST_LOG=warn "$STSGATE" serve --config "$WORK/stsgate.yaml" >"$WORK/stsgate.out" 2>"$WORK/stsgate.log" &
STS_PID=$!
PIDS+=("$STS_PID")
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="127.0.0.1:$PROM" --log.level=warn 2>"$WORK/prometheus.log" &
PIDS+=($!)
"$LOADGEN" wait-serving --target "127.0.0.1:$GRPC" --timeout 20s >/dev/null
START="$(date +%s)"
sleep 5

load() { # token-file seconds
    "$LOADGEN" grpc --target "127.0.0.1:$GRPC" --token-file "$1" --audience bench-api --concurrency 16 \
        --channels 2 --duration "${2}s" --warmup 0s --max-errors 1000000000 >/dev/null 2>&1 || true
}
echo "dashboard-snapshot: load (cached) ..."
load "$WORK/cached.txt" 40
echo "dashboard-snapshot: load (10% hostile, many subjects) ..."
load "$WORK/mixed.txt" 40
echo "dashboard-snapshot: a good reload, a broken one, load again ..."
kill -HUP "$STS_PID"
sleep 2
cp "$WORK/stsgate.yaml" "$WORK/stsgate.good.yaml"
echo "rules: [" >> "$WORK/stsgate.yaml"
kill -HUP "$STS_PID"
sleep 2
load "$WORK/cached.txt" 30
sleep 5
END="$(date +%s)"

PYTHONPATH="$PLOT" python3 "$SCRIPT_DIR/dashboard_snapshot.py" \
    --prometheus "http://127.0.0.1:$PROM" --dashboard deploy/grafana/stsgate-dashboard.json \
    --start "$START" --end "$END" --out "$OUT"
echo "dashboard-snapshot: wrote $OUT"
