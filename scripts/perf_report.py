"""Writes the benchmarks' section of docs/performance.md, and its plots, from docs/perf/*.txt
(the output scripts/run_benchmarks.sh keeps). Run by scripts/perf_report.sh.

Each benchmark file starts with '# command:', '# machine:' and '# date:' lines, then key=value
lines. The section sits between the BEGIN and END markers below in docs/performance.md; everything
else in that file is left as it is.
"""

import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERF = os.path.join(ROOT, "docs", "perf")
DOC = os.path.join(ROOT, "docs", "performance.md")
BEGIN = "<!-- benchmarks: written by scripts/perf_report.sh from docs/perf/*.txt; do not edit -->"
END = "<!-- end of benchmarks -->"


def read(name):
    path = os.path.join(PERF, name + ".txt")
    if not os.path.exists(path):
        return None
    head, rows = {}, []
    for line in open(path):
        line = line.strip()
        if line.startswith("# ") and ":" in line:
            k, v = line[2:].split(":", 1)
            head[k.strip()] = v.strip()
        elif "=" in line:
            row = {}
            for word in line.split():
                if "=" in word:
                    k, v = word.split("=", 1)
                    row[k] = v
            rows.append(row)
    return head, rows


def provenance(head):
    return f"`{head.get('command', '?')}` on {head.get('machine', '?')}, {head.get('date', '?')}"


def table(rows, cols):
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(r.get(c, "") for c in cols) + " |")
    return "\n".join(out)


def plot(name, title, xlabel, ylabel, series, logy=False):
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for label, xs, ys in series:
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(PERF, name + ".png"))
    plt.close(fig)
    return f"![{title}](perf/{name}.png)"


def f(r, k):
    return float(r[k])


def sink_section():
    got = read("sink")
    if not got:
        return "### Sink throughput\n\nNot measured yet (`scripts/run_benchmarks.sh sink`).\n"
    head, rows = got
    modes = [r for r in rows if "mode" in r and "write_when_idle" in r and "sink_rows_per_s" in r]
    last = next((r for r in rows if "idle_over_waiting" in r), {})
    return "\n".join([
        "### Sink throughput: draining a topic, per write mode and batching policy",
        "",
        provenance(head) + ".",
        "",
        table(modes, ["mode", "write_when_idle", "sink_rows_per_s", "detection_rows_per_s"]),
        "",
        f"Written as soon as the writer is idle against batches that wait to fill, same run: "
        f"{last.get('idle_rows_per_s', '?')} against {last.get('waiting_rows_per_s', '?')} rows/s "
        f"(ratio {last.get('idle_over_waiting', '?')}).",
        "",
        *enforcement(rows),
    ])


def enforcement(rows):
    """The store's enforcement (foreign key, rollup) against the same build without the foreign key
    and an older build, in alternating rounds of one run."""
    rounds = [r for r in rows if "round" in r and "build" in r and "sink_rows_per_s" in r]
    if not rounds:
        return []
    last = next((r for r in rows if "fk_over_no_fk" in r), {})
    line = (f"The store's enforcement, alternating rounds: {last.get('fk_rows_per_s', '?')} rows/s with the foreign key "
            f"from `frames` to `frame_keys` against {last.get('no_fk_rows_per_s', '?')} without it (ratio "
            f"{last.get('fk_over_no_fk', '?')})")
    if "current_over_baseline" in last:
        line += (f"; against the build before migration 4 (no foreign key, no rollup) "
                 f"{last.get('baseline_rows_per_s', '?')} rows/s (ratio {last['current_over_baseline']})")
    return [table(rounds, ["round", "build", "foreign_key", "sink_rows_per_s"]), "", line + ".", ""]


