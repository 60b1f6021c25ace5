#!/usr/bin/env python3
# Draws the servers of one scripts/bench.sh run side by side as SVG bar charts, from the run's
# JSON rows (examples/bench.rs --json): latency.svg (fan-out p50/p99), saturation.svg
# (deliveries/s at saturation) and memory.svg (KiB per idle connection). Standard library only.
#
#   python3 scripts/charts.py RESULTS_DIR OUT_DIR   # prints the path of every chart written
#   python3 scripts/charts.py --self-test           # synthetic rows, checks the output
#
# Rows with an "error" field (and servers absent at a point) are drawn as "n/a"; a chart with
# no data at all is not written.
import glob
import json
import math
import os
import sys
import tempfile
import xml.etree.ElementTree as ET
from html import escape

# A fixed colour per known server, so a server looks the same in every chart and every run.
KNOWN = ["smolchat", "smolchat-raw", "tt-peer", "go-hub", "bun", "smolchat-store"]
PALETTE = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#d62728", "#8c564b", "#e377c2", "#7f7f7f"]
W, H, LEFT, RIGHT, TOP, BOTTOM = 960, 500, 90, 20, 140, 410  # TOP/BOTTOM: the plot's y range


def load(results_dir):
    rows = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.lstrip().startswith("{"):
                    try:
                        rows.append(json.loads(line))
                    except ValueError as e:
                        print(f"charts.py: {path}: {e}", file=sys.stderr)
    return rows


def servers_of(rows):
    seen = [r["server"] for r in rows if isinstance(r.get("server"), str)]
    return [s for s in KNOWN if s in seen] + list(dict.fromkeys(s for s in seen if s not in KNOWN))


def colours(rows):
    extra = iter(PALETTE[len(KNOWN):] * 4)
    return {s: PALETTE[KNOWN.index(s)] if s in KNOWN else next(extra) for s in servers_of(rows)}


def num(v):
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3g}"


def plural(n, word):
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def tick(v):
    return f"{v:,.0f}" if v == int(v) else f"{v:g}"


def text(x, y, s, size=12, anchor="middle", fill="#222", rotate=False, weight="normal"):
    at = f'transform="translate({x:.1f},{y:.1f}) rotate(-90)"' if rotate else f'x="{x:.1f}" y="{y:.1f}"'
    return (f'<text {at} font-size="{size}" text-anchor="{anchor}" fill="{fill}" '
            f'font-weight="{weight}">{escape(s)}</text>')


