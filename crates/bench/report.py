#!/usr/bin/env python3
"""Writes BENCHMARKS.md (and the scaling plot, an SVG drawn by hand: no matplotlib) from the
raw results of scripts/bench.sh (`BENCH name=value unit`, `META key=value`, `MISSING text`).
Never edit BENCHMARKS.md by hand: rerun `make bench` (or this script on the kept results)."""
import argparse
import math
import os
import re

# Targets of issues 2-5. `ours`/`peer` list candidate keys (first present wins), so that a
# bench that names a figure slightly differently is still found.
TARGETS = [
    # issue, figure, ours, peer, kind, threshold
    ("#2", "durable appends, 64 concurrent appenders (store bench)",
     ["append_strict_64", "store_append_c64_events_per_sec"], None, ">=", 150_000),
    ("#2", "durable appends c64 vs one fdatasync per event (same disk, same run)",
     ["append_strict_64", "store_append_c64_events_per_sec"],
     ["fsync_per_event", "disk_fdatasync_per_sec"], "ratio>=", 30),
    ("#2", "read_all with checksums verified",
     ["read_all", "store_read_all_events_per_sec"], None, ">=", 2_000_000),
    ("#2", "open (recover + index) a 1M-event log (store bench; quick mode: 200k)",
     ["open_1000k_ms", "open_200k_ms"], None, "<=", 1000),
    ("#2", "index memory per event",
     ["index_bytes_per_event"], None, "<=", 64),
    ("#3", "fold on one core, JSON decoding included",
     ["fold_events_per_sec", "projections_fold_events_per_sec"], None, ">=", 1_000_000),
    ("#3", "as-of regional summary p99, 1M-event log (fold bench; quick mode: 100k)",
     ["asof_region_p99_ms"], None, "<=", 50),
    ("#3", "as-of regional summary over HTTP (at_position, p99, bench log)",
     ["asof_position_c64_p99_ms"], None, "<=", 50),
    ("#3", "as-of regional summary over HTTP (as_of time, p99, bench log)",
     ["asof_time_c64_p99_ms"], None, "<=", 50),
    ("#3", "live views resident per incident",
     ["live_bytes_per_incident"], None, "<=", 2048),
    ("#4", "HTTP single-event appends, 64 connections, file store vs pgbench inserts",
     ["http_append_file_c64_events_per_sec"], ["pg_insert_c64_rows_per_sec"], "ratio>=", 2.5),
    ("#5", "HTTP single-event appends, 64 connections, PostgreSQL store vs pgbench inserts",
     ["http_append_pg_c64_events_per_sec"], ["pg_insert_c64_rows_per_sec"], "ratio>=", 1.5),
    ("#5", "PostgreSQL store appends, 64 concurrent appenders vs pgbench inserts (pg store bench)",
     ["pg_store_append_c64"], ["pgbench_insert_c64"], "ratio>=", 1.5),
    ("#4", "bulk import over HTTP (POST /v1/events)", ["http_import_events_per_sec"], None, ">=", 300_000),
    ("#4", "bulk import over HTTP vs PostgreSQL COPY FROM",
     ["http_import_events_per_sec"], ["pg_copy_from_rows_per_sec"], "ratio>=", 4),
    ("#4", "incidentlog import", ["cli_import_events_per_sec"], None, ">=", 300_000),
    ("#4", "incidentlog import vs PostgreSQL COPY FROM",
     ["cli_import_events_per_sec"], ["pg_copy_from_rows_per_sec"], "ratio>=", 4),
    ("#4", "incidentlog replay vs PostgreSQL COPY TO STDOUT",
     ["replay_events_per_sec"], ["pg_copy_to_rows_per_sec"], "ratio>=", 3),
    ("#4", "GET /v1/regions/{code} p99, 64 connections, bench log",
     ["region_c64_p99_ms"], None, "<=", 2),
]

