#!/usr/bin/env python3
"""Turns the raw output of scripts/bench.sh into bench/RESULTS.md (and a JSON dump).

Inputs (in --work): meta.txt, criterion/<id>/new/estimates.json, runs/r<N>-<case>.{json,wrk,oha,cpu},
runs/fill.json, runs/refill.json, runs/rss.txt, runs/startup.json, runs/envoy-upstream.txt.
A partial run (scripts/bench.sh with CASES=...) lacks some of them: what is missing is left out.
"""

import argparse
import glob
import json
import os
import re
import statistics
import sys

CRITERION = [
    ("validate", "RS256 subject token, validator only (no cache)"),
    ("rules", "rules::evaluate, 10 rules, the 10th matches"),
    ("mint", "ES256 sign of typical claims (Signer)"),
    ("cache_hit", "Engine::exchange answered from the minted cache"),
    ("check_cached", "AuthzService::decide, cache hit"),
    ("check_cold", "AuthzService::decide, caches disabled (verify + rules + sign)"),
    ("ceiling/rs256_verify_raw", "aws-lc-rs RS256 verify, key parsed once"),
    ("ceiling/es256_sign_raw", "aws-lc-rs ES256 sign, key parsed once"),
    ("ceiling/rs256_verify_jsonwebtoken", "jsonwebtoken::crypto::verify, JWK n/e key (what validate uses)"),
]

CASES = [
    ("direct_cached", "direct gRPC → stsgate, cached exchange"),
    ("direct_noop", "direct gRPC → do-nothing Check server"),
    ("direct_noop_like", "direct gRPC → do-nothing server answering like stsgate (same header and metadata)"),
    ("direct_cold", "direct gRPC → stsgate, cache disabled (verify + sign per call)"),
    ("direct_ceiling", "direct gRPC → do-nothing server answering like stsgate that does the crypto ceiling (RS256 verify + ES256 sign) per Check"),
    ("direct_cached_bare", "direct gRPC → stsgate, cached exchange, `dynamic_metadata: []`"),
    ("envoy_cached", "Envoy ext_authz → stsgate, cached exchange"),
    ("envoy_noop", "Envoy ext_authz → do-nothing server"),
    ("envoy_noop_like", "Envoy ext_authz → do-nothing server answering like stsgate"),
    ("envoy_cached_bare", "Envoy ext_authz → stsgate, cached exchange, `dynamic_metadata: []`"),
    ("envoy_jwt_authn", "Envoy jwt_authn RS256, no JWT cache (native peer)"),
    ("envoy_cold", "Envoy ext_authz → stsgate, cache disabled"),
    ("envoy_ceiling", "Envoy ext_authz → do-nothing server answering like stsgate that does the crypto ceiling per Check"),
    ("envoy_cached_mtls", "Envoy ext_authz → stsgate over mTLS (`grpc_tls`, `caller_identity: mtls`, `callers`), cached exchange"),
]


def read_kv(path):
    out = {}
    if not os.path.exists(path):
        return out
    for line in open(path):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        k, _, v = line.partition(" ")
        out[k] = v
    return out


def read_upstream(path):
    """runs/envoy-upstream.txt: `<case> cluster.authz.<stat>:<value> ...` per line."""
    out = {}
    if not os.path.exists(path):
        return out
    for line in open(path):
        case, *stats = line.split()
        out[case] = {k.rsplit(".", 1)[-1] if "ssl." not in k else "ssl_" + k.rsplit(".", 1)[-1]: int(v)
                     for k, v in (x.split(":", 1) for x in stats if ":" in x)}
    return out


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def duration_us(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text.strip())
    if not m:
        return None
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6}[unit]


def parse_wrk(path):
    text = open(path).read()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", text, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = int(non2xx.group(1)) if non2xx else 0
    if sock:
        errors += sum(int(x) for x in sock.groups())
    if not rps:
        raise SystemExit(f"report: cannot parse {path}:\n{text}")
    return {
        "rps": float(rps.group(1)),
        "p50_us": duration_us(pct.get("50", "")),
        "p90_us": duration_us(pct.get("90", "")),
        "p99_us": duration_us(pct.get("99", "")),
        "errors": errors,
    }


