#!/usr/bin/env python3
"""The ai-api benchmark: one run on this machine comparing

  direct   the fake upstream itself (the baseline every "added latency" is measured from)
  nginx    nginx as a plain reverse proxy in front of the fake upstream
  floor    the floor of a Rust proxy: hyper server + hyper client, bodies passed through
           untouched, one runtime per core (bench/floor); what hyper and Tokio cost by themselves
  ai-http  ai-api's HTTP door (OpenAI REST under /ai-api)
  ai-grpc  ai-api's gRPC door (ai_api.v1.AiApiService)
  litellm  LiteLLM's proxy, on the same config file as ai-api

for plain chat completions, streamed ones (time to first token, gap between chunks), memory
(idle, under load, 1,000 open streams) and optionally a bounded soak. Started by bench/run.sh,
which installs the tools and builds the binaries first; see docs/performance.md.

Only loopback is used, and every load run is bounded in time (and, for the soak, in count).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TARGETS = ["direct", "nginx", "floor", "ai-http", "ai-grpc", "litellm"]
MASTER_KEY = "sk-bench-master"
UPSTREAM_KEY = "sk-bench"


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


_TAKEN: set[int] = set()


def free_port() -> int:
    """A port to listen on later, below the kernel's ephemeral range: a port the kernel hands
    out for port 0 can be taken, before the server that wants it starts, by any outgoing
    connection (the load drivers, nginx and the proxies to the upstream) — LiteLLM, started
    last, once found its port so taken."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    for _ in range(200):
        if low <= 11000:
            break
        port = random.randrange(10000, low)
        if port in _TAKEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _TAKEN.add(port)
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def proc_status(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "Threads"):
                out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def children(pid: int) -> list[int]:
    """All descendants of pid."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def tree_rss_kb(pid: int) -> dict:
    """VmRSS and VmHWM summed over a process and its descendants (shared pages counted per
    process, so this overstates multi-process servers a little)."""
    rss = hwm = 0
    pids = [pid] + children(pid)
    for p in pids:
        st = proc_status(p)
        rss += st.get("VmRSS", 0)
        hwm += st.get("VmHWM", 0)
    return {"rss_kb": rss, "hwm_kb": hwm, "processes": len(pids)}


def cpu_ticks(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        f = stat[stat.rindex(")") + 2:].split()
        return int(f[11]) + int(f[12])  # utime + stime
    except (OSError, ValueError, IndexError):
        return 0


def system_busy_ticks() -> int:
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return sum(f[:8]) - idle


def http_ok(url: str, headers: dict | None = None, timeout: float = 2.0) -> bool:
    try:
        req = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return 200 <= r.status < 300
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False


def cmd_output(args: list[str]) -> str:
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=30)
        return (p.stdout + p.stderr).strip()
    except Exception as e:  # noqa: BLE001
        return f"unavailable ({e})"


# --------------------------------------------------------------------------------------------
# processes under test
# --------------------------------------------------------------------------------------------

class Proc:
    def __init__(self, name: str, args: list[str], logfile: Path, env: dict | None = None):
        self.name = name
        self.log = open(logfile, "wb")
        e = dict(os.environ)
        e.update(env or {})
        log(f"starting {name}: {' '.join(args)}")
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=e,
                                  stdin=subprocess.DEVNULL, start_new_session=True,
                                  cwd=logfile.parent)
        self.pid = self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def all_pids(self) -> list[int]:
        return [self.pid] + children(self.pid)

    def cpu(self) -> int:
        return sum(cpu_ticks(p) for p in self.all_pids())

    def stop(self, grace: float = 10.0) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop in {grace}s; killing it")
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(5)
        self.log.close()


def wait_until(pred, seconds: float, what: str, proc: Proc | None = None) -> None:
    end = time.time() + seconds
    while time.time() < end:
        if pred():
            return
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{what}: the process exited (see its log)")
        time.sleep(0.2)
    raise RuntimeError(f"{what}: not ready after {seconds:.0f}s")


def write_config(path: Path, up_port: int, models: list[str]) -> None:
    """The one config file both ai-api and LiteLLM read (LiteLLM's format)."""
    lines = ["# Generated by bench/bench.py: the same file is given to ai-api and to LiteLLM.",
             "model_list:"]
    for m in models:
        lines += [
            f"  - model_name: {m}",
            "    litellm_params:",
            f"      model: openai/{m}",
            f"      api_base: http://127.0.0.1:{up_port}/v1",
            f"      api_key: {UPSTREAM_KEY}",
            "      input_cost_per_token: 0.00000015",
            "      output_cost_per_token: 0.0000006",
        ]
    # As in the seed config: per-request spend rows off (LiteLLM here has no database at all);
    # ai-api still keeps its per-key/per-model spend totals.
    lines += ["general_settings:", f"  master_key: {MASTER_KEY}",
              "  disable_spend_logs: True", "  disable_error_logs: True", ""]
    path.write_text("\n".join(lines))


def write_nginx_conf(path: Path, wd: Path, port: int, up_port: int, workers: int,
                     access_log: bool) -> None:
    tmp = wd / "nginx-tmp"
    tmp.mkdir(exist_ok=True)
    access = f"access_log {wd}/nginx-access.log;" if access_log else "access_log off;"
    path.write_text(f"""# Generated by bench/bench.py: nginx as a plain reverse proxy to the fake upstream.
worker_processes {workers};
worker_rlimit_nofile 65536;
daemon off;
master_process on;
pid {wd}/nginx.pid;
error_log {wd}/nginx-error.log warn;

events {{
    worker_connections 16384;
    multi_accept on;
}}

http {{
    {access}
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;

    upstream fake_upstream {{
        server 127.0.0.1:{up_port};
        keepalive 512;
        keepalive_requests 1000000;
    }}

    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://fake_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
""")


# --------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.ts = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.wd = BENCH / "results" / f"run-{self.ts}"
        (self.wd / "raw").mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, Proc] = {}
        self.ports = {k: free_port() for k in ["up", "nginx", "floor", "ai", "aig", "litellm"]}
        self.driver = str(BENCH / "target" / "release" / "grpc-load")
        self.upstream_bin = str(BENCH / "target" / "release" / "bench-upstream")
        self.floor_bin = str(BENCH / "target" / "release" / "bench-floor")
        self.oha = a.oha
        self.runs: list[dict] = []
        self.memory: dict = {}
        self.notes: list[str] = []
        self.chat_model = "bench-model"
        self.paced_model = f"bench-n{a.chunks}-d{a.paced_delay_ms}"
        self.hold_model = f"bench-n{a.hold_seconds}-d1000"
        self.run_no = 0

    # ---- targets ----
    def url(self, target: str) -> str:
        p = self.ports
        return {
            "direct": f"http://127.0.0.1:{p['up']}/v1/chat/completions",
            "nginx": f"http://127.0.0.1:{p['nginx']}/v1/chat/completions",
            "floor": f"http://127.0.0.1:{p['floor']}/v1/chat/completions",
            "ai-http": f"http://127.0.0.1:{p['ai']}/ai-api/v1/chat/completions",
            "ai-grpc": f"http://127.0.0.1:{p['aig']}",
            "litellm": f"http://127.0.0.1:{p['litellm']}/v1/chat/completions",
        }[target]

    def key(self, target: str) -> str:
        return UPSTREAM_KEY if target in ("direct", "nginx", "floor") else MASTER_KEY

    def enabled(self, target: str) -> bool:
        return target in self.a.targets and (target != "litellm" or "litellm" in self.procs) \
            and (target != "nginx" or "nginx" in self.procs) \
            and (target != "floor" or "floor" in self.procs)

    # ---- setup ----
    def machine(self) -> dict:
        cpu = "unknown"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = 0
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
        git = cmd_output(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
        ll_ver = cmd_output([str(BENCH / ".venv" / "bin" / "python"), "-c",
                             "import importlib.metadata as m; print(m.version('litellm'))"])
        return {
            "nproc": os.cpu_count(),
            "cpu_model": cpu,
            "memory_gib": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "ai_api_git": git,
            "ai_api_binary": f"{self.a.ai_api} (built "
                             f"{dt.datetime.fromtimestamp(Path(self.a.ai_api).stat().st_mtime).isoformat(timespec='seconds')})",
            "rustc": cmd_output(["rustc", "--version"]),
            "nginx": cmd_output([self.a.nginx, "-v"]),
            "litellm": ll_ver,
            "oha": cmd_output([self.oha, "--version"]) if self.oha else "not used",
            "load_at_start": Path("/proc/loadavg").read_text().split()[:3],
        }

    def wait_quiet(self) -> None:
        if self.a.max_load <= 0:
            return
        end = time.time() + self.a.wait_quiet
        while loadavg() > self.a.max_load and time.time() < end:
            log(f"load average {loadavg():.2f} > {self.a.max_load}: waiting for the machine "
                f"to quieten ({end - time.time():.0f}s left)")
            time.sleep(15)
        if loadavg() > self.a.max_load:
            note = (f"the machine was busy when measuring began (load average {loadavg():.2f}); "
                    "treat the numbers with care")
            log(note)
            self.notes.append(note)

    def start(self) -> None:
        a, p, wd = self.a, self.ports, self.wd
        models = [self.chat_model, self.paced_model, self.hold_model]
        self.config = wd / "config.yaml"
        write_config(self.config, p["up"], models)

        self.procs["upstream"] = Proc("upstream", [
            self.upstream_bin, "--listen", f"127.0.0.1:{p['up']}", "--chunks", str(a.chunks),
            "--delay-ms", "0"] + (["--threads", str(a.upstream_threads)] if a.upstream_threads else []),
            wd / "upstream.log")
        wait_until(lambda: http_ok(f"http://127.0.0.1:{p['up']}/health"), 10, "upstream",
                   self.procs["upstream"])

        self.start_ai_api()
        self.memory["ai_api_idle_kb"] = proc_status(self.procs["ai-api"].pid).get("VmRSS")

        if "nginx" in a.targets:
            conf = wd / "nginx.conf"
            write_nginx_conf(conf, wd, p["nginx"], p["up"], a.nginx_workers, a.nginx_access_log)
            self.procs["nginx"] = Proc("nginx", [a.nginx, "-p", str(wd), "-c", str(conf)],
                                       wd / "nginx.out")
            wait_until(lambda: http_ok(f"http://127.0.0.1:{p['nginx']}/health"), 15, "nginx",
                       self.procs["nginx"])
            time.sleep(0.5)
            self.memory["nginx_idle_kb"] = tree_rss_kb(self.procs["nginx"].pid)["rss_kb"]

        if "floor" in a.targets:
            self.procs["floor"] = Proc("floor", [
                self.floor_bin, "--listen", f"127.0.0.1:{p['floor']}",
                "--upstream", f"http://127.0.0.1:{p['up']}"], wd / "floor.log")
            wait_until(lambda: http_ok(f"http://127.0.0.1:{p['floor']}/health"), 10, "floor",
                       self.procs["floor"])

        if "litellm" in a.targets:
            ll = BENCH / ".venv" / "bin" / "litellm"
            if not ll.exists():
                self.notes.append("LiteLLM is not installed (bench/.venv): its runs are skipped")
                log(self.notes[-1])
            else:
                env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
                       "PYTHONUNBUFFERED": "1"}
                self.procs["litellm"] = Proc("litellm", [
                    str(ll), "--config", str(self.config), "--host", "127.0.0.1",
                    "--port", str(p["litellm"]), "--num_workers", str(a.litellm_workers)],
                    wd / "litellm.log", env)
                try:
                    wait_until(lambda: http_ok(
                        f"http://127.0.0.1:{p['litellm']}/health/liveliness"), 180, "litellm",
                        self.procs["litellm"])
                except RuntimeError as e:
                    self.notes.append(f"LiteLLM did not start ({e}): its runs are skipped")
                    log(self.notes[-1])
                    self.procs.pop("litellm").stop()
                else:
                    time.sleep(2.0)
                    self.memory["litellm_idle_kb"] = tree_rss_kb(
                        self.procs["litellm"].pid)["rss_kb"]

    def start_ai_api(self) -> None:
        a, p = self.a, self.ports
        # ai-api keeps its spend log in SQLite under AI_API_DATA_DIR (default ./data): give each
        # run a fresh one inside the run's directory, never the repository's data/.
        env = {"AI_API_DATA_DIR": str(self.wd / "ai-api-data")}
        if a.ai_log:
            env["RUST_LOG"] = a.ai_log
        for kv in a.ai_env:
            k, _, v = kv.partition("=")
            env[k] = v
        n = sum(1 for f in self.wd.glob("ai-api*.log"))
        self.procs["ai-api"] = Proc("ai-api", [
            a.ai_api, "--config", str(self.config), "--host", "127.0.0.1",
            "--port", str(p["ai"]), "--grpc-port", str(p["aig"])],
            self.wd / (f"ai-api.{n}.log" if n else "ai-api.log"), env)
        wait_until(lambda: http_ok(f"http://127.0.0.1:{p['ai']}/ai-api/health/readiness"), 30,
                   "ai-api", self.procs["ai-api"])
        time.sleep(1.0)

    def restart_ai_api(self) -> None:
        self.procs.pop("ai-api").stop()
        self.start_ai_api()

    def stop(self) -> None:
        for name in ["litellm", "nginx", "floor", "ai-api", "upstream"]:
            if name in self.procs:
                self.procs[name].stop()

    # ---- one load run ----
    def server_cpu(self) -> int:
        return sum(pr.cpu() for pr in self.procs.values())

    def load(self, scenario: str, target: str, c: int, seconds: float, warmup: float,
             model: str, expect_chunks: int = 0, requests: int = 0) -> dict:
        self.run_no += 1
        raw = self.wd / "raw" / f"{self.run_no:03d}-{scenario}-{target}-c{c}.json"
        stream = scenario != "chat"
        use_oha = (not stream) and target != "ai-grpc" and self.oha and self.a.http_tool == "oha"
        if use_oha:
            body = json.dumps({"model": model,
                               "messages": [{"role": "user", "content": "Hello"}]})

            def oha_args(bound: list[str]) -> list[str]:
                return [self.oha, "--no-tui", "--output-format", "json", "-c", str(c), *bound,
                        "-m", "POST", "-t", f"{self.a.timeout}s",
                        "-H", f"Authorization: Bearer {self.key(target)}",
                        "-H", "Content-Type: application/json", "-d", body,
                        "--wait-ongoing-requests-after-deadline", self.url(target)]

            # A count bound is still limited in time: oha stops at whichever comes first.
            args = oha_args(["-z", f"{seconds}s"] + (["-n", str(requests)] if requests else []))
            warm = oha_args(["-z", f"{warmup}s"])
        else:
            mode = ("grpc-stream" if stream else "grpc-chat") if target == "ai-grpc" else \
                ("http-stream" if stream else "http-chat")
            args = [self.driver, "--mode", mode, "--target", self.url(target), "--model", model,
                    "--key", self.key(target), "-c", str(c), "-z", str(seconds),
                    "--warmup", str(warmup), "--timeout", str(self.a.timeout),
                    "--label", f"{scenario}/{target}/c{c}", "--out", str(raw)]
            if target == "ai-grpc":
                args += ["--connections", str(self.a.grpc_connections)]
            if requests:
                args += ["-n", str(requests)]
            if expect_chunks:
                args += ["--expect-chunks", str(expect_chunks)]
            warm = None

        if use_oha and warmup > 0:
            subprocess.run(warm, capture_output=True, timeout=warmup + self.a.timeout + 30)
        load1 = loadavg()
        per0 = {n: pr.cpu() for n, pr in self.procs.items()}
        busy0, ours0 = system_busy_ticks(), sum(per0.values())
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.time()
        limit = seconds + warmup + self.a.timeout + 60
        try:
            p = subprocess.run(args, capture_output=True, text=True, timeout=limit)
            out, err = p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            out, err = "", f"load tool timed out after {limit:.0f}s: {e}"
        wall = time.time() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        per1 = {n: pr.cpu() for n, pr in self.procs.items()}
        busy1, ours1 = system_busy_ticks(), sum(per1.values())
        hz = os.sysconf("SC_CLK_TCK")
        tool_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        total_cpu = (busy1 - busy0) / hz
        ours = (ours1 - ours0) / hz + tool_cpu
        # other work on the machine during the run, in % of one core (warm-up included)
        foreign = max(0.0, total_cpu - ours) / max(wall, 1e-6) * 100

        cpu_s = {n: round((per1[n] - per0.get(n, 0)) / hz, 2) for n in per1}
        cpu_s["load-tool"] = round(tool_cpu, 2)
        r = {"scenario": scenario, "target": target, "concurrency": c, "model": model,
             "tool": "oha" if use_oha else "grpc-load", "load1_before": load1,
             "foreign_cpu_pct": round(foreign, 1), "cpu_s": cpu_s, "wall_s": round(wall, 2),
             "raw": str(raw.relative_to(BENCH))}
        try:
            d = json.loads(out)
        except json.JSONDecodeError:
            r.update({"valid": False, "errors": -1, "rps": 0.0,
                      "error": (err or out)[-2000:]})
            log(f"  {scenario:7s} {target:8s} c={c:<4d} FAILED: {(err or out)[-300:]}")
            self.runs.append(r)
            return r
        if use_oha:
            raw.write_text(out)
            r.update(self.normalize_oha(d))
        else:
            r.update({k: d.get(k) for k in ["rps", "ok", "errors", "error_kinds", "error_samples",
                                            "duration_s", "latency_ms", "ttft_ms", "gap_ms",
                                            "chunks_per_stream", "connections"]})
            r["valid"] = bool(d.get("valid"))
        # CPU the proxy itself spent per request (warm-up included, so slightly high); the
        # upstream's share is excluded. Less sensitive to a shared machine than req/s.
        server = {"direct": "upstream", "nginx": "nginx", "floor": "floor", "ai-http": "ai-api",
                  "ai-grpc": "ai-api", "litellm": "litellm"}[target]
        # The load tool's own CPU per request, the same way (oha's warm-up is a run of its own,
        # outside the window; the Rust driver warms up inside it).
        done = (r.get("ok") or 0) + (r.get("errors") or 0)
        warm_share = (seconds + warmup) / seconds if warmup and seconds and not use_oha else 1.0
        if done > 0 and cpu_s.get(server, 0) >= 0.2:  # clock ticks are 10 ms: skip tiny totals
            r["server_cpu_us_per_req"] = round(cpu_s[server] * 1e6 / (done * warm_share), 1)
        if done > 0 and tool_cpu >= 0.2:
            r["driver_cpu_us_per_req"] = round(tool_cpu * 1e6 / (done * warm_share), 1)
        lat = r.get("latency_ms") or {}
        extra = ""
        if stream and r.get("ttft_ms"):
            extra = (f" ttft p50 {r['ttft_ms']['p50']:.3f} gap p50 {r['gap_ms']['p50']:.3f}"
                     if r.get("gap_ms") else f" ttft p50 {r['ttft_ms']['p50']:.3f}")
        log(f"  {scenario:7s} {target:8s} c={c:<4d} {r.get('rps', 0):9.1f} req/s "
            f"p50 {lat.get('p50', float('nan')):8.3f} ms p99 {lat.get('p99', float('nan')):8.3f} ms"
            f"{extra} errors {r.get('errors')} other-cpu {r['foreign_cpu_pct']}%")
        self.runs.append(r)
        if "ai-api" in self.procs:
            st = proc_status(self.procs["ai-api"].pid)
            self.memory["ai_api_hwm_under_load_kb"] = st.get("VmHWM")
        return r

    @staticmethod
    def normalize_oha(d: dict) -> dict:
        s = d.get("summary", {})
        pct = d.get("latencyPercentiles", {})
        codes = d.get("statusCodeDistribution", {}) or {}
        errs = dict(d.get("errorDistribution", {}) or {})
        ok = sum(v for k, v in codes.items() if str(k).startswith("2"))
        bad_status = {f"status {k}": v for k, v in codes.items() if not str(k).startswith("2")}
        errs.update(bad_status)
        nerr = sum(errs.values())

        def ms(v):
            return None if v is None else v * 1000.0

        total = s.get("total") or 0
        lat = {"p50": ms(pct.get("p50")), "p90": ms(pct.get("p90")), "p99": ms(pct.get("p99")),
               "p999": ms(pct.get("p99.9")), "max": ms(s.get("slowest")),
               "min": ms(s.get("fastest")), "mean": ms(s.get("average"))}
        return {"rps": ok / total if total else s.get("requestsPerSec", 0.0), "ok": ok,
                "errors": nerr, "error_kinds": errs, "duration_s": total, "latency_ms": lat,
                "valid": nerr == 0 and ok > 0}

    # ---- scenarios ----
    def seconds_for(self, target: str, stream: bool) -> float:
        if target == "litellm":
            return self.a.litellm_duration
        return self.a.stream_duration if stream else self.a.duration

    def scenarios(self) -> None:
        a = self.a
        plan = [("chat", self.chat_model, 0)]
        if not a.no_streams:
            plan += [("stream", self.chat_model, a.chunks), ("paced", self.paced_model, a.chunks)]
        for scenario, model, chunks in plan:
            # Plain chat is measured in `--rounds` interleaved rounds (every target once per
            # round, back to back): this machine's speed drifts by a quarter within minutes,
            # and the report compares the median round of each target. LiteLLM, hundreds of
            # times slower, runs in the first round only.
            rounds = a.rounds if scenario == "chat" else 1
            for c in a.concurrency:
                for rnd in range(1, rounds + 1):
                    for target in TARGETS:
                        if not self.enabled(target):
                            continue
                        if target == "litellm" and (c > a.litellm_max_concurrency or rnd > 1):
                            continue
                        r = self.load(scenario, target, c,
                                      self.seconds_for(target, scenario != "chat"),
                                      0.0 if target == "litellm" and scenario != "chat"
                                      else min(a.warmup, self.seconds_for(target, False)),
                                      model, expect_chunks=chunks)
                        r["round"] = rnd
                        if target == "litellm" and not self.procs["litellm"].alive():
                            self.notes.append("LiteLLM exited during the run")
                            self.procs.pop("litellm")

    def open_streams(self) -> None:
        """Holds N streams open through a server and reads its memory while they are."""
        n = self.a.open_streams
        if n <= 0:
            return
        hold = self.a.hold_seconds
        for target, pname in [("ai-http", "ai-api"), ("ai-grpc", "ai-api"), ("nginx", "nginx")]:
            if not self.enabled(target) or pname not in self.procs:
                continue
            if pname == "ai-api" and self.a.open_streams_fresh:
                # a fresh process, so the figure is the streams' cost and not what the load
                # matrix left in the allocator (that is reported as "after load")
                self.restart_ai_api()
            proc = self.procs[pname]
            before = tree_rss_kb(proc.pid)
            args = [self.driver, "--mode", "grpc-stream" if target == "ai-grpc" else "http-stream",
                    "--target", self.url(target), "--model", self.hold_model,
                    "--key", self.key(target), "-c", str(n), "-n", str(n),
                    "-z", str(hold + 60), "--timeout", str(hold + 60), "--ready-at", str(n),
                    "--expect-chunks", str(hold), "--label", f"open-streams/{target}",
                    # an HTTP/2 connection carries at most a few hundred streams at once
                    "--connections", str(max(self.a.grpc_connections, -(-n // 100)))]
            log(f"opening {n} streams through {target} (each {hold}s long)")
            drv = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            t0 = time.time()
            ready = threading.Event()
            err_lines: list[str] = []

            def watch(stream=drv.stderr) -> None:
                # The driver prints READY on stderr when all n streams are open at once.
                for line in stream:
                    err_lines.append(line)
                    if line.startswith("READY"):
                        ready.set()

            th = threading.Thread(target=watch, daemon=True)
            th.start()
            ready_at = None
            while time.time() - t0 < hold + 30 and drv.poll() is None:
                if ready.wait(0.05):
                    ready_at = round(time.time() - t0, 2)
                    break
            sample = None
            if ready_at is not None:
                time.sleep(min(2.0, hold / 4))
                sample = tree_rss_kb(proc.pid)
                sample["threads"] = proc_status(proc.pid).get("Threads")
            try:
                out = drv.stdout.read()
                drv.wait(timeout=hold + 90)
            except subprocess.TimeoutExpired:
                drv.kill()
                out = ""
            th.join(5)
            try:
                d = json.loads(out)
            except json.JSONDecodeError:
                d = {"valid": False, "error": "".join(err_lines)[-1000:]}
            (self.wd / "raw" / f"open-streams-{target}.json").write_text(out or "{}")
            after = tree_rss_kb(proc.pid)
            res = {"streams": n, "all_open_after_s": ready_at, "rss_before_kb": before["rss_kb"],
                   "rss_while_open_kb": sample and sample["rss_kb"],
                   "hwm_kb": after["hwm_kb"], "rss_after_kb": after["rss_kb"],
                   "ok": d.get("ok"), "errors": d.get("errors"),
                   "peak_open": d.get("peak_open_streams"),
                   "valid": bool(d.get("valid")) and ready_at is not None}
            if d.get("error_samples"):
                res["error_samples"] = d["error_samples"]
            self.memory[f"open_streams_{target}"] = res
            log(f"  {target}: {n} streams open after {ready_at}s, RSS "
                f"{(sample or {}).get('rss_kb', 0) / 1024:.1f} MB (before {before['rss_kb'] / 1024:.1f} MB), "
                f"ok {d.get('ok')} errors {d.get('errors')}")

    def soak(self) -> None:
        n = self.a.soak
        if n <= 0 or "ai-api" not in self.procs:
            return
        proc = self.procs["ai-api"]
        args = [self.driver, "--mode", "http-chat", "--target", self.url("ai-http"),
                "--model", self.chat_model, "--key", MASTER_KEY, "-c", str(self.a.soak_concurrency),
                "-n", str(n), "-z", str(self.a.soak_max_seconds), "--timeout", str(self.a.timeout),
                "--label", "soak", "--out", str(self.wd / "raw" / "soak.json")]
        log(f"soak: {n} requests at c={self.a.soak_concurrency} through ai-http "
            f"(at most {self.a.soak_max_seconds}s), RSS sampled every {self.a.soak_interval}s")
        samples = []
        t0 = time.time()
        drv = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while drv.poll() is None and time.time() - t0 < self.a.soak_max_seconds + 120:
            st = proc_status(proc.pid)
            samples.append([round(time.time() - t0, 1), st.get("VmRSS"), st.get("RssAnon"),
                            st.get("RssFile"), proc.cpu()])
            time.sleep(self.a.soak_interval)
        try:
            out, err = drv.communicate(timeout=self.a.soak_max_seconds + 120)
        except subprocess.TimeoutExpired:
            drv.kill()
            out, err = drv.communicate()
        st = proc_status(proc.pid)
        samples.append([round(time.time() - t0, 1), st.get("VmRSS"), st.get("RssAnon"),
                        st.get("RssFile"), proc.cpu()])
        try:
            d = json.loads(out)
        except json.JSONDecodeError:
            d = {"valid": False, "error": err[-1000:]}
        dur = samples[-1][0]
        warm_t = max(dur * self.a.soak_warmup_fraction, min(30.0, dur / 2))
        post = [s for s in samples if s[0] >= warm_t and s[1]]
        res = {"requests": n, "concurrency": self.a.soak_concurrency, "ok": d.get("ok"),
               "errors": d.get("errors"), "rps": d.get("rps"), "duration_s": d.get("duration_s"),
               "latency_ms": d.get("latency_ms"), "valid": bool(d.get("valid")),
               "samples": samples,
               "samples_columns": ["t_s", "rss_kb", "rss_anon_kb", "rss_file_kb", "cpu_ticks"],
               "warmup_until_s": round(warm_t, 1)}
        if len(post) >= 2:
            xs = [s[0] for s in post]
            ys = [s[1] for s in post]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            var = sum((x - mx) ** 2 for x in xs)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
            res.update({"rss_after_warmup_kb": post[0][1], "rss_end_kb": post[-1][1],
                        "rss_max_kb": max(ys), "growth_after_warmup_kb": post[-1][1] - post[0][1],
                        "slope_kb_per_min": round(slope * 60, 2),
                        "rss_anon_after_warmup_kb": post[0][2], "rss_anon_end_kb": post[-1][2],
                        "rss_file_after_warmup_kb": post[0][3], "rss_file_end_kb": post[-1][3]})
        db = self.wd / "ai-api-data"
        res["ai_api_data_dir_bytes"] = sum(f.stat().st_size for f in db.glob("*")) \
            if db.exists() else None
        self.memory["soak"] = res
        log(f"  soak: ok {d.get('ok')} errors {d.get('errors')} rps {d.get('rps')}; RSS after "
            f"warm-up {res.get('rss_after_warmup_kb')} kB, end {res.get('rss_end_kb')} kB")

    def run(self) -> Path:
        a = self.a
        results: dict = {"timestamp": self.ts, "preliminary": a.quick, "mode": a.mode_name,
                         "settings": {k: v for k, v in vars(a).items() if k not in ("func",)}}
        self.wait_quiet()
        results["machine"] = self.machine()
        log(f"machine: {results['machine']['nproc']} cores, {results['machine']['cpu_model']}, "
            f"{results['machine']['memory_gib']} GiB; work dir {self.wd}")
        try:
            self.start()
            self.scenarios()
            st = proc_status(self.procs["ai-api"].pid)
            self.memory["ai_api_hwm_under_load_kb"] = st.get("VmHWM")
            self.memory["ai_api_rss_after_load_kb"] = st.get("VmRSS")
            for name, key in [("nginx", "nginx"), ("litellm", "litellm")]:
                if name in self.procs:
                    t = tree_rss_kb(self.procs[name].pid)
                    self.memory[f"{key}_after_load_kb"] = t["rss_kb"]
                    self.memory[f"{key}_hwm_kb"] = t["hwm_kb"]
            self.soak()
            self.open_streams()
            st = proc_status(self.procs["ai-api"].pid)
            self.memory["ai_api_hwm_total_kb"] = st.get("VmHWM")
        finally:
            self.stop()
        results["ports"] = self.ports
        results["runs"] = self.runs
        results["memory"] = self.memory
        results["notes"] = self.notes
        results["workdir"] = str(self.wd.relative_to(BENCH))
        import report  # bench/report.py
        results["targets"] = report.evaluate(results)
        out = BENCH / "results" / f"{self.ts}.json"
        out.write_text(json.dumps(results, indent=2))
        log(f"results: {out}")
        if not a.no_doc:
            report.write_doc(results, out, ROOT / "docs" / "performance.md",
                             ROOT / "docs" / "performance-latency.png")
            log("docs/performance.md and docs/performance-latency.png updated")
        print(report.targets_table(results["targets"]))
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="short runs at c=1 and 64 (proves every target works; preliminary numbers)")
    ap.add_argument("--concurrency", help="comma-separated (default 1,16,64,256; quick: 1,64)")
    ap.add_argument("--duration", type=float, help="seconds per plain run (default 10; quick 3)")
    ap.add_argument("--stream-duration", type=float, help="seconds per stream run (default 10; quick 3)")
    ap.add_argument("--litellm-duration", type=float, help="seconds per LiteLLM run (default 5; quick 3)")
    ap.add_argument("--warmup", type=float, help="seconds of unmeasured load before each run (default 2; quick 1)")
    ap.add_argument("--litellm-max-concurrency", type=int, default=256,
                    help="skip LiteLLM above this concurrency")
    ap.add_argument("--targets", default=",".join(TARGETS), help="subset of " + ",".join(TARGETS))
    ap.add_argument("--rounds", type=int,
                    help="interleaved rounds of the plain chat runs; the report takes each "
                         "target's median round (default 3; quick 1)")
    ap.add_argument("--no-streams", action="store_true", help="plain chat only")
    ap.add_argument("--chunks", type=int, default=50, help="content chunks per streamed answer")
    ap.add_argument("--paced-delay-ms", type=int, default=5, help="chunk gap of the paced stream")
    ap.add_argument("--open-streams", type=int, default=1000, help="streams held open for the memory test (0: skip)")
    ap.add_argument("--open-streams-fresh", action=argparse.BooleanOptionalAction, default=True,
                    help="restart ai-api before each open-streams test")
    ap.add_argument("--hold-seconds", type=int, default=20, help="how long each held stream lasts")
    ap.add_argument("--soak", type=int, default=0, help="soak: this many requests through ai-http (0: none)")
    ap.add_argument("--soak-concurrency", type=int, default=64)
    ap.add_argument("--soak-max-seconds", type=float, default=1800)
    ap.add_argument("--soak-interval", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--soak-warmup-fraction", type=float, default=0.1)
    ap.add_argument("--http-tool", choices=["oha", "driver"], default="oha",
                    help="plain HTTP load: oha (default) or the Rust driver (grpc-load http-chat)")
    ap.add_argument("--oha", default=os.environ.get("OHA", ""), help="path of oha")
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--nginx-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--nginx-access-log", action=argparse.BooleanOptionalAction, default=True,
                    help="nginx writes an access log (ai-api logs every request at info too)")
    ap.add_argument("--litellm-workers", type=int, default=1,
                    help="LiteLLM's --num_workers (more than 1 crashed its workers here: "
                         "'Child process died')")
    ap.add_argument("--ai-api", default=str(ROOT / "target" / "release" / "ai-api"))
    ap.add_argument("--ai-log", default="", help="RUST_LOG for ai-api (default: its own, info)")
    ap.add_argument("--ai-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for ai-api (repeatable), e.g. MALLOC_ARENA_MAX=2")
    ap.add_argument("--grpc-connections", type=int, default=1,
                    help="HTTP/2 connections the gRPC driver spreads its workers over")
    ap.add_argument("--upstream-threads", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=30.0, help="per-request limit, seconds")
    ap.add_argument("--max-load", type=float, default=0.5,
                    help="wait for the 1-minute load average to fall below this first (0: don't)")
    ap.add_argument("--wait-quiet", type=float, default=300, help="wait at most this long for it")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/performance.md")
    a = ap.parse_args()

    q = a.quick
    a.mode_name = "quick" if q else "full"
    a.concurrency = [int(x) for x in (a.concurrency or ("1,64" if q else "1,16,64,256")).split(",")]
    a.duration = a.duration or (3.0 if q else 10.0)
    a.stream_duration = a.stream_duration or (3.0 if q else 10.0)
    a.litellm_duration = a.litellm_duration or (3.0 if q else 5.0)
    a.warmup = a.warmup if a.warmup is not None else (1.0 if q else 2.0)
    a.rounds = max(1, a.rounds or (1 if q else 3))
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    for t in a.targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t}")
    if a.http_tool == "oha" and not (a.oha and Path(a.oha).exists()):
        found = shutil.which("oha") or (str(BENCH / ".tools" / "bin" / "oha")
                                        if (BENCH / ".tools" / "bin" / "oha").exists() else "")
        a.oha = found
        if not found:
            log("oha not found: plain HTTP load uses the Rust driver instead")
            a.http_tool = "driver"
    if not Path(a.ai_api).exists():
        ap.error(f"{a.ai_api} does not exist: run `cargo build --release` in the repository root")
    if "floor" in a.targets and not (BENCH / "target" / "release" / "bench-floor").exists():
        log("bench-floor not built: its runs are skipped")
        a.targets.remove("floor")
    if "nginx" in a.targets and not Path(a.nginx).exists():
        log("nginx not found: its runs are skipped")
        a.targets.remove("nginx")
    sys.path.insert(0, str(BENCH))
    Bench(a).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