SCALING_ROWS = [
    ("import (incidentlog import)", "scale_import_s_", "s"),
    ("open (serve start to listening)", "scale_open_s_", "s"),
    ("replay", "scale_replay_s_", "s"),
    ("verify", "scale_verify_s_", "s"),
    ("server resident memory after open", "scale_rss_mib_", "MiB"),
    ("log size on disk", "scale_log_bytes_", "bytes"),
    ("GET /v1/regions/{code} p50 (8 conns)", "region_{n}_p50_ms", "ms"),
    ("GET /v1/regions/{code} p99 (8 conns)", "region_{n}_p99_ms", "ms"),
    ("windowed summary p99 (8 conns)", "region_window_{n}_p99_ms", "ms"),
    ("as-of summary (at_position) p50", "asof_position_{n}_p50_ms", "ms"),
    ("as-of summary (at_position) p99", "asof_position_{n}_p99_ms", "ms"),
    ("as-of summary (as_of time) p99", "asof_time_{n}_p99_ms", "ms"),
    ("all regions (GET /v1/regions) p99", "regions_all_{n}_p99_ms", "ms"),
]


def parse(path):
    bench, units, meta, missing, status = {}, {}, {}, [], []
    if not path or not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("BENCH "):
                body = line[6:]
                kv, _, unit = body.partition(" ")
                k, _, v = kv.partition("=")
                try:
                    bench[k] = float(v)
                    units[k] = unit
                except ValueError:
                    pass
            elif line.startswith("META "):
                # One or more `key=value` pairs; a value runs until the next ` key=`.
                for k, v in re.findall(r"(\w+)=(.*?)(?=\s+\w+=|$)", line[5:]):
                    meta[k] = v
            elif line.startswith("MISSING "):
                missing.append(line[8:])
            elif line.startswith("STATUS "):
                status.append(line[7:])
    return {"bench": bench, "units": units, "meta": meta, "missing": missing, "status": status}


def fmt(v):
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def first(bench, keys):
    for k in keys or []:
        if k in bench:
            return k, bench[k]
    return None, None


def guess_unit(key):
    if key.endswith("_per_sec"):
        return "events/s"
    if key.endswith("_ms"):
        return "ms"
    if key.endswith("_s"):
        return "s"
    if "bytes" in key:
        return "bytes"
    return ""


def targets_table(r):
    b = r["bench"]
    out = ["| issue | figure | ours | peer | ratio | target | met |", "|---|---|---:|---:|---:|---|---|"]
    for issue, figure, ours_keys, peer_keys, kind, thr in TARGETS:
        ok_key, ours = first(b, ours_keys)
        pk_key, peer = first(b, peer_keys)
        unit = r["units"].get(ok_key, "") if ok_key else guess_unit(ours_keys[0])
        ratio = None
        if ours is not None and peer:
            ratio = ours / peer if kind.startswith("ratio") or peer_keys else None
        if kind == ">=":
            target = f"≥ {fmt(thr)} {unit}".strip()
            met = None if ours is None else ours >= thr
        elif kind == "<=":
            target = f"≤ {fmt(thr)} {unit}".strip()
            # A latency of 0 is a run that timed nothing (no answer succeeded), not a pass.
            met = None if ours is None else (0 < ours <= thr)
        else:
            target = f"≥ {thr}× peer"
            met = None if ratio is None else ratio >= thr
        peer_s = "—" if peer is None else f"{fmt(peer)} {r['units'].get(pk_key, '')}".strip() + f" (`{pk_key}`)"
        ours_s = "not measured" if ours is None else f"{fmt(ours)} {unit}".strip() + f" (`{ok_key}`)"
        ratio_s = "—" if ratio is None else f"{ratio:.2f}×"
        met_s = "not measured" if met is None else ("**met**" if met else "**NOT met**")
        out.append(f"| {issue} | {figure} | {ours_s} | {peer_s} | {ratio_s} | {target} | {met_s} |")
    return "\n".join(out)