def chart(title, subtitle, ylabel, groups, bars, cells, cols, source, log=False, legend=(), foot=""):
    """groups: [(key, label)]; bars: [(server, pale)] per group; cells[(key, server, pale)]:
    (value, flagged, tooltip, note inside the bar). Returns the SVG text."""
    values = [c[0] for c in cells.values()] + [1e-6]  # (a linear chart of zeros still has a scale)
    if log:
        values = [v for v in values if v > 1e-6]
        lo, hi = 10 ** math.floor(math.log10(min(values) / 2)), 10 ** math.ceil(math.log10(max(values)))
        ticks = [m * 10 ** e for e in range(round(math.log10(lo)), round(math.log10(hi)) + 1) for m in (1, 2, 5)]
        ticks = [t for t in ticks if t <= hi * 1.001]
        y = lambda v: BOTTOM - (math.log10(v / lo)) / math.log10(hi / lo) * (BOTTOM - TOP)
    else:
        step = 10 ** math.floor(math.log10(max(values) / 5))
        step *= next(m for m in (1, 2, 2.5, 5, 10) if max(values) / (step * m) <= 6)
        ticks = [i * step for i in range(math.ceil(max(values) / step) + 1)]
        y = lambda v: BOTTOM - v / ticks[-1] * (BOTTOM - TOP)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           text(W / 2, 26, title, 17, weight="bold"), text(W / 2, 46, subtitle, 12, fill="#555")]
    x = LEFT  # legend: one swatch per server, then the extra items (e.g. p50 / p99)
    for name, fill, opacity in [(s, cols[s], 1) for s in dict.fromkeys(s for s, _ in bars)] + list(legend):
        out.append(f'<rect x="{x}" y="62" width="14" height="14" fill="{fill}" fill-opacity="{opacity}" '
                   f'stroke="{fill}"/>')
        out.append(text(x + 20, 74, name, 13, "start"))
        x += 40 + 7.5 * len(name)
    for t in ticks:  # grid and y axis; on a log scale the 2s and 5s between the decades are fainter
        minor = log and round(t / 10 ** math.floor(math.log10(t) + 1e-9)) != 1
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
                   f'stroke="{"#eee" if minor else "#ddd"}"/>')
        out.append(text(LEFT - 6, y(t) + 4, tick(t), 10 if minor else 11, "end", "#999" if minor else "#444"))
    out.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{BOTTOM}" stroke="#444"/>')
    out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{BOTTOM}" y2="{BOTTOM}" stroke="#444"/>')
    out.append(text(20, (TOP + BOTTOM) / 2, ylabel, 12, rotate=True, fill="#444"))
    gw = (W - LEFT - RIGHT) / len(groups)
    bw = min(90, gw * 0.8 / len(bars))
    for gi, (key, label) in enumerate(groups):
        x0 = LEFT + gi * gw + (gw - bw * len(bars)) / 2
        out.append(text(LEFT + (gi + 0.5) * gw, BOTTOM + 20, label, 12))
        for bi, (server, pale) in enumerate(bars):
            bx, cx = x0 + bi * bw, x0 + (bi + 0.5) * bw
            cell = cells.get((key, server, pale))
            if cell is None:
                out.append(text(cx + (4 if bw < 30 else 0), BOTTOM - 6, "n/a", 10, "start" if bw < 30 else "middle",
                                "#888", rotate=bw < 30))
                continue
            v, flagged, tip, note = cell
            top = y(max(v, 0))  # an RSS that shrank is a bar of height 0 with its value on it
            out.append(f'<rect x="{bx + 1:.1f}" y="{top:.1f}" width="{bw - 2:.1f}" height="{BOTTOM - top:.1f}" '
                       f'fill="{cols[server]}" fill-opacity="{0.4 if pale else 1}" stroke="{cols[server]}">'
                       f'<title>{escape(tip)}</title></rect>')
            s = num(v) + (" !" if flagged else "")
            if len(s) * 6.5 > bw:  # too wide for the bar: write it upwards
                out.append(text(cx + 4, top - 4, s, 11, "start", rotate=True))
            else:
                out.append(text(cx, top - 5, s, 11))
            if note and len(note) * 6 < bw and BOTTOM - top > 20:  # e.g. the rate behind the value
                out.append(text(cx, BOTTOM - 7, note, 10, fill="white"))
    if foot:
        out.append(text(LEFT, H - 34, foot, 11, "start", "#a00"))
    out.append(text(LEFT, H - 14, f"Generated by scripts/charts.py from {source}", 10, "start", "#888"))
    out.append("</svg>\n")
    return "\n".join(out)


def good(r, *keys):
    return "error" not in r and all(isinstance(r.get(k), (int, float)) for k in keys)


def latency(rows, cols, source):
    rows = [r for r in rows if r.get("mode") == "fanout"]
    groups, cells, foot = {}, {}, ""
    for r in rows:
        if not good(r, "clients", "senders", "rate", "p50_us", "p99_us") or r["p50_us"] <= 0:
            continue
        key = (r["clients"], r["senders"], r["rate"])
        groups[key] = f"{r['clients']:,} clients × {plural(r['senders'], 'sender')} × {r['rate']:g}/s"
        flagged = bool(r.get("lost") or r.get("disconnected"))
        foot = foot or (flagged and "! messages lost or clients disconnected in that row: see the Fan-out table")
        for q, pale in (("p50", False), ("p99", True)):
            us = r[f"{q}_us"]
            tip = f"{r['server']}, {groups[key]}: {q} {us:,} µs, lost {r.get('lost')}, server CPU {r.get('server_cpu_pct')}%"
            cells[key, r["server"], pale] = (us / 1000, flagged, tip, "")
    if not cells:
        return None
    bars = [(s, pale) for s in servers_of(rows) for pale in (False, True)]
    return chart("Fan-out latency (one room, 64-byte messages)", "p50 (solid) and p99 (pale) per server; lower is better",
                 "latency, ms (log scale)", list(groups.items()), bars, cells, cols, source, log=True,
                 legend=[("p50", "#666", 1), ("p99", "#666", 0.4)], foot=foot)


def saturation(rows, cols, source):
    rows = [r for r in rows if r.get("mode") == "saturate"]
    groups, cells, limit = {}, {}, ""
    for r in rows:
        if not good(r, "clients", "senders", "best_deliveries_per_s"):
            continue
        key = (r["clients"], r["senders"])
        groups[key] = f"{r['clients']:,} clients × {plural(r['senders'], 'sender')}"
        limit = f", p99 ≤ {r['p99_limit_ms']:g} ms" if isinstance(r.get("p99_limit_ms"), (int, float)) else limit
        tip = f"{r['server']}: {r['best_deliveries_per_s']:,.0f} deliveries/s at {r.get('best_rate')}/s per sender"
        rate = f"{r['best_rate']:g}/s/sender" if isinstance(r.get("best_rate"), (int, float)) else ""
        cells[key, r["server"], False] = (r["best_deliveries_per_s"], False, tip, rate)
    if not cells:
        return None
    return chart("Throughput at saturation", f"highest step with no loss, no disconnect{limit}; higher is better",
                 "deliveries per second", list(groups.items()), [(s, False) for s in servers_of(rows)], cells, cols,
                 source)


