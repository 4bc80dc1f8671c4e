#!/usr/bin/env python3
"""Turns a bench/results/<timestamp>.json into the targets verdict, markdown tables and a plot.

    bench/.venv/bin/python bench/report.py bench/results/<timestamp>.json

rewrites the generated part of docs/performance.md (between the BEGIN/END GENERATED markers)
and docs/performance-latency.png. bench.py calls the same functions at the end of a run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BEGIN = "<!-- BEGIN GENERATED (bench/report.py) -->"
END = "<!-- END GENERATED -->"
TARGETS = ["direct", "nginx", "floor", "ai-http", "ai-grpc", "litellm"]
NAMES = {"direct": "direct (fake upstream)", "nginx": "nginx proxy",
         "floor": "hyper floor (bare Rust proxy)", "ai-http": "ai-api HTTP",
         "ai-grpc": "ai-api gRPC", "litellm": "LiteLLM proxy"}


def rounds_of(results: dict, scenario: str, target: str, c: int) -> list[dict]:
    return [r for r in results.get("runs", [])
            if r["scenario"] == scenario and r["target"] == target and r["concurrency"] == c]


def find(results: dict, scenario: str, target: str, c: int) -> dict | None:
    """The run of `target`, or with several interleaved rounds (`--rounds`) its median round
    by req/s (the lower middle one for an even count), so one slow or fast spell of the
    machine does not decide a comparison."""
    runs = sorted(rounds_of(results, scenario, target, c), key=lambda r: r.get("rps") or 0.0)
    return runs[(len(runs) - 1) // 2] if runs else None


def pick_c(results: dict, scenario: str, targets: list[str], preferred: int) -> int | None:
    """`preferred` if every target has a run there, else the highest such concurrency."""
    cs = set()
    for r in results.get("runs", []):
        if r["scenario"] == scenario:
            cs.add(r["concurrency"])
    ok = sorted(c for c in cs if all(find(results, scenario, t, c) for t in targets))
    if preferred in ok:
        return preferred
    below = [c for c in ok if c <= preferred]
    return (below or ok or [None])[-1]


def lat(r: dict | None, key: str, field: str = "latency_ms") -> float | None:
    if not r or not r.get(field):
        return None
    return r[field].get(key)


def valid(*runs: dict | None) -> bool:
    return all(r is not None and r.get("valid") for r in runs)


def evaluate(results: dict) -> list[dict]:
    rows: list[dict] = []

    def add(name, goal, measured, passed, ok, detail=""):
        if passed is None:
            verdict = "missing"
        elif not ok:
            verdict = "invalid (errors)"
        else:
            verdict = "pass" if passed else "FAIL"
        rows.append({"target": name, "goal": goal, "measured": measured, "result": verdict,
                     "detail": detail})

    def throughput(label, top, bottom, goal, minimum, x_fmt, bottom_fmt):
        """A throughput ratio at c=64: `top`'s req/s over `bottom`'s, at least `minimum`."""
        c = pick_c(results, "chat", [top, bottom], 64)
        t, b = find(results, "chat", top, c), find(results, "chat", bottom, c)
        if t and b and b.get("rps"):
            x = t["rps"] / b["rps"]
            # each round's own ratio (runs of one round ran back to back)
            rb = {r.get("round"): r for r in rounds_of(results, "chat", bottom, c)}
            per = [r["rps"] / rb[r.get("round")]["rps"]
                   for r in sorted(rounds_of(results, "chat", top, c),
                                   key=lambda r: r.get("round") or 0)
                   if rb.get(r.get("round"), {}).get("rps")]
            detail = (f"; rounds {', '.join(f'{p:{x_fmt}}x' for p in per)}"
                      if len(per) > 1 else "")
            add(f"{label} (c={c})", goal, f"{x:{x_fmt}}x ({t['rps']:.0f} vs "
                f"{b['rps']:{bottom_fmt}} req/s{detail})", x >= minimum, valid(t, b))
        else:
            add(f"{label} (c=64)", goal, "not measured", None, False)

    throughput("HTTP throughput vs LiteLLM", "ai-http", "litellm", ">= 100x", 100, ".0f", ".1f")
    throughput("HTTP throughput vs nginx", "ai-http", "nginx", ">= 0.8x", 0.8, ".2f", ".0f")

    # not a target: where the bare hyper proxy (bench/floor) sits between nginx and ai-api
    c = pick_c(results, "chat", ["ai-http", "floor", "nginx"], 64)
    a, fl, n = (find(results, "chat", t, c) for t in ("ai-http", "floor", "nginx"))
    if a and fl and n and fl.get("rps") and n.get("rps"):
        rows.append({"target": f"for reference (c={c}): hyper floor vs nginx; ai-api HTTP vs floor",
                     "goal": "–", "measured": f"floor {fl['rps'] / n['rps']:.2f}x nginx "
                     f"({fl['rps']:.0f} req/s); ai-api {a['rps'] / fl['rps']:.2f}x floor",
                     "result": "info" if valid(a, fl, n) else "invalid (errors)", "detail": ""})

    # added latency at c=1
    c = pick_c(results, "chat", ["ai-http", "nginx", "direct"], 1)
    a, n, d = (find(results, "chat", t, c) for t in ("ai-http", "nginx", "direct"))
    if a and n and d and None not in (lat(a, "p50"), lat(n, "p50"), lat(d, "p50")):
        aa, na = lat(a, "p50") - lat(d, "p50"), lat(n, "p50") - lat(d, "p50")
        add(f"added latency p50 (c={c})", "<= 1.5x nginx's",
            f"{aa * 1000:.0f} µs vs nginx {na * 1000:.0f} µs"
            + (f" ({aa / na:.2f}x)" if na > 0 else ""),
            aa <= 1.5 * max(na, 0.0), valid(a, n, d))
    else:
        add("added latency p50 (c=1)", "<= 1.5x nginx's", "not measured", None, False)

    # p99 under load
    c = pick_c(results, "chat", ["ai-http", "nginx"], 64)
    a, n = find(results, "chat", "ai-http", c), find(results, "chat", "nginx", c)
    if a and n and lat(a, "p99") is not None and lat(n, "p99"):
        x = lat(a, "p99") / lat(n, "p99")
        add(f"p99 under load (c={c})", "<= 2x nginx's",
            f"{lat(a, 'p99'):.2f} ms vs {lat(n, 'p99'):.2f} ms ({x:.2f}x)", x <= 2.0, valid(a, n))
    else:
        add("p99 under load (c=64)", "<= 2x nginx's", "not measured", None, False)

    # gRPC vs HTTP
    throughput("gRPC vs HTTP throughput", "ai-grpc", "ai-http", "within 10% (>= 0.9x)", 0.9,
               ".2f", ".0f")

    # not a target: on two cores the load drivers share the CPU with the doors, so a driver
    # that needs more CPU per request leaves its door less: the doors' own CPU per request,
    # and each driver's, beside the throughput ratio
    c = pick_c(results, "chat", ["ai-grpc", "ai-http"], 64)
    g, h = find(results, "chat", "ai-grpc", c), find(results, "chat", "ai-http", c)

    if g and h and g.get("server_cpu_us_per_req") and h.get("server_cpu_us_per_req"):
        gd, hd = g.get("driver_cpu_us_per_req"), h.get("driver_cpu_us_per_req")
        drivers = (f"; drivers {gd:.1f} µs (grpc-load) vs {hd:.1f} µs ({h.get('tool')})"
                   if gd is not None and hd is not None else "")
        rows.append({"target": f"for reference (c={c}): CPU per request, gRPC vs HTTP door",
                     "goal": "–", "measured": f"{h['server_cpu_us_per_req'] / g['server_cpu_us_per_req']:.2f}x "
                     f"({g['server_cpu_us_per_req']:.1f} vs {h['server_cpu_us_per_req']:.1f} µs)"
                     + drivers,
                     "result": "info" if valid(g, h) else "invalid (errors)", "detail": ""})

    # streaming TTFT
    for t in ("ai-http", "ai-grpc"):
        c = pick_c(results, "stream", [t, "direct"], 1)
        s, d = find(results, "stream", t, c), find(results, "stream", "direct", c)
        if s and d and lat(s, "p50", "ttft_ms") is not None and lat(d, "p50", "ttft_ms") is not None:
            x = lat(s, "p50", "ttft_ms") - lat(d, "p50", "ttft_ms")
            add(f"streaming TTFT added, {NAMES[t]} (c={c}, p50)", "< 1 ms",
                f"{x:.3f} ms ({lat(s, 'p50', 'ttft_ms'):.3f} vs direct "
                f"{lat(d, 'p50', 'ttft_ms'):.3f} ms)", x < 1.0, valid(s, d))
        else:
            add(f"streaming TTFT added, {NAMES[t]} (c=1, p50)", "< 1 ms", "not measured", None, False)

    mem = results.get("memory", {})
    idle = mem.get("ai_api_idle_kb")
    add("ai-api idle RSS", "< 20 MB", f"{idle / 1024:.1f} MB" if idle else "not measured",
        None if not idle else idle < 20 * 1024, True)
    for t in ("ai-http", "ai-grpc"):
        o = mem.get(f"open_streams_{t}")
        if o and o.get("rss_while_open_kb"):
            add(f"ai-api RSS, {o['streams']} open streams ({NAMES[t]})", "< 100 MB",
                f"{o['rss_while_open_kb'] / 1024:.1f} MB (peak {o['hwm_kb'] / 1024:.1f} MB, "
                f"{o['rss_before_kb'] / 1024:.1f} MB before)",
                o["rss_while_open_kb"] < 100 * 1024, bool(o.get("valid")))
        else:
            add(f"ai-api RSS, 1000 open streams ({NAMES[t]})", "< 100 MB", "not measured", None,
                False)
    soak = mem.get("soak")
    if soak and soak.get("rss_after_warmup_kb") is not None:
        g = soak["growth_after_warmup_kb"]
        base = soak["rss_after_warmup_kb"]
        add(f"soak: RSS growth after warm-up ({soak['ok']} requests)", "no steady growth (< 10%)",
            f"{g / 1024:+.1f} MB ({base / 1024:.1f} -> {soak['rss_end_kb'] / 1024:.1f} MB, "
            f"{soak['slope_kb_per_min']:+.0f} kB/min)", g < 0.1 * base, bool(soak.get("valid")))
        measured_s = (soak["samples"][-1][0] if soak.get("samples") else 0) - soak["warmup_until_s"]
        if measured_s < 60:
            rows[-1]["result"] = f"inconclusive ({measured_s:.0f} s after warm-up; run longer)"
    return rows


# --------------------------------------------------------------------------------------------
# markdown
# --------------------------------------------------------------------------------------------

def f(v, digits=2):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def targets_table(rows: list[dict]) -> str:
    out = ["| target | goal | measured | result |", "| --- | --- | --- | --- |"]
    for r in rows:
        res = r["result"]
        out.append(f"| {r['target']} | {r['goal']} | {r['measured']} | "
                   f"{res if res in ('pass', 'info') else '**' + res + '**'} |")
    return "\n".join(out)


def concurrencies(results: dict, scenario: str) -> list[int]:
    return sorted({r["concurrency"] for r in results["runs"] if r["scenario"] == scenario})


def chat_table(results: dict) -> str:
    out = ["| c | target | req/s | p50 ms | p99 ms | p50 added vs direct | proxy CPU µs/req | errors "
           "| other CPU |",
           "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in concurrencies(results, "chat"):
        d = find(results, "chat", "direct", c)
        for t in TARGETS:
            r = find(results, "chat", t, c)
            if not r:
                continue
            added = None
            if d and lat(r, "p50") is not None and lat(d, "p50") is not None and t != "direct":
                added = f"{(lat(r, 'p50') - lat(d, 'p50')) * 1000:.0f} µs"
            err = r.get("errors")
            err_s = f"{err}" + ("" if r.get("valid") else " (invalid)")
            out.append(f"| {c} | {NAMES[t]} | {f(r.get('rps'), 0)} | {f(lat(r, 'p50'), 3)} | "
                       f"{f(lat(r, 'p99'), 3)} | {added or '–'} | "
                       f"{f(r.get('server_cpu_us_per_req'), 0)} | {err_s} | "
                       f"{f(r.get('foreign_cpu_pct'), 0)}% |")
    return "\n".join(out)


def stream_table(results: dict, scenario: str) -> str:
    out = ["| c | target | streams/s | TTFT p50 ms | TTFT p99 ms | TTFT added p50 | gap p50 ms | "
           "gap p99 ms | stream p50 ms | proxy CPU µs/stream | errors |",
           "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in concurrencies(results, scenario):
        d = find(results, scenario, "direct", c)
        for t in TARGETS:
            r = find(results, scenario, t, c)
            if not r:
                continue
            added = None
            if d and t != "direct" and lat(r, "p50", "ttft_ms") is not None \
                    and lat(d, "p50", "ttft_ms") is not None:
                added = f"{lat(r, 'p50', 'ttft_ms') - lat(d, 'p50', 'ttft_ms'):.3f} ms"
            err = r.get("errors")
            err_s = f"{err}" + ("" if r.get("valid") else " (invalid)")
            out.append(
                f"| {c} | {NAMES[t]} | {f(r.get('rps'), 0)} | {f(lat(r, 'p50', 'ttft_ms'), 3)} | "
                f"{f(lat(r, 'p99', 'ttft_ms'), 3)} | {added or '–'} | "
                f"{f(lat(r, 'p50', 'gap_ms'), 3)} | {f(lat(r, 'p99', 'gap_ms'), 3)} | "
                f"{f(lat(r, 'p50'), 2)} | {f(r.get('server_cpu_us_per_req'), 0)} | {err_s} |")
    return "\n".join(out)


def mb(kb):
    return "–" if not kb else f"{kb / 1024:.1f} MB"


def memory_table(results: dict) -> str:
    m = results.get("memory", {})
    out = ["| process | idle | peak under load (VmHWM) | after load | with open streams |",
           "| --- | ---: | ---: | ---: | ---: |"]
    streams = []
    for t in ("ai-http", "ai-grpc"):
        o = m.get(f"open_streams_{t}")
        if o:
            streams.append(f"{mb(o.get('rss_while_open_kb'))} ({o['streams']} via "
                           f"{'HTTP' if t == 'ai-http' else 'gRPC'}; {mb(o.get('rss_before_kb'))} "
                           f"before)")
    out.append(f"| ai-api | {mb(m.get('ai_api_idle_kb'))} | {mb(m.get('ai_api_hwm_under_load_kb'))}"
               f" | {mb(m.get('ai_api_rss_after_load_kb'))} | {'; '.join(streams) or '–'} |")
    o = m.get("open_streams_nginx")
    out.append(f"| nginx (master + workers) | {mb(m.get('nginx_idle_kb'))} | {mb(m.get('nginx_hwm_kb'))}"
               f" | {mb(m.get('nginx_after_load_kb'))} | "
               f"{mb(o.get('rss_while_open_kb')) + ' (' + str(o['streams']) + ')' if o else '–'} |")
    out.append(f"| LiteLLM (all processes) | {mb(m.get('litellm_idle_kb'))} | "
               f"{mb(m.get('litellm_hwm_kb'))} | {mb(m.get('litellm_after_load_kb'))} | – |")
    return "\n".join(out)


def soak_text(results: dict) -> str:
    s = results.get("memory", {}).get("soak")
    if not s:
        return "No soak in this run (`bench/run.sh --soak N`)."
    lat_ = s.get("latency_ms") or {}
    return (f"{s.get('ok')} requests ok, {s.get('errors')} errors, {f(s.get('rps'), 0)} req/s at "
            f"c={s['concurrency']}, p50 {f(lat_.get('p50'), 3)} ms, p99 {f(lat_.get('p99'), 3)} ms. "
            f"RSS after warm-up ({s['warmup_until_s']} s) {mb(s.get('rss_after_warmup_kb'))}, at the "
            f"end {mb(s.get('rss_end_kb'))}, max {mb(s.get('rss_max_kb'))}; trend "
            f"{f(s.get('slope_kb_per_min'), 0)} kB/min over {len(s['samples'])} samples"
            + (f"; of which anonymous (heap) {mb(s.get('rss_anon_after_warmup_kb'))} -> "
               f"{mb(s.get('rss_anon_end_kb'))}, file-backed {mb(s.get('rss_file_after_warmup_kb'))}"
               f" -> {mb(s.get('rss_file_end_kb'))}" if s.get("rss_anon_end_kb") else "")
            + (f"; ai-api's SQLite data grew to {s['ai_api_data_dir_bytes'] / 1e6:.0f} MB"
               if s.get("ai_api_data_dir_bytes") else "") + ".")


def render(results: dict, json_path: Path, png_name: str | None) -> str:
    m = results["machine"]
    s = results["settings"]
    prelim = results.get("preliminary")
    lines = [BEGIN, ""]
    title = f"## Results: run {results['timestamp']} ({results['mode']})"
    if prelim:
        title += " — PRELIMINARY"
    lines += [title, ""]
    if prelim:
        lines += ["> Preliminary numbers from a quick run (short runs, c=1 and 64) that proves the "
                  "harness works end to end. They are not the reference numbers: re-run "
                  "`bench/run.sh` (full) on a quiet machine for those.", ""]
    lines += [
        f"- Machine: {m['nproc']} cores, {m['cpu_model']}, {m['memory_gib']} GiB RAM, Linux "
        f"{m['kernel']}; load average at start {' '.join(m['load_at_start'])}.",
        f"- Software: ai-api `{m['ai_api_git']}` (binary built "
        f"{m.get('ai_api_binary', '?').rsplit('(built ', 1)[-1].rstrip(')')}; {m['rustc']}), "
        f"{m['nginx']}, LiteLLM "
        f"{m['litellm']} ({s['litellm_workers']} workers), nginx {s['nginx_workers']} workers, "
        f"oha: {m['oha']}.",
        f"- Runs: concurrency {', '.join(map(str, s['concurrency']))}; {s['duration']} s per plain "
        f"run, {s['stream_duration']} s per stream run, {s['litellm_duration']} s per LiteLLM run, "
        f"{s['warmup']} s warm-up; streams of {s['chunks']} chunks (unpaced, and "
        f"{s['paced_delay_ms']} ms apart); gRPC over {s['grpc_connections']} HTTP/2 connection(s).",
        f"- Raw data: `bench/{json_path.relative_to(json_path.parents[1])}`.",
        "",
    ]
    for n in results.get("notes", []):
        lines.append(f"- Note: {n}")
    if results.get("notes"):
        lines.append("")
    lines += ["### Targets", "", targets_table(results["targets"]), ""]
    if png_name:
        lines += [f"![latency and throughput vs concurrency]({png_name})", ""]
    lines += ["### Plain chat completions", ""]
    if (s.get("rounds") or 1) > 1:
        lines += [f"Each target ran {s['rounds']} times per concurrency, in interleaved rounds "
                  "(LiteLLM in the first only); the table and the targets take each target's "
                  "median round by req/s, and every round is in the raw data.", ""]
    lines += [chat_table(results), ""]
    if concurrencies(results, "stream"):
        lines += ["### Streams, chunks sent back to back", "", stream_table(results, "stream"), ""]
    if concurrencies(results, "paced"):
        lines += [f"### Streams, chunks {s['paced_delay_ms']} ms apart", "",
                  stream_table(results, "paced"), ""]
    lines += ["### Memory (VmRSS)", "", memory_table(results), "", "### Soak", "",
              soak_text(results), "", END]
    return "\n".join(lines)


def plot(results: dict, png: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    colors = {"direct": "#555555", "nginx": "#2ca02c", "floor": "#8c564b", "ai-http": "#1f77b4",
              "ai-grpc": "#9467bd", "litellm": "#d62728"}
    for t in TARGETS:
        pts = [(c, find(results, "chat", t, c)) for c in concurrencies(results, "chat")]
        pts = [(c, r) for c, r in pts if r and r.get("latency_ms")]
        if pts:
            cs = [c for c, _ in pts]
            axes[0].plot(cs, [r["latency_ms"]["p50"] for _, r in pts], "-o", color=colors[t],
                         label=f"{NAMES[t]} p50")
            axes[0].plot(cs, [r["latency_ms"]["p99"] for _, r in pts], "--", color=colors[t],
                         alpha=0.6, label=f"{NAMES[t]} p99")
            axes[1].plot(cs, [r["rps"] for _, r in pts], "-o", color=colors[t], label=NAMES[t])
        spts = sorted([(r["concurrency"], r) for r in results["runs"]
                       if r["scenario"] == "stream" and r["target"] == t and r.get("ttft_ms")],
                      key=lambda x: x[0])
        if spts:
            axes[2].plot([c for c, _ in spts], [r["ttft_ms"]["p50"] for _, r in spts], "-o",
                         color=colors[t], label=NAMES[t])
    axes[0].set(title="Chat completion latency", xlabel="concurrency", ylabel="ms")
    axes[1].set(title="Throughput", xlabel="concurrency", ylabel="requests/s")
    axes[2].set(title="Stream: time to first token, p50", xlabel="concurrency", ylabel="ms")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"ai-api benchmark {results['timestamp']} ({results['mode']}"
                 f"{', preliminary' if results.get('preliminary') else ''}) — "
                 f"{results['machine']['nproc']} cores, {results['machine']['cpu_model']}")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True


def write_doc(results: dict, json_path: Path, doc: Path, png: Path) -> None:
    has_png = plot(results, png)
    block = render(results, json_path, png.name if has_png else None)
    text = doc.read_text() if doc.exists() else "# Performance\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    p = Path(sys.argv[1]).resolve()
    results = json.loads(p.read_text())
    results["targets"] = evaluate(results)
    root = Path(__file__).resolve().parent.parent
    write_doc(results, p, root / "docs" / "performance.md", root / "docs" / "performance-latency.png")
    print(targets_table(results["targets"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
