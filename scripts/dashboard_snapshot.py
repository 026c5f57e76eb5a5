"""Draws the dashboard's panels from a Prometheus that scraped stsgate.

Each panel's queries are taken from the dashboard JSON as they are, with the
Grafana variables filled in ($instance: all, $__rate_interval: 5s for a 1 s
scrape), and run against Prometheus's range API; the figure lays the panels
out on the dashboard's own 24-column grid.
"""
import argparse
import json
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def query_range(base, expr, start, end, step):
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{q}", timeout=30) as r:
        doc = json.load(r)
    if doc.get("status") != "success":
        raise SystemExit(f"query failed: {expr}: {doc}")
    return doc["data"]["result"]


def legend(fmt, labels):
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out if "{{" not in out else fmt.split("{{")[0].strip() or "value"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--dashboard", required=True)
    ap.add_argument("--start", type=int, required=True)
    ap.add_argument("--end", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    dash = json.load(open(a.dashboard))
    panels = dash["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(18, rows * 0.42), dpi=80)
    fig.suptitle(f"{dash['title']}: a scripted run (cached load, 10% hostile tokens with cold exchanges, "
                 "a good and a failed reload)", fontsize=12, y=0.91)
    grid = fig.add_gridspec(rows, 24, hspace=2.6, wspace=1.2, top=0.88)
    for p in panels:
        g = p["gridPos"]
        ax = fig.add_subplot(grid[g["y"]:g["y"] + g["h"] - 1, g["x"]:g["x"] + g["w"]])
        ax.set_title(p["title"], fontsize=10)
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        drawn = 0
        for t in p["targets"]:
            expr = t["expr"].replace("$__rate_interval", "5s").replace("$instance", ".*")
            for series in query_range(a.prometheus, expr, a.start, a.end, 1):
                xs = [float(v[0]) - a.start for v in series["values"]]
                ys = [float(v[1]) for v in series["values"]]
                if unit == "s":
                    ys = [y * 1e3 for y in ys]
                ax.plot(xs, ys, label=legend(t.get("legendFormat", ""), series["metric"]), linewidth=1.2)
                drawn += 1
        ax.set_xlabel("seconds", fontsize=8)
        ax.tick_params(labelsize=8)
        if unit:
            ax.set_ylabel({"s": "ms", "reqps": "per second", "percentunit": "share", "d": "days"}.get(unit, unit),
                          fontsize=8)
        if drawn:
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data in this run", ha="center", va="center", transform=ax.transAxes, fontsize=9)
        ax.grid(alpha=0.3)
    fig.savefig(a.out, bbox_inches="tight")


if __name__ == "__main__":
    main()
