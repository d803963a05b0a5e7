#!/usr/bin/python3
"""Draw switchd's Grafana dashboard from recorded scrapes, without Grafana.

Usage: plot-dashboard.py DASHBOARD.json SCRAPES.jsonl OUT.png

SCRAPES.jsonl holds one JSON object per scrape: {"t": seconds, "instance": node name,
"text": the /metrics body} (target/release/dashboard writes it). Every panel of the
dashboard is drawn where its gridPos puts it, each query evaluated over the scrapes with
the small subset of PromQL the dashboard uses: a metric name with label matchers, rate()
over a window, sum by (...), a factor, and histogram_quantile(). Anything else is an error,
so the picture cannot silently differ from the dashboard. Series that stay at zero all
along are not drawn (Grafana would draw them flat). Needs python3-matplotlib.
"""

import json
import re
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.gridspec import GridSpec  # noqa: E402

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def load(path):
    """{(name, frozenset(labels)): [(t, value)]}, instance added as a label."""
    series = defaultdict(list)
    t0 = None
    for line in open(path):
        scrape = json.loads(line)
        t0 = scrape["t"] if t0 is None else t0
        t = scrape["t"] - t0
        for row in scrape["text"].splitlines():
            m = SAMPLE.match(row)
            if not m or row.startswith("#"):
                continue
            labels = dict(LABEL.findall(m.group(2) or ""))
            labels["instance"] = scrape["instance"]
            series[(m.group(1), frozenset(labels.items()))].append((t, float(m.group(3))))
    return series


def select(series, name, matchers):
    want = dict(LABEL.findall(matchers or ""))
    return {
        labels: points
        for (n, labels), points in series.items()
        if n == name and all(dict(labels).get(k) == v for k, v in want.items())
    }


def rate(points, window):
    # As Prometheus does: from the earliest sample inside the window to the latest, so a
    # series younger than the window still has a rate.
    out = []
    for i, (t, v) in enumerate(points):
        inside = [(pt, pv) for pt, pv in points[:i] if pt >= t - window]
        if inside:
            pt, pv = inside[0]
            if v >= pv:
                out.append((t, (v - pv) / (t - pt)))
    return out


def group(per_series, by):
    sums = defaultdict(lambda: defaultdict(float))
    for labels, points in per_series.items():
        key = frozenset((k, v) for k, v in labels if k in by)
        for t, v in points:
            sums[key][t] += v
    return {k: sorted(v.items()) for k, v in sums.items()}


def quantile(q, buckets):
    """Prometheus' histogram_quantile over {le: value} at one instant."""
    bounds = sorted(buckets.items(), key=lambda kv: float(kv[0]))
    total = bounds[-1][1] if bounds else 0
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for le, count in bounds:
        if count >= rank:
            if le == "+Inf":
                return prev_bound
            b = float(le)
            return prev_bound + (b - prev_bound) * (rank - prev_count) / max(count - prev_count, 1e-12)
        prev_bound, prev_count = float(le), count
    return prev_bound


def evaluate(expr, series, window):
    expr = expr.replace("$__rate_interval", "%ds" % window)
    m = re.fullmatch(r"histogram_quantile\(([\d.]+), sum by \(le\) \(rate\((\w+)\[(\d+)([sm])\]\)\)\)", expr)
    if m:
        w = int(m.group(3)) * (60 if m.group(4) == "m" else 1)
        rates = {l: rate(p, w) for l, p in select(series, m.group(2), None).items()}
        by_le = group(rates, {"le"})
        instants = sorted({t for pts in by_le.values() for t, _ in pts})
        out = []
        for t in instants:
            b = {dict(k)["le"]: dict(pts).get(t, 0.0) for k, pts in by_le.items()}
            v = quantile(float(m.group(1)), b)
            if v is not None:
                out.append((t, v))
        return {frozenset(): out}
    m = re.fullmatch(r"sum by \(([\w, ]+)\) \(rate\((\w+)(?:\{(.*)\})?\[(\d+)([sm])\]\)\)(?: \* (\d+))?", expr)
    if m:
        w = int(m.group(4)) * (60 if m.group(5) == "m" else 1)
        factor = float(m.group(6) or 1)
        rates = {l: rate(p, w) for l, p in select(series, m.group(2), m.group(3)).items()}
        by = {s.strip() for s in m.group(1).split(",")}
        return {k: [(t, v * factor) for t, v in pts] for k, pts in group(rates, by).items()}
    m = re.fullmatch(r"(\w+)(?:\{(.*)\})?", expr)
    if m:
        return dict(select(series, m.group(1), m.group(2)))
    sys.exit(f"plot-dashboard: cannot evaluate {expr!r}: extend evaluate() or simplify the panel")


SCALE = {"bps": (1e-6, "Mbit/s"), "s": (1e3, "ms"), "percentunit": (100, "%"), "pps": (1, "frames/s"), "bytes": (1, "bytes")}


def main():
    dashboard, scrapes, out = sys.argv[1:4]
    d = json.load(open(dashboard))
    series = load(scrapes)
    times = sorted({p[0] for pts in series.values() for p in pts})
    step = min(b - a for a, b in zip(times, times[1:])) if len(times) > 1 else 1
    window = max(4 * round(step), 4)  # Grafana's $__rate_interval: four scrape intervals
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in d["panels"])
    fig = plt.figure(figsize=(18, rows * 0.5))
    grid = GridSpec(rows, 24, figure=fig, hspace=3.0, wspace=3.0)
    for p in d["panels"]:
        g = p["gridPos"]
        ax = fig.add_subplot(grid[g["y"]:g["y"] + g["h"], g["x"]:g["x"] + g["w"]])
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        factor, label = SCALE.get(unit, (1, ""))
        for target in p["targets"]:
            for labels, pts in sorted(evaluate(target["expr"], series, window).items(), key=lambda kv: sorted(kv[0])):
                # All-zero series (every drop reason is exported, most stay at zero) are
                # left out of the picture and its legend.
                if not pts or not any(v for _, v in pts):
                    continue
                legend = re.sub(r"\{\{(\w+)\}\}", lambda m: dict(labels).get(m.group(1), ""), target.get("legendFormat", ""))
                ax.plot([t for t, _ in pts], [v * factor for _, v in pts], label=legend.strip(), linewidth=1)
        ax.set_title(p["title"], fontsize=9, loc="left")
        ax.set_ylabel(label, fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left")
    fig.suptitle(f"{d['title']}: {len(times)} scrape instants over {times[-1]:.0f} s, seconds on the x axis", fontsize=10)
    fig.savefig(out, dpi=80, bbox_inches="tight")


if __name__ == "__main__":
    main()