def parse_oha(path):
    data = json.load(open(path))
    s = data.get("summary", {})
    p = data.get("latencyPercentiles", {})
    codes = data.get("statusCodeDistribution", {})
    errors = sum(v for k, v in codes.items() if not str(k).startswith("2")) + sum(data.get("errorDistribution", {}).values())
    sec = lambda k: p.get(k) * 1e6 if p.get(k) is not None else None
    return {"rps": s.get("requestsPerSec"), "p50_us": sec("p50"), "p90_us": sec("p90"), "p99_us": sec("p99"), "errors": errors}


def load_runs(work):
    runs = {}
    for path in sorted(glob.glob(os.path.join(work, "runs", "r*-*.cpu"))):
        base = path[:-4]
        name = os.path.basename(base)
        m = re.match(r"r(\d+)-(.+)$", name)
        rnd, case = int(m.group(1)), m.group(2)
        if os.path.exists(base + ".json"):
            j = json.load(open(base + ".json"))
            r = {"rps": j["rps"], "p50_us": j["p50_us"], "p90_us": j["p90_us"], "p99_us": j["p99_us"],
                 "max_us": j["max_us"], "errors": j["errors"], "tool": "stsgate-loadgen"}
        elif os.path.exists(base + ".wrk"):
            r = parse_wrk(base + ".wrk")
            r["tool"] = "wrk"
        else:
            r = parse_oha(base + ".oha")
            r["tool"] = "oha"
        cpu = read_kv(path)
        wall = num(cpu.get("wall_s"))
        scpu, ecpu = num(cpu.get("server_cpu_s")), num(cpu.get("envoy_cpu_s"))
        if wall and scpu is not None and r["rps"]:
            r["server_cores"] = scpu / wall
            r["server_us_per_req"] = scpu / wall * 1e6 / r["rps"]
        if wall and ecpu is not None and r["rps"]:
            r["envoy_cores"] = ecpu / wall
            r["envoy_us_per_req"] = ecpu / wall * 1e6 / r["rps"]
        if num(cpu.get("foreign_cores")) is not None:
            r["foreign_cores"] = num(cpu.get("foreign_cores"))
        if cpu.get("server_is_envoy"):  # jwt_authn: Envoy was sampled as the server
            for k in ("cores", "us_per_req"):
                if "server_" + k in r:
                    r["envoy_" + k] = r.pop("server_" + k)
        runs.setdefault(case, {})[rnd] = r
    return runs


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs):
    xs = [x for x in xs if x is not None]
    if len(xs) < 2:
        return None
    m = statistics.median(xs)
    return (max(xs) - min(xs)) / m if m else None


def fmt_int(x):
    return "–" if x is None else f"{x:,.0f}"


def fmt_us(x):
    if x is None:
        return "–"
    return f"{x / 1000:.2f} ms" if x >= 1000 else f"{x:.0f} µs"


def fmt_pct(x):
    return "–" if x is None else f"{x * 100:.1f}%"