def all_figures(r):
    out = ["| figure | value | unit |", "|---|---:|---|"]
    for k in sorted(r["bench"]):
        out.append(f"| `{k}` | {fmt(r['bench'][k])} | {r['units'].get(k, '')} |")
    return "\n".join(out)


def sizes_of(s):
    return sorted({int(k.rsplit("_", 1)[1]) for k in s["bench"] if k.startswith("scale_open_s_")})


def human(n):
    if n >= 1_000_000:
        return f"{n / 1_000_000:g}M"
    if n >= 1_000:
        return f"{n / 1_000:g}k"
    return str(n)


def scaling_table(s):
    sizes = sizes_of(s)
    b = s["bench"]
    out = ["| figure | " + " | ".join(f"{human(n)} events" for n in sizes) + " |",
           "|---|" + "---:|" * len(sizes)]
    for label, key, unit in SCALING_ROWS:
        cells = []
        for n in sizes:
            k = key.replace("{n}", str(n)) if "{n}" in key else f"{key}{n}"
            v = b.get(k)
            if v is not None and unit == "bytes":
                cells.append(f"{v / 1e6:,.0f} MB")
            else:
                cells.append("—" if v is None else f"{fmt(v)} {unit}")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def svg_plot(s, path):
    """Two log-log panels: times (replay, open, import) and resident memory against log size."""
    sizes = sizes_of(s)
    b = s["bench"]
    W, H, PAD_L, PAD_R, PAD_T, PAD_B = 900, 380, 70, 20, 40, 55
    pw = (W - 30) / 2
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
             'font-family="Helvetica, Arial, sans-serif" font-size="12">',
             f'<rect width="{W}" height="{H}" fill="white"/>']

    def panel(x0, title, series, ylabel):
        xs = [n for n in sizes]
        ys = [v for _, pts, _ in series for v in pts if v is not None and v > 0]
        if not xs or not ys:
            return
        lx0, lx1 = math.log10(min(xs)), math.log10(max(xs))
        if lx1 - lx0 < 1e-9:
            lx0, lx1 = lx0 - 0.5, lx1 + 0.5
        ly0, ly1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
        if ly1 == ly0:
            ly1 += 1
        left, right, top, bottom = x0 + PAD_L, x0 + pw - PAD_R, PAD_T, H - PAD_B

        def px(n):
            return left + (math.log10(n) - lx0) / (lx1 - lx0) * (right - left)

        def py(v):
            return bottom - (math.log10(v) - ly0) / (ly1 - ly0) * (bottom - top)

        parts.append(f'<text x="{(left + right) / 2}" y="22" text-anchor="middle" font-size="14" font-weight="bold">{title}</text>')
        parts.append(f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#333"/>')
        for e in range(ly0, ly1 + 1):
            y = py(10 ** e)
            parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#ddd"/>')
            label = f"{10 ** e:,.0f}" if e >= 0 else f"{10 ** e:g}"
            parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
        for n in xs:
            x = px(n)
            parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#eee"/>')
            parts.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{human(n)}</text>')
        parts.append(f'<text x="{(left + right) / 2}" y="{H - 12}" text-anchor="middle">events in the log (log scale)</text>')
        parts.append(f'<text transform="translate({x0 + 16},{(top + bottom) / 2}) rotate(-90)" text-anchor="middle">{ylabel}</text>')
        for i, (name, pts, color) in enumerate(series):
            coords = [(px(n), py(v)) for n, v in zip(xs, pts) if v is not None and v > 0]
            if not coords:
                continue
            parts.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>'
                         % (color, " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)))
            for x, y in coords:
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"/>')
            ly = top + 16 + i * 16
            parts.append(f'<line x1="{left + 10}" y1="{ly - 4}" x2="{left + 28}" y2="{ly - 4}" stroke="{color}" stroke-width="2"/>')
            parts.append(f'<text x="{left + 34}" y="{ly}">{name}</text>')

    panel(0, "Time against log size", [
        ("replay", [b.get(f"scale_replay_s_{n}") for n in sizes], "#1f77b4"),
        ("open (serve start to listening)", [b.get(f"scale_open_s_{n}") for n in sizes], "#d62728"),
        ("import", [b.get(f"scale_import_s_{n}") for n in sizes], "#2ca02c"),
    ], "seconds (log scale)")
    panel(pw + 30, "Server resident memory against log size", [
        ("RSS after open", [b.get(f"scale_rss_mib_{n}") for n in sizes], "#9467bd"),
    ], "MiB (log scale)")
    parts.append("</svg>")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts) + "\n")


