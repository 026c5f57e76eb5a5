#!/usr/bin/env python3
"""Where a server's CPU per Check goes, by category, beside another server's
(issue 17): `scripts/bench.sh` with PERF=1 records each direct gRPC run with
`perf record`; this splits each recorded server's CPU per Check (measured in
the same run from /proc) by the share of perf samples in each category of
code, and prints a Markdown table of the two servers side by side.

    python3 bench/perf_categories.py --runs WORK/runs --round 1 direct_cold direct_ceiling

Categories go by symbol name: the cryptography (aws-lc), the kernel, the
HTTP/2 and gRPC stack (h2, hyper, tonic, tower, http), tokio, prost, the
allocator (mimalloc), the C library (memcpy, memset, glibc's malloc for
aws-lc), stsgate's own functions, and the rest (the Rust standard library
and the small crates stsgate calls, whose time is mostly stsgate's).
"""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

CATEGORIES = [
    "cryptography (aws-lc)",
    "kernel",
    "HTTP/2 and gRPC (h2, hyper, tonic, tower)",
    "stsgate's own code",
    "allocator (mimalloc)",
    "C library (memcpy, memset, aws-lc's malloc)",
    "tokio",
    "prost",
    "other (Rust std, serde_json, base64, memchr, arc-swap, …)",
]

CRYPTO = re.compile(r"aws_lc|nistz256|bignum|^bn_|^ec_|^ecdsa|^rsa|^sha\d|^pkey_|^evp_|^rand_bytes|^ctr_drbg|^x25519|ed25519", re.I)
STACK = re.compile(r"^<?(h2|hyper|hyper_util|tonic|tonic_prost|tower|tower_service|http|http_body|http_body_util|bytes)::")


def category(dso: str, kind: str, sym: str) -> str:
    # Generic impls print as `<h2::... as ...>`: judge by the implementing type.
    bare = sym.lstrip("<")
    if kind == "k" or dso.startswith("[kernel"):
        return "kernel"
    if CRYPTO.search(bare):
        return "cryptography (aws-lc)"
    if bare.startswith("mi_") or bare.startswith("_mi_"):
        return "allocator (mimalloc)"
    if dso.startswith("libc") or dso.startswith("libm") or bare.startswith("__mem"):
        return "C library (memcpy, memset, aws-lc's malloc)"
    if STACK.match(sym):
        return "HTTP/2 and gRPC (h2, hyper, tonic, tower)"
    if bare.startswith("tokio::"):
        return "tokio"
    if bare.startswith("prost::") or bare.startswith("tonic_prost"):
        return "prost"
    if "stsgate::" in sym and "authorization_server" not in sym:
        return "stsgate's own code"
    return CATEGORIES[-1]


def shares(perf_file: Path) -> dict:
    """Share of samples (0..1) in each category."""
    out = subprocess.run(
        ["perf", "report", "-i", str(perf_file), "--no-children", "--sort", "dso,sym", "-g", "none", "--stdio"],
        capture_output=True, text=True, check=True,
    ).stdout
    got = dict.fromkeys(CATEGORIES, 0.0)
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)", line)
        if m:
            got[category(m.group(2), m.group(3), m.group(4).strip())] += float(m.group(1)) / 100
    return got


def us_per_check(runs: Path, name: str) -> float:
    """Server CPU per Check in µs, as bench/report.py computes it."""
    cpu = dict(line.split(None, 1) for line in (runs / f"{name}.cpu").read_text().splitlines() if line.strip())
    rps = json.loads((runs / f"{name}.json").read_text())["rps"]
    return float(cpu["server_cpu_s"]) / float(cpu["wall_s"]) * 1e6 / rps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True, help="bench.sh's WORK/runs folder")
    ap.add_argument("--round", default="1")
    ap.add_argument("case", help="e.g. direct_cold")
    ap.add_argument("baseline", help="e.g. direct_ceiling")
    a = ap.parse_args()
    rows = []
    for case in (a.case, a.baseline):
        name = f"r{a.round}-{case}"
        perf = a.runs / f"{name}.perf"
        if not perf.exists():
            print(f"perf_categories: no {perf} (run bench.sh with PERF=1)", file=sys.stderr)
            return 1
        us = us_per_check(a.runs, name)
        rows.append((us, {k: v * us for k, v in shares(perf).items()}))
    (us_a, a_cat), (us_b, b_cat) = rows
    print(f"| CPU per Check, µs | {a.case} | {a.baseline} | difference |")
    print("|---|---:|---:|---:|")
    for k in sorted(CATEGORIES, key=lambda k: -(a_cat[k] - b_cat[k])):
        print(f"| {k} | {a_cat[k]:.1f} | {b_cat[k]:.1f} | {a_cat[k] - b_cat[k]:+.1f} |")
    print(f"| **all** | **{us_a:.1f}** | **{us_b:.1f}** | **{us_a - us_b:+.1f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