def fold_partitions(plan):
    """A plan with its per-partition scans of one shape folded into the first and a count: with
    400 daily partitions they are thousands of lines saying the same."""
    def depth(line):
        return len(line) - len(line.lstrip())

    def shape(block):
        return [re.sub(r"p\d{8}|\b[a-z]_\d+\b|\(cost=[^)]*\)|\(actual[^)]*\)|\d+", "#", line) for line in block]

    out, last, repeats, at = [], None, 0, 0

    def flush():
        if repeats:
            out.append(" " * at + f"... {repeats} more partitions scanned the same way")

    i = 0
    while i < len(plan):
        if re.search(r"->  .* on \w+_p\d{8}", plan[i]):
            j = i + 1
            while j < len(plan) and depth(plan[j]) > depth(plan[i]):
                j += 1
            block = plan[i:j]
            if shape(block) == last:
                repeats += 1
            else:
                flush()
                out.extend(block)
                last, repeats, at = shape(block), 0, depth(plan[i])
            i = j
        else:
            flush()
            out.append(plan[i])
            last, repeats = None, 0
            i += 1
    flush()
    return out


def replay_section():
    got = read("replay_partitions")
    if not got:
        return "### Replays against daily partitions\n\nNot measured yet (`scripts/run_benchmarks.sh replay_partitions`).\n"
    head, rows = got
    drains = [r for r in rows if "pass" in r and "drain_s" in r]
    stores = [r for r in rows if "frames_held" in r]
    last = next((r for r in rows if "many_over_one" in r), {})
    plans = fold_partitions([line.rstrip("\n")[4:] for line in open(os.path.join(PERF, "replay_partitions.txt")) if line.startswith("  | ")])
    return "\n".join([
        "### Replays against daily partitions",
        "",
        provenance(head) + ". A topic of frames stored into a store of one partition and into one of many daily "
        "partitions (each holding a day of two cameras' frames), then replayed into each by a second group: every "
        "message a frame already stored, through the staging merge and its conflict check.",
        "",
        table(stores, ["partitions", "frames_held", "fill_s"]),
        "",
        table(drains, ["partitions", "pass", "drain_s", "sink_cpu_s"]),
        "",
        f"Replay into many partitions over one: {last.get('many_partitions_replay_s', '?')} s against "
        f"{last.get('one_partition_replay_s', '?')} s (ratio {last.get('many_over_one', '?')}; goal at most 2).",
        "",
        "The merge statement's plans (the slowest of a further replay, from auto_explain):",
        "",
        "```",
        *plans,
        "```",
        "",
    ])


def latency_section():
    got = read("live_latency")
    if not got:
        return "### Live camera: capture to row\n\nNot measured yet (`scripts/run_benchmarks.sh live_latency`).\n"
    head, rows = got
    runs = [r for r in rows if "p50_ms" in r]
    last = next((r for r in rows if "bound_ms" in r), {})
    return "\n".join([
        "### Live camera: capture to row",
        "",
        provenance(head) + ". One RTSP camera at 10 fps, `--max-fps 5`, two sinks reading the same topic "
        "side by side; latency is the row's transaction start minus its capture.",
        "",
        table(runs, ["write_when_idle", "frames", "p50_ms", "p99_ms", "max_ms"]),
        "",
        f"Goal: p99 <= one inference + 100 ms = {last.get('bound_ms', '?')} ms "
        f"(mean inference {last.get('inference_ms', '?')} ms).",
        "",
    ])


def fleet_section():
    got = read("fleet")
    if not got:
        return "### Camera fleet\n\nNot measured yet (`scripts/run_benchmarks.sh fleet`).\n"
    head, rows = got
    rows = [r for r in rows if "offered" in r]
    sweep = [r for r in rows if r["sinks"] == "1" and r["partitions"] == "4"]
    seen, uniq = set(), []
    for r in sweep:
        if r["offered"] not in seen:
            seen.add(r["offered"])
            uniq.append(r)
    sweep = sorted(uniq, key=lambda r: f(r, "offered"))
    img1 = plot("fleet_latency", "Capture to commit against offered rate (1 sink, 4 partitions)",
                "offered frames/s", "ms",
                [(q, [f(r, "offered") for r in sweep], [f(r, k) for r in sweep])
                 for q, k in (("p50", "p50_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms"))], logy=True)
    by_parts = {}
    for r in rows:
        if r not in sweep or r["sinks"] != "1":
            by_parts.setdefault(r["partitions"], []).append(r)
    series = []
    for p, rs in sorted(by_parts.items()):
        rs = sorted(rs, key=lambda r: int(r["sinks"]))
        series.append((f"{p} partitions", [int(r["sinks"]) for r in rs], [4 * f(r, "achieved") for r in rs]))
    img2 = plot("fleet_sinks", "Rows/s stored against sinks", "sinks", "rows/s (frames + detections)", series)
    sustained = [r for r in sweep if r["sustained"] == "true"]
    best = max(sustained, key=lambda r: f(r, "offered")) if sustained else None
    return "\n".join([
        "### Camera fleet: capture-to-commit latency and scale",
        "",
        provenance(head) + ". Synthetic cameras (3 people, 17 keypoints a frame) at a scheduled rate; "
        "latency from each frame's scheduled capture to the first 10 ms poll that sees it committed, in "
        "an HdrHistogram after a 5 s warm-up.",
        "",
        table(rows, ["cameras", "fps", "offered", "partitions", "sinks", "achieved", "p50_ms", "p99_ms",
                     "p999_ms", "max_ms", "sustained"]),
        "",
        f"Highest offered rate sustained (achieved >= 98 %, p99 < 1 s) with one sink: "
        f"{best['offered'] + ' frames/s' if best else 'none of those tried'}.",
        "",
        img1,
        "",
        img2,
        "",
    ])