def memory(rows, cols, source):
    rows = [r for r in rows if r.get("mode") == "idle"]
    groups, cells = {}, {}
    for r in rows:
        if not good(r, "clients", "rss_per_conn_kib"):
            continue
        groups[r["clients"]] = f"{r['clients']:,} idle connections"
        tip = f"{r['server']}, {r['clients']:,} idle: {r['rss_per_conn_kib']} KiB per connection"
        cells[r["clients"], r["server"], False] = (r["rss_per_conn_kib"], False, tip, "")
    if not cells:
        return None
    return chart("Memory per idle connection", "growth of the server's RSS divided by the connections; lower is better",
                 "KiB per connection", sorted(groups.items()), [(s, False) for s in servers_of(rows)], cells, cols,
                 source)


def main(results_dir, out_dir):
    rows = load(results_dir)
    source = os.path.relpath(results_dir)
    cols, source = colours(rows), os.path.abspath(results_dir) if source.startswith("..") else source
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, draw in (("latency.svg", latency), ("saturation.svg", saturation), ("memory.svg", memory)):
        svg = draw(rows, cols, source)
        if svg is not None:
            path = os.path.join(out_dir, name)
            with open(path, "w", encoding="utf-8") as f:
                f.write(svg)
            written.append(path)
    return written


def self_test():
    rows = [{"mode": "fanout", "server": s, "clients": n, "senders": k, "rate": 100.0, "p50_us": p, "p99_us": 3 * p,
             "lost": lost, "disconnected": 0}
            for s, p in (("smolchat", 600), ("tt-peer", 550), ("go-hub", 500), ("bun", 450))
            for n, k, lost in ((100, 10, 0), (1000, 10, 5 if s == "go-hub" else 0))]
    rows += [{"mode": "fanout", "server": "smolchat-raw", "clients": 0, "error": "bench exited with 1"},
             {"mode": "idle", "server": "smolchat", "clients": 1000, "rss_per_conn_kib": 6.4},
             {"mode": "idle", "server": "go-hub", "clients": 1000, "rss_per_conn_kib": 17.27},
             {"mode": "idle", "server": "tt-peer", "clients": 1000, "rss_per_conn_kib": -0.5},
             {"mode": "idle", "server": "bun", "clients": 1000, "rss_per_conn_kib": 1.85},
             {"mode": "saturate", "server": "smolchat", "clients": 1000, "senders": 10, "error": "boom"}]
    with tempfile.TemporaryDirectory() as d:
        for i, r in enumerate(rows):
            with open(os.path.join(d, f"{i:02d}.json"), "w") as f:
                f.write(json.dumps(r) + "\n")
        written = [os.path.basename(p) for p in main(d, os.path.join(d, "out"))]
        assert written == ["latency.svg", "memory.svg"], written  # no saturation data: no chart
        svg = {n: open(os.path.join(d, "out", n), encoding="utf-8").read() for n in written}
    for s in svg.values():
        ET.fromstring(s)  # well-formed
    lat = svg["latency.svg"]
    assert "log scale" in lat and "n/a" in lat and " !" in lat and "1,000 clients × 10 senders × 100/s" in lat
    assert lat.count('fill="#2ca02c"') == 1 and "smolchat-raw" in lat  # errored server: legend only
    for s in svg.values():  # smolchat's, go-hub's and bun's colours are the same in every chart
        assert 'fill="#1f77b4"' in s and 'fill="#9467bd"' in s and 'fill="#d62728"' in s and ">bun<" in s
    assert "17.3" in svg["memory.svg"] and "6.40" in svg["memory.svg"] and "1.85" in svg["memory.svg"]
    # bun's bars come last, after the four servers known before it (the legend's order)
    assert lat.index(">go-hub<") < lat.index(">bun<")
    print("charts.py: self-test passed")


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        self_test()
    elif len(sys.argv) == 3:
        for written_path in main(sys.argv[1], sys.argv[2]):
            print(written_path)
    else:
        print("usage: charts.py RESULTS_DIR OUT_DIR | --self-test", file=sys.stderr)
        sys.exit(2)