def machine(r):
    m = r["meta"]
    bench = r["bench"]
    rows = [("cores", m.get("cores")), ("memory", m.get("memory_gib") and f"{m.get('memory_gib')} GiB"), ("CPU", m.get("cpu")),
            ("disk sync rate (one ~300-byte write + fdatasync per op)",
             f"{fmt(bench.get('disk_fdatasync_per_sec'))} syncs/s" if "disk_fdatasync_per_sec" in bench else None),
            ("filesystem", m.get("filesystem")), ("kernel", m.get("kernel")), ("rustc", m.get("rustc")),
            ("date (UTC)", m.get("date")), ("commit", m.get("git")), ("command", f"`{m.get('command', '')}`"),
            ("mode", ("quick" if m.get("quick") == "1" else "full") + f", bench log of {m.get('events')} events"),
            ("PostgreSQL synchronous_commit", m.get("pg_synchronous_commit")),
            ("run time", m.get("duration_s") and f"{m.get('duration_s')} s")]
    return "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows if v])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench")
    ap.add_argument("--scaling")
    ap.add_argument("--out", required=True)
    ap.add_argument("--svg")
    a = ap.parse_args()
    r = parse(a.bench)
    s = parse(a.scaling)
    doc = ["# Benchmarks", "",
           "Generated by `make bench` (`scripts/bench.sh`, then `crates/bench/report.py`) from the raw results in",
           "`crates/bench/results/`. Do not edit by hand. Everything runs on one machine over loopback, ours",
           "and the peer in the same run: PostgreSQL 15 (`fsync=on`, `synchronous_commit=on`) from",
           "`scripts/with-postgres.sh`, fed the very same event rows.", ""]
    if r:
        quick = r["meta"].get("quick") == "1"
        doc += ["## Machine", "", machine(r), ""]
        if quick:
            doc += ["> **Quick mode**: a small log and short loops, to check that the tooling works. The figures",
                    "> below are not the project's measurements; run `make bench` for those.", ""]
        doc += ["## Targets", "",
                "Every performance target of issues 2-5: ours, the peer's in the same run, the ratio, the target.",
                "\"Bench log\" means the synthetic log of this run (see Machine: mode).", "",
                targets_table(r), ""]
        if r["missing"]:
            doc += ["Not measured in this run:", ""] + [f"- {m}" for m in r["missing"]] + [""]
        doc += ["## How each figure is measured", "",
                "- **Disk sync rate**: `incidentlog-load fsync`, one ~300-byte write + `fdatasync` per op, one writer, 3 s, in the bench's temp dir.",
                "- **HTTP single-event appends**: `incidentlog-load append`, 64 keep-alive HTTP/1.1 connections, each request a new incident with one",
                "  `IncidentReported` (~370 bytes), answered after fsync (strict durability). **Peer**: `pgbench -M prepared -c 64 -j 2` running one",
                "  prepared `INSERT` of the same event row per transaction (prepared as an application would: the default simple",
                "  protocol parses every insert and made the peer ~25% slower here) into an `events` table with the same uniqueness rules (`event_id`,",
                "  `(incident_id, stream_version)`), `synchronous_commit=on`. Ours (file store) and pgbench run in alternating rounds",
                "  (3 of 10 s each; 1 of 4 s in quick mode) and each side's median round is reported; every round's figure is in",
                "  `crates/bench/results/bench.txt` (`*_r1_*`, `*_r2_*`, ...). Request bodies come from 16 templates per connection",
                "  whose ids are renewed per request, so the load generator spends its CPU on the connection, not on building JSON.",
                "- **Bulk import**: the synthetic log (`incidentlog-load gen`: ~30 ISO 3166-2 regions, casualty updates from several sources,",
                "  claims, denials, assessments, corrections, retractions) posted as NDJSON bodies of 16 MiB to `POST /v1/events`, and",
                "  `incidentlog import` of the same file. **Peer**: `psql \\copy ... FROM` of the same events as COPY text rows.",
                "  `incidentlog import` (into a fresh data directory each time) and COPY FROM (into the emptied table) run in",
                "  alternating rounds (3; 1 in quick mode), each side's median round reported (`cli_import_r*`, `pg_copy_from_r*`).",
                "  The HTTP import posts one body at a time, waiting for each answer.",
                "  `cli_reimport_events_per_sec`: `incidentlog import` of the same file again into the log it just made (every line",
                "  an idempotent repeat; checked to append nothing); no target, no peer.",
                "- **Replay**: `incidentlog replay` of that log (wall time of the process). **Peer**: `COPY events TO STDOUT`",
                "  of the same rows. Each side warmed once, then alternating rounds (3; 1 in quick mode), each side's median",
                "  round reported (`replay_r*`, `pg_copy_to_r*` in `crates/bench/results/bench.txt`).",
                "- **Query latency**: `incidentlog-load get` on the imported log: `/v1/regions/{code}` cycling over the regions at",
                "  64 connections (3 rounds of 10 s, the median round's p99 reported); windowed (`from`/`to`) at 8; as-of",
                "  (`at_position` = half the log, `as_of` = the `recorded_at` of that event) and `/v1/regions` one request at a time.",
                "  Nothing is appended meanwhile, so after the first request of each distinct query (region, window, position) the",
                "  answers come from the summary cache (live entries are dropped at every append; past positions never change):",
                "  these figures are the cost of answering, not of computing a summary. Computing one is the fold bench's",
                "  `asof_region_p99_ms` (a regional summary as of a position of the 1M-event views, on one thread).",
                "- **Store / fold benches**: `cargo bench -p incidentlog-store --bench store`, `cargo bench -p incidentlog-projections --bench fold`",
                "  (and `--bench pg` for the PostgreSQL store), their own BENCH lines. The fold bench folds the synthetic log into",
                "  a projection reserved for the log's length first, as every rebuild does (`rebuild_views`: start-up, `replay`,",
                "  `export`); best of 3 folds.", ""]
        doc += ["## Every figure of the run", "", all_figures(r), ""]
        if r["status"]:
            doc += ["HTTP status counts of the load runs:", "", "```"] + r["status"] + ["```", ""]
    if s and sizes_of(s):
        doc += ["## Scaling", "",
                f"`make bench-scaling` (`scripts/bench.sh --scaling`), run on {s['meta'].get('date', '?')}"
                f" ({s['meta'].get('cores', '?')} cores, {s['meta'].get('memory_gib', '?')} GiB). Each size: a fresh data dir filled by",
                "`incidentlog import`, then `replay`, `verify`, a server start (open = start to `listening`), its resident memory,",
                "and summary latencies.", "",
                scaling_table(s), "", "![replay time and resident memory against log size](proto-docs/scaling.svg)", ""]
        if a.svg:
            svg_plot(s, a.svg)
    with open(a.out, "w", encoding="utf-8") as f:
        f.write("\n".join(doc).rstrip() + "\n")


if __name__ == "__main__":
    main()