def cameras_section():
    got = read("cameras_per_box")
    if not got:
        return "### Cameras per box\n\nNot measured yet (`scripts/run_benchmarks.sh cameras_per_box`).\n"
    head, rows = got
    rows = [r for r in rows if "variant" in r]
    variants = sorted({r["variant"] for r in rows})
    img = plot("cameras_per_box", "Detected frames/s against live cameras (5 asked of each)", "cameras",
               "detected frames/s",
               [(v, [int(r["cameras"]) for r in rows if r["variant"] == v],
                 [f(r, "detected_fps") for r in rows if r["variant"] == v]) for v in variants]
               + [("asked", sorted({int(r["cameras"]) for r in rows}),
                   [5 * c for c in sorted({int(r["cameras"]) for r in rows})])])
    best = {}
    for r in rows:
        if r["ok"] == "true":
            best[r["variant"]] = max(best.get(r["variant"], 0), int(r["cameras"]))
    summary = ", ".join(f"{v}: {best.get(v, 0)}" for v in variants)
    return "\n".join([
        "### Cameras per box",
        "",
        provenance(head) + ". Live 720p H.264 cameras at 10 fps over RTSP, `max_fps = 5` each, one "
        "detector process, `--output stdout`; latency from capture to the message's line.",
        "",
        table(rows, ["variant", "cameras", "asked_fps", "detected_fps", "dropped_pct", "p50_ms", "p99_ms",
                     "max_ms", "ok"]),
        "",
        f"Most cameras with drops under 1 % and p99 under 1 s: {summary}.",
        "",
        img,
        "",
    ])


def store_section():
    got = read("store_size")
    if not got:
        return "### Store size\n\nNot measured yet (`scripts/run_benchmarks.sh store_size`).\n"
    head, rows = got
    drains = [r for r in rows if "store" in r and "sink_rows_per_s" in r]
    queries = [r for r in rows if "query" in r and "median_ms" in r]
    size = next((r for r in rows if "store_detections" in r), {})
    summary = next((r for r in rows if "large_over_empty" in r), {})
    disk = next((r.get("store_size", "?") for r in rows if "store_size" in r), "?")
    store = int(size.get("store_detections", "0"))
    empty = [f(r, "sink_rows_per_s") for r in drains if r["store"].startswith("empty")]
    large = [f(r, "sink_rows_per_s") for r in drains if r["store"] == "large"]
    img = plot("store_size", "Sink rows/s against store size", "detection rows already stored (millions)",
               "rows/s", [("empty store (before, after)", [0] * len(empty), empty),
                          (f"{store / 1e6:.0f} million detections stored", [store / 1e6] * len(large), large)])
    plans = [line.rstrip("\n")[4:] for line in open(os.path.join(PERF, "store_size.txt")) if line.startswith("  | ")]
    return "\n".join([
        "### Store size",
        "",
        provenance(head) + f". One sink draining the same topic into an empty store (before and after) and into "
        f"one holding {store:,} detection rows ({disk} on disk, daily partitions, 50 cameras over 7 days); "
        "then the two time queries on the large store and one camera's day of `people_per_minute` (the rollup), 5 runs "
        "each under EXPLAIN ANALYZE; then one upkeep pass (`sink maintain`) at a retention of 5 days.",
        "",
        table(drains, ["store", "sink_rows_per_s"]),
        "",
        f"Large over empty: {summary.get('large_over_empty', '?')}. The upkeep pass took {summary.get('pass_s', '?')} s; its "
        f"longest transaction holding a lock on the tables {summary.get('longest_lock_ms', '?')} ms.",
        "",
        table(queries, ["query", "median_ms", "runs_ms"]),
        "",
        img,
        "",
        "The plans (last run of each):",
        "",
        "```",
        *plans,
        "```",
        "",
    ])