def fmt_ratio(x):
    return "–" if x is None else f"{x:.3f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--raw")
    ap.add_argument("--foreign-limit", type=float, default=float(os.environ.get("FOREIGN_LIMIT", "0.25")))
    a = ap.parse_args()

    meta = read_kv(os.path.join(a.work, "meta.txt"))
    crit = {}
    for cid, _ in CRITERION:
        p = os.path.join(a.work, "criterion", cid, "new", "estimates.json")
        if os.path.exists(p):
            e = json.load(open(p))["median"]
            crit[cid] = {"median_us": e["point_estimate"] / 1e3,
                         "lo_us": e["confidence_interval"]["lower_bound"] / 1e3,
                         "hi_us": e["confidence_interval"]["upper_bound"] / 1e3}

    runs = load_runs(a.work)
    rounds = sorted({r for c in runs.values() for r in c})

    def quiet(case, r):
        f = runs.get(case, {}).get(r, {}).get("foreign_cores")
        return f is None or f < a.foreign_limit

    def used(case):
        have = [r for r in rounds if r in runs.get(case, {})]
        q = [r for r in have if quiet(case, r)]
        return q if len(q) >= 2 else have

    def series(case, key, all_rounds=False):
        return [runs.get(case, {}).get(r, {}).get(key) for r in (rounds if all_rounds else used(case))]

    def med(case, key):
        return median(series(case, key))

    def per_round(num_case, den_case, key="rps"):
        """[(value, quiet)] per round: both runs of the pair below the foreign-load limit."""
        out = []
        for r in rounds:
            n = runs.get(num_case, {}).get(r, {}).get(key)
            d = runs.get(den_case, {}).get(r, {}).get(key)
            out.append((n / d if n and d else None, quiet(num_case, r) and quiet(den_case, r)))
        return out

    def ratio(num_case, den_case, key="rps"):
        """Median of the per-round ratios (pairs run back to back), over the quiet rounds
        when at least two are quiet, else over all rounds."""
        pr = [(v, q) for v, q in per_round(num_case, den_case, key) if v is not None]
        vals = [v for v, q in pr if q]
        if len(vals) < 2:
            vals = [v for v, _ in pr]
        return median(vals)

    ceiling_us = None
    if "ceiling/rs256_verify_raw" in crit and "ceiling/es256_sign_raw" in crit:
        ceiling_us = crit["ceiling/rs256_verify_raw"]["median_us"] + crit["ceiling/es256_sign_raw"]["median_us"]
    cold_us = med("direct_cold", "server_us_per_req")
    cold_ratio = ceiling_us / cold_us if ceiling_us and cold_us else None
    cold_rounds = [(ceiling_us / runs["direct_cold"][r]["server_us_per_req"] if ceiling_us and runs.get("direct_cold", {}).get(r, {}).get("server_us_per_req") else None,
                    quiet("direct_cold", r)) for r in rounds]
    envoy_cold_us = med("envoy_cold", "server_us_per_req")

    rss = read_kv(os.path.join(a.work, "runs", "rss.txt"))
    fill = json.load(open(os.path.join(a.work, "runs", "fill.json"))) if os.path.exists(os.path.join(a.work, "runs", "fill.json")) else {}
    refill = json.load(open(os.path.join(a.work, "runs", "refill.json"))) if os.path.exists(os.path.join(a.work, "runs", "refill.json")) else {}
    startup = json.load(open(os.path.join(a.work, "runs", "startup.json"))) if os.path.exists(os.path.join(a.work, "runs", "startup.json")) else {}
    rss_mib = num(rss.get("rss_filled_kib")) / 1024 if rss.get("rss_filled_kib") else None
    rss0_mib = num(rss.get("rss_start_kib")) / 1024 if rss.get("rss_start_kib") else None
    fill_n = int(meta.get("fill", "0") or 0)

    targets = []

    def target(name, value, goal_text, ok, how, rounds_text=""):
        targets.append((name, value, goal_text, None if ok is None else ("PASS" if ok else "FAIL"), how, rounds_text))

    def rr(xs):
        return " / ".join(fmt_ratio(v) + ("" if q else "*") for v, q in xs)

    r1 = ratio("envoy_cached", "envoy_noop")
    target("Envoy: cached exchange req/s ÷ do-nothing ext_authz", fmt_ratio(r1), "≥ 0.90", None if r1 is None else r1 >= 0.90,
           "req/s (wrk) of envoy_cached ÷ envoy_noop", rr(per_round("envoy_cached", "envoy_noop")))
    p1 = ratio("envoy_cached", "envoy_noop", "p99_us")
    target("Envoy: cached p99 ÷ do-nothing p99", fmt_ratio(p1), "≤ 1.20", None if p1 is None else p1 <= 1.20,
           "wrk p99 of envoy_cached ÷ envoy_noop", rr(per_round("envoy_cached", "envoy_noop", "p99_us")))
    r2 = ratio("envoy_cached", "envoy_jwt_authn")
    target("Envoy: cached exchange ÷ native jwt_authn (no JWT cache)", fmt_ratio(r2), "≥ 0.85", None if r2 is None else r2 >= 0.85,
           "req/s of envoy_cached ÷ envoy_jwt_authn", rr(per_round("envoy_cached", "envoy_jwt_authn")))
    r3 = ratio("direct_cached", "direct_noop")
    target("Direct gRPC: cached Check/s ÷ do-nothing Check/s", fmt_ratio(r3), "≥ 0.85", None if r3 is None else r3 >= 0.85,
           "Check/s (stsgate-loadgen) of direct_cached ÷ direct_noop", rr(per_round("direct_cached", "direct_noop")))
    target("Cold exchange per busy core ÷ crypto ceiling per core", fmt_ratio(cold_ratio), "≥ 0.80",
           None if cold_ratio is None else cold_ratio >= 0.80,
           (f"ceiling = verify {crit['ceiling/rs256_verify_raw']['median_us']:.1f} µs + sign {crit['ceiling/es256_sign_raw']['median_us']:.1f} µs "
            f"= {ceiling_us:.1f} µs → {1e6 / ceiling_us:,.0f}/s per core; cold = direct_cold req/s ÷ stsgate cores busy "
            f"= 1e6 ÷ {cold_us:.1f} µs CPU per Check = {1e6 / cold_us:,.0f}/s per core; ratio = ceiling µs ÷ cold CPU µs")
           if ceiling_us and cold_us else "missing data", rr(cold_rounds))
    # Issue 17: a cold exchange costs its cryptography plus what any gRPC Check
    # server spends, and little else. The baseline is a server that does
    # exactly that: the do-nothing server answering like stsgate, doing the
    # crypto ceiling in every Check, run right after stsgate cold in each round.
    for kind, cold_case, base_case in [("through Envoy", "envoy_cold", "envoy_ceiling"), ("direct gRPC", "direct_cold", "direct_ceiling")]:
        rounds_cold = per_round(cold_case, base_case, "server_us_per_req")
        cr = ratio(cold_case, base_case, "server_us_per_req")
        c_us, b_us = med(cold_case, "server_us_per_req"), med(base_case, "server_us_per_req")
        target(f"Cold stsgate CPU per Check ({kind}) ÷ CPU per Check of a server doing only the crypto ceiling", fmt_ratio(cr), "≤ 1.15",
               None if cr is None else cr <= 1.15,
               f"{cold_case} {c_us:.1f} µs ÷ {base_case} {b_us:.1f} µs (do-nothing answering like stsgate, plus RS256 verify + ES256 sign per Check)"
               if c_us and b_us else "missing data", rr(rounds_cold))
    # The earlier yardstick, kept for comparison: the ceiling from a tight
    # criterion loop plus the do-nothing server at its own (higher) rate.
    for kind, cold_case, noop_case in [("direct gRPC", "direct_cold", "direct_noop"), ("through Envoy", "envoy_cold", "envoy_noop")]:
        rounds_cold = []
        for r in rounds:
            c = runs.get(cold_case, {}).get(r, {}).get("server_us_per_req")
            n = runs.get(noop_case, {}).get(r, {}).get("server_us_per_req")
            rounds_cold.append((c / (ceiling_us + n) if c and n and ceiling_us else None, quiet(cold_case, r) and quiet(noop_case, r)))
        vals = [v for v, q in rounds_cold if v is not None and q] or [v for v, _ in rounds_cold if v is not None]
        cr = median(vals)
        c_us, n_us = med(cold_case, "server_us_per_req"), med(noop_case, "server_us_per_req")
        target(f"Cold stsgate CPU per Check ({kind}) ÷ (criterion crypto ceiling + do-nothing CPU per Check), the earlier yardstick", fmt_ratio(cr), "",
               None,
               f"{cold_case} {c_us:.1f} µs ÷ ({ceiling_us:.1f} + {noop_case} {n_us:.1f} µs)" if c_us and n_us and ceiling_us else "missing data",
               rr(rounds_cold))
    if ceiling_us and "check_cold" in crit:
        ic = crit["check_cold"]["median_us"] / ceiling_us
        target("In process: `check_cold` ÷ crypto ceiling", fmt_ratio(ic), "≤ 1.10", ic <= 1.10,
               f"criterion check_cold {crit['check_cold']['median_us']:.1f} µs ÷ {ceiling_us:.1f} µs")
    target(f"RSS after {fill_n:,} cached exchanges", "–" if rss_mib is None else f"{rss_mib:.1f} MiB", "≤ 64 MiB",
           None if rss_mib is None else rss_mib <= 64,
           f"VmRSS of a fresh stsgate (started at {rss0_mib:.1f} MiB) after {fill_n:,} distinct audiences for one token"
           if rss0_mib is not None else "missing data")
    st = startup.get("median_ms")
    target("Start-up to SERVING (local JWKS file)", "–" if st is None else f"{st:.0f} ms", "≤ 200 ms",
           None if st is None else st <= 200, "spawn of `stsgate serve` → first grpc.health.v1 SERVING, median of 5",
           " / ".join(f"{x:.0f} ms" for x in startup.get("runs_ms", [])))

    upstream = read_upstream(os.path.join(a.work, "runs", "envoy-upstream.txt"))
    mtls_rows = []
    if "envoy_cached_mtls" in runs and "envoy_cached" in runs:
        rm = ratio("envoy_cached_mtls", "envoy_cached")
        mtls_rows.append(("Envoy: cached over mTLS ÷ cached plaintext (req/s)", fmt_ratio(rm), "≥ 0.90",
                          None if rm is None else ("PASS" if rm >= 0.90 else "FAIL"),
                          "req/s (wrk) of envoy_cached_mtls ÷ envoy_cached", rr(per_round("envoy_cached_mtls", "envoy_cached"))))
        pm = ratio("envoy_cached_mtls", "envoy_cached", "p99_us")
        mtls_rows.append(("Envoy: cached over mTLS p99 ÷ cached plaintext p99", fmt_ratio(pm), "", None,
                          "wrk p99 of envoy_cached_mtls ÷ envoy_cached", rr(per_round("envoy_cached_mtls", "envoy_cached", "p99_us"))))

    L = []
    w = L.append
    w("# stsgate benchmark results")
    w("")
    w(f"Generated by `scripts/bench.sh` on {meta.get('date', '?')} (commit {meta.get('commit', '?')}).")
    w("")
    w(f"- Machine: {meta.get('nproc', '?')} vCPU ({meta.get('cpu', '?')}), {meta.get('mem_gib', '?')} GiB RAM, "
      f"{meta.get('os', '?')}, kernel {meta.get('kernel', '?')}; load average at start {meta.get('loadavg_start', '?')}.")
    w(f"- Versions: {meta.get('rustc', '?')}; Envoy {meta.get('envoy', '?')}; {meta.get('loadtool', '?')}.")
    w(f"- Method: {meta.get('rounds', '?')} alternating rounds; in each, direct gRPC (stsgate-loadgen, "
      f"{meta.get('concurrency', '?')} calls over {meta.get('channels', '?')} HTTP/2 channels, 1 tokio thread, 1 s warm-up, "
      f"{meta.get('duration', '?')} s) then through Envoy (1 worker, `direct_response` route; "
      f"wrk -t1 -c{meta.get('concurrency', '?')} -d{meta.get('duration', '?')}s --latency after a 1 s warm-up), "
      "836-byte-class RS256 bearer token on every request. "
      + ("Through Envoy, Envoy runs alone on CPU 1 and wrk shares CPU 0 with the ext_authz server (taskset); "
         "the direct runs float over all cores. " if meta.get('pin') == '1' else
         "Load client, Envoy and server share the same cores. ")
      + "**Absolute numbers are noisy, the ratios within a round are what count.** Medians of the rounds; "
      "spread = (max − min) ÷ median. CPU per request comes from /proc utime+stime of the process during the measured window. "
      f"Each run also records the machine's CPU spent outside the server, Envoy and the load tool (\"foreign\" load: other jobs on "
      f"this box); runs with ≥ {a.foreign_limit} foreign cores are marked * and left out of the medians and ratios when at least "
      "two quiet rounds remain. A target's value is the median of its per-round ratios (the two runs of a pair are back to back).")
    if meta.get("cases", "all") != "all":
        w(f"- **Partial run**: only the cases {meta['cases'].replace(',', ', ')} (`CASES=`); no memory or start-up part. "
          "The full run is in bench/RESULTS.md.")
    w("")
    # A partial run (CASES) leaves out the targets it did not measure.
    shown = [t for t in targets if not (t[1] == "–" and t[3] is None)]
    if shown:
        w("## Targets (issue 5)")
        w("")
        w("| target | measured | goal | result | per round | how |")
        w("|---|---:|---:|:---:|---|---|")
        for name, value, goal, res, how, rtext in shown:
            w(f"| {name} | {value} | {goal} | {res or 'n/a'} | {rtext} | {how} |")
        w("")
    if mtls_rows:
        w("## mTLS on the gRPC listener (issue 11)")
        w("")
        w("`envoy_cached_mtls` is `envoy_cached` with Envoy's authz cluster speaking TLS (client certificate, ALPN h2) to an "
          "stsgate with `listen.grpc_tls`, `caller_identity: mtls` and a `callers` entry admitting that certificate for `bench-*`; "
          "same rules, cache, metadata and pinning, run right before `envoy_cached` in each round.")
        w("")
        w("| target | measured | goal | result | per round | how |")
        w("|---|---:|---:|:---:|---|---|")
        for name, value, goal, res, how, rtext in mtls_rows:
            w(f"| {name} | {value} | {goal} | {res or 'n/a'} | {rtext} | {how} |")
        w("")
        w("| round | req/s plaintext | req/s mTLS | ratio | p99 plaintext | p99 mTLS | p99 ratio | "
          "Envoy CPU/req plaintext | Envoy CPU/req mTLS | stsgate CPU/req plaintext | stsgate CPU/req mTLS | foreign load (cores) |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        pc, pm = "envoy_cached", "envoy_cached_mtls"
        us = lambda x: "–" if x is None else f"{x:.1f} µs"
        for r in rounds:
            c, m = runs.get(pc, {}).get(r, {}), runs.get(pm, {}).get(r, {})
            if not c and not m:
                continue
            q = "" if quiet(pc, r) and quiet(pm, r) else "*"
            rq = c.get("rps") and m.get("rps") and m["rps"] / c["rps"]
            pq = c.get("p99_us") and m.get("p99_us") and m["p99_us"] / c["p99_us"]
            fl = " / ".join("–" if x.get("foreign_cores") is None else f"{x['foreign_cores']:.2f}" for x in (c, m))
            w(f"| {r}{q} | {fmt_int(c.get('rps'))} | {fmt_int(m.get('rps'))} | {fmt_ratio(rq or None)} | {fmt_us(c.get('p99_us'))} | "
              f"{fmt_us(m.get('p99_us'))} | {fmt_ratio(pq or None)} | {us(c.get('envoy_us_per_req'))} | {us(m.get('envoy_us_per_req'))} | "
              f"{us(c.get('server_us_per_req'))} | {us(m.get('server_us_per_req'))} | {fl} |")
        w(f"| median | {fmt_int(med(pc, 'rps'))} | {fmt_int(med(pm, 'rps'))} | {fmt_ratio(ratio(pm, pc))} | {fmt_us(med(pc, 'p99_us'))} | "
          f"{fmt_us(med(pm, 'p99_us'))} | {fmt_ratio(ratio(pm, pc, 'p99_us'))} | {us(med(pc, 'envoy_us_per_req'))} | "
          f"{us(med(pm, 'envoy_us_per_req'))} | {us(med(pc, 'server_us_per_req'))} | {us(med(pm, 'server_us_per_req'))} | |")
        w("")
        ec, em = med(pc, "envoy_us_per_req"), med(pm, "envoy_us_per_req")
        sc, sm = med(pc, "server_us_per_req"), med(pm, "server_us_per_req")
        if None not in (ec, em, sc, sm):
            w(f"TLS adds {em - ec:+.1f} µs of Envoy CPU and {sm - sc:+.1f} µs of stsgate CPU per request (medians; "
              f"* = a round with ≥ {a.foreign_limit} foreign cores in either run).")
        for case in (pc, pm):
            u = upstream.get(case)
            if u:
                w(f"- `{case}`: {u.get('upstream_cx_total', '?')} connection(s) to the ext_authz server for "
                  f"{u.get('upstream_rq_total', '?'):,} Checks over the whole run"
                  + (f", {u['ssl_handshake']} TLS handshake(s)" if "ssl_handshake" in u else "") + ".")
        w("")
    w("## Load runs (medians)")
    w("")
    w("| case | req/s | spread | p50 | p99 (range) | server CPU/req (cores) | Envoy CPU/req (cores) | errors | foreign load per round (cores) |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for case, desc in CASES:
        if case not in runs:
            continue
        p99s = [x for x in series(case, "p99_us") if x is not None]
        rng = f" ({fmt_us(min(p99s))}–{fmt_us(max(p99s))})" if len(p99s) > 1 else ""
        scpu = med(case, "server_us_per_req")
        score = med(case, "server_cores")
        ecpu = med(case, "envoy_us_per_req")
        ecore = med(case, "envoy_cores")
        errs = sum(x or 0 for x in series(case, "errors", all_rounds=True))
        fl = " / ".join("–" if x is None else f"{x:.2f}" + ("" if x < a.foreign_limit else "*")
                        for x in series(case, "foreign_cores", all_rounds=True))
        w(f"| {desc} | {fmt_int(med(case, 'rps'))} | {fmt_pct(spread(series(case, 'rps')))} | {fmt_us(med(case, 'p50_us'))} | "
          f"{fmt_us(med(case, 'p99_us'))}{rng} | "
          f"{'–' if scpu is None else f'{scpu:.1f} µs ({score:.2f})'} | {'–' if ecpu is None else f'{ecpu:.1f} µs ({ecore:.2f})'} | {errs} | {fl} |")
    w("")
    other = []  # left out when a partial run (CASES) measured none of them
    like = f"{meta.get('header_bytes', '?')}-byte header + {meta.get('metadata_fields', '?')} metadata strings"
    for n, d, label in [("envoy_noop_like", "envoy_noop", f"Envoy do-nothing answering like stsgate ({like}) ÷ do-nothing: the cost of the answer's shape in Envoy"),
                        ("envoy_cached", "envoy_noop_like", "Envoy cached exchange ÷ do-nothing answering like stsgate: what stsgate's own work costs"),
                        ("direct_noop_like", "direct_noop", "direct do-nothing answering like stsgate ÷ do-nothing"),
                        ("direct_cached", "direct_noop_like", "direct cached exchange ÷ do-nothing answering like stsgate"),
                        ("envoy_cached_bare", "envoy_noop", "Envoy cached exchange without dynamic metadata ÷ do-nothing"),
                        ("envoy_cached_bare", "envoy_jwt_authn", "Envoy cached exchange without dynamic metadata ÷ jwt_authn"),
                        ("direct_cached_bare", "direct_noop", "direct cached exchange without dynamic metadata ÷ do-nothing"),
                        ("envoy_noop", "envoy_jwt_authn", "Envoy do-nothing ext_authz ÷ jwt_authn"),
                        ("envoy_cold", "envoy_noop", "Envoy cold exchange ÷ do-nothing"),
                        ("envoy_ceiling", "envoy_noop_like", "Envoy crypto-ceiling server ÷ do-nothing answering alike: the crypto's cost in a server, through Envoy"),
                        ("direct_ceiling", "direct_noop_like", "direct crypto-ceiling server ÷ do-nothing answering alike"),
                        ("direct_cold", "direct_noop", "direct cold ÷ do-nothing")]:
        if ratio(n, d) is not None:
            other.append(f"- {label}: {fmt_ratio(ratio(n, d))} ({rr(per_round(n, d))})")
    noop_us = med("direct_noop", "server_us_per_req")
    if cold_us and noop_us and ceiling_us:
        other.append(f"- The do-nothing server spends {noop_us:.1f} µs of CPU per Check on gRPC/HTTP/2 alone, so even a cold exchange with "
          f"zero JWT overhead could reach at most ceiling ÷ (ceiling + that) = {ceiling_us / (ceiling_us + noop_us):.3f} by the "
          f"per-core definition above; the exchange work itself (cold − do-nothing = {cold_us - noop_us:.1f} µs) is "
          f"{ceiling_us / (cold_us - noop_us):.3f} of the ceiling.")
    if envoy_cold_us and ceiling_us:
        other.append(f"- Cold stsgate CPU per Check through Envoy: {envoy_cold_us:.1f} µs (ceiling ÷ that = {ceiling_us / envoy_cold_us:.3f}).")
    if other:
        w("Other ratios (median of per-round ratios; per round in brackets, * = noisy round):")
        w("")
        L.extend(other)
        w("")
    if crit:
        w("## Criterion (same sitting, one thread, before the load runs)")
        w("")
        w("| bench | median | 95% CI | what |")
        w("|---|---:|---:|---|")
    for cid, desc in CRITERION:
        if cid in crit:
            c = crit[cid]
            w(f"| `{cid}` | {c['median_us']:.2f} µs | {c['lo_us']:.2f}–{c['hi_us']:.2f} | {desc} |")
    if ceiling_us and "check_cold" in crit:
        w("")
        w(f"Crypto ceiling = `rs256_verify_raw` + `es256_sign_raw` = **{ceiling_us:.1f} µs** "
          f"({1e6 / ceiling_us:,.0f} exchanges/s per core). In-process `check_cold` = {crit['check_cold']['median_us']:.1f} µs, "
          f"i.e. {ceiling_us / crit['check_cold']['median_us']:.3f} of the ceiling before any gRPC/HTTP/2 cost; "
          f"the live server adds the tonic/h2 stack on top (direct_cold: {cold_us:.1f} µs CPU per Check)."
          if cold_us else "")
    if crit:
        w("")
    if rss or startup:
        w("## Memory and start-up")
        w("")
    if rss:
        w(f"- Fresh stsgate: {rss0_mib:.1f} MiB RSS. After {fill_n:,} distinct exchanges (one token, audiences "
          f"`bench-fill-000000`…, each a cache miss: rules + ES256 sign, the subject verified once thanks to the validated cache): "
          f"**{rss_mib:.1f} MiB** ({(rss_mib - rss0_mib) * 1048576 / max(fill_n, 1):,.0f} bytes per entry); "
          f"after the same {fill_n:,} requests again: {num(rss.get('rss_after_hits_kib')) / 1024:.1f} MiB; peak {num(rss.get('hwm_kib')) / 1024:.1f} MiB. "
          f"The instance runs with `cache.max_bytes: 1 GiB` so that nothing is evicted.")
        if fill and refill:
            w(f"- Fill pass: {fill.get('rps', 0):,.0f} req/s, {fill.get('errors')} errors; second pass (cache hits): "
              f"{refill.get('rps', 0):,.0f} req/s, {refill.get('errors')} errors, p50 {refill.get('p50_us')} µs vs {fill.get('p50_us')} µs.")
    if startup:
        w(f"- Start-up to SERVING: median {startup.get('median_ms')} ms (runs: {', '.join(str(x) for x in startup.get('runs_ms', []))} ms).")
    if rss or startup:
        w("")
    w("## Reproduce")
    w("")
    w("```sh")
    w("scripts/bench.sh                      # everything; writes this file")
    w("CASES=envoy_cached,envoy_cached_mtls scripts/bench.sh  # only the mTLS pair (issue 11); writes bench/results/partial.md")
    w("cargo bench --bench exchange          # the criterion part only")
    w("cargo build --release --features loadgen --bin stsgate-loadgen")
    w("target/release/stsgate-loadgen --help # noop-server, grpc, mint-subjects, wait-serving, startup")
    w("```")
    w("")
    open(a.out, "w").write("\n".join(L))

    if a.raw:
        json.dump({"meta": meta, "criterion": crit, "runs": runs, "rss": rss, "fill": fill, "refill": refill,
                   "startup": startup, "envoy_upstream": upstream,
                   "targets": [{"name": t[0], "value": t[1], "goal": t[2], "result": t[3]} for t in targets + mtls_rows]},
                  open(a.raw, "w"), indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