def speed_section():
    got = read("vs_ultralytics")
    if not got:
        return "### Against Ultralytics\n\nNot measured yet (`scripts/run_benchmarks.sh vs_ultralytics`).\n"
    head, rows = got
    runs = [r for r in rows if "tool" in r]
    ratios = [(k, v) for r in rows for k, v in r.items() if k.endswith("_over_ultralytics")]
    base = next((r["ultralytics_onnx_fps"] for r in rows if "ultralytics_onnx_fps" in r), "?")
    return "\n".join([
        "### Against Ultralytics",
        "",
        provenance(head) + ". Frames/s on all of `samples/vtest.avi` (795 frames, 768x576), in this order: "
        "Ultralytics' `predict` with the square fp32 ONNX file, the detector with each model (`--output stdout`, "
        "process start to exit), Ultralytics again, then Ultralytics on the PyTorch checkpoint.",
        "",
        table(runs, ["tool", "model", "fps"]),
        "",
        table([{"model": k[: -len("_over_ultralytics")], "ratio": v} for k, v in ratios], ["model", "ratio"]),
        "",
        f"Ratios are the detector's frames/s over the mean of the two Ultralytics ONNX runs ({base} frames/s).",
        "",
    ])


def tracking_section():
    got = read("tracking_cost")
    if not got:
        return "### Tracking and events against the model\n\nNot measured yet (`scripts/run_benchmarks.sh tracking_cost`).\n"
    head, rows = got
    setup = next((r for r in rows if "people" in r), {})
    parts = [r for r in rows if "part" in r]
    last = next((r for r in rows if "tracking_over_model" in r), {})
    spread = next((r for r in rows if "p50_over_p50" in r), {})
    return "\n".join([
        "### Tracking and events against the model",
        "",
        provenance(head) + f". Per frame, in one run, alternated in {setup.get('rounds', '?')} rounds: ONNX Runtime on "
        f"letterboxed `vtest.avi` frames ({setup.get('threads', '?')} threads), and `analytics::ByteTracker` + "
        f"`analytics::Counter` ({setup.get('zones', '?')} zones, {setup.get('lines', '?')} lines) on synthetic frames of "
        f"{setup.get('people', '?')} people with keypoints.",
        "",
        table(parts, ["part", "frames", "p50_us", "p99_us", "mean_us"]),
        "",
        f"Tracking's mean over the model's mean: {last.get('tracking_over_model', '?')} (goal < {last.get('goal', '?')}); "
        f"its p50 and p99 over the model's p50: {spread.get('p50_over_p50', '?')} and {spread.get('p99_over_p50', '?')}.",
        "",
    ])


def main():
    os.makedirs(PERF, exist_ok=True)
    section = "\n".join([BEGIN, "", "## Benchmarks", "",
                         "Regenerate: `scripts/run_benchmarks.sh` (runs them, keeps docs/perf/*.txt), then "
                         "`scripts/perf_report.sh` (this section and the plots).", "",
                         sink_section(), latency_section(), fleet_section(), cameras_section(), store_section(), replay_section(),
                         speed_section(), tracking_section(), END])
    doc = open(DOC).read()
    if BEGIN in doc and END in doc:
        before, rest = doc.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        doc = before + section + after
    else:
        doc = doc.rstrip("\n") + "\n\n" + section + "\n"
    open(DOC, "w").write(doc)
    print(f"wrote {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
