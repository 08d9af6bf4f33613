"""The service's speed through real HTTP: continuous batching against one request per replica.

    .venv/bin/python benchmarks/bench_serve.py                # full-size random 0.6B (generated once, ~1.8 GB)
    .venv/bin/python benchmarks/bench_serve.py --quick        # tiny checkpoint, 1/2/4 clients: does it run?
    .venv/bin/python benchmarks/bench_serve.py --model-dir models/qwen3-asr-0.6b   # real weights

Two configurations in one run, one after the other on the same machine,
checkpoint and clip:

    defaults    the shipped settings (QWEN_MAX_BATCH 8, pool size 1, threads = the node's CPUs,
                precision fast)
    old         one request per replica: QWEN_MAX_BATCH=1, pool size 2, 1 thread a replica,
                precision exact (the service before continuous batching)

Before and after them, one Engine in this process without Ray (the shipped
engine settings) transcribes the clip --warm times one after another: the
reference for the service's one-client latency.

For each it writes a Serve config for a temporary models directory, starts
`serve run` as users do (on 127.0.0.1 only), measures start-up, a cold and
warm requests (the ingress overhead is end-to-end latency minus the engine
time the replica reports in x-engine-time-ms: upload, form parsing, audio
decoding, Serve routing and the response), then runs 1, 2, 4, 8 and 16
closed-loop keep-alive clients (each sends its next request when the last
one is answered) and records requests/s and p50/p99 latency of the requests
that end in a --duration window after --warmup seconds; the clients run
without a break through both, so the window sees the steady state. The first
configuration also measures scale to zero and the cold start after it. The
result is one markdown table, the two configurations side by side. Random
weights never emit a stop token, so every request generates
--max-new-tokens tokens (default 32, about what 5 s of speech needs).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qwen_serve.testing.clips import speech_like  # noqa: E402

MODEL = "qwen-asr-0.6b"
TOKEN = "sk-bench"
APP = "qwen"

CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {},  # the shipped settings
    "old": {"max_batch": 1, "model_pool_size": 2, "threads": 1, "model_num_cpus": 1, "precision": "exact"},
    "exact": {"precision": "exact"},  # batching, f32 (the defaults before precision "fast")
    # candidates for the defaults (--configs defaults,exact,batch16,old)
    "batch16": {"max_batch": 16},
    "batch4": {"max_batch": 4},
    "pool2": {"model_pool_size": 2},  # two replicas sharing the node's cores (the default before)
    # the cost of our metrics (--configs defaults,nometrics): the same with QWEN_METRICS=false
    "nometrics": {"metrics": False},
    # every load packs the weights (--configs nocache,defaults: the cold requests without / with the
    # weight cache, which each run starts empty in its own directory)
    "nocache": {"weight_cache": ""},
}
"""App args on top of the common ones; "defaults" changes nothing."""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clip(seconds: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, speech_like(seconds), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    """--model-dir and --cache-dir, which `checkpoint` reads."""
    parser.add_argument(
        "--model-dir", help="checkpoint to serve as qwen-asr-0.6b (default: a generated random one)"
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "qwen-bench"
    )


def checkpoint(args: argparse.Namespace) -> tuple[Path, str]:
    """The checkpoint to serve and how to name it in the report."""
    from qwen_serve.testing.checkpoint import make_checkpoint

    if args.model_dir:
        return Path(args.model_dir).resolve(), str(args.model_dir)
    preset = "tiny-0.6b" if args.quick else "full-0.6b"
    path = args.cache_dir / preset
    if not (path / "config.json").exists():
        print(f"generating {preset} into {path} ...", flush=True)
        make_checkpoint(path, preset=preset, seed=0, dtype="bf16")
    return path, f"random {preset} checkpoint"


class Server:
    """`serve run` of one configuration in its own working directory."""

    def __init__(self, args: argparse.Namespace, model_dir: Path, workdir: Path, overrides: dict[str, Any]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        models = workdir / "models"
        models.mkdir(parents=True)
        (models / "qwen3-asr-0.6b").symlink_to(model_dir)
        config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
        config["http_options"] = {"host": "127.0.0.1", "port": self.port}
        app_args = config["applications"][0]["args"]
        for key in ("max_batch", "threads", "model_num_cpus", "kv_budget_tokens"):
            app_args.pop(key, None)  # the settings' own defaults, unless the configuration says
        app_args.update(
            models_dir=str(models),
            models={"qwen-asr-1.7b": None},  # only the 0.6B slot
            model_idle_timeout=args.idle_timeout,
            max_new_tokens=args.max_new_tokens,
            max_queued_requests=256,  # closed-loop clients: nobody should see a 503
            autoscaling={"metrics_interval_s": 0.5, "look_back_period_s": 2.0, "upscale_delay_s": 0.0},
            weight_cache=str(workdir / "weight-cache"),  # empty: the first load writes it, later ones map it
        )
        app_args.update(overrides)
        self.config_path = workdir / "serve_config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log = open(workdir / "serve.log", "w")  # noqa: SIM115
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_") or k == "QWEN_LIBRARY"}
        env.update(QWEN_API_TOKEN=TOKEN, RAY_AUTH_MODE="disabled")
        serve = str(Path(sys.executable).with_name("serve"))
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [serve, "run", str(self.config_path)],
            cwd=self.config_path.parent,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while time.monotonic() - t0 < 180:
            if self.proc.poll() is not None:
                raise SystemExit(f"serve run exited; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"serve run did not answer within 180 s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def transcribe(http: httpx.Client, url: str, data: bytes) -> tuple[float, float]:
    """(end-to-end seconds, engine seconds) of one request."""
    t0 = time.perf_counter()
    r = http.post(
        f"{url}/v1/audio/transcriptions",
        headers={"Authorization": f"Bearer {TOKEN}"},
        files={"file": ("clip.wav", data)},
        data={"model": MODEL},
    )
    elapsed = time.perf_counter() - t0
    r.raise_for_status()
    return elapsed, float(r.headers["x-engine-time-ms"]) / 1e3


def running_replicas() -> int:
    """RUNNING replicas of the model, from `serve status` (the CLI, as an operator would)."""
    serve = str(Path(sys.executable).with_name("serve"))
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    out = subprocess.run([serve, "status"], capture_output=True, text=True, env=env, timeout=60).stdout
    status = yaml.safe_load(out) or {}
    deployment = status.get("applications", {}).get(APP, {}).get("deployments", {}).get(f"Model:{MODEL}", {})
    return int((deployment.get("replica_states") or {}).get("RUNNING", 0))


@dataclass
class Cell:
    rps: float
    p50_ms: float
    p99_ms: float
    replicas: int


def closed_loop(
    url: str, data: bytes, clients: int, seconds: float, warmup: float = 0.0
) -> tuple[float, list[float]]:
    """(requests/s, latencies) of `clients` closed-loop clients in a window of `seconds` after
    `warmup`. The clients run without a break from the start of the warm-up to the end of the
    window, so the window sees the steady state, not a burst of clients starting together; a
    request counts if it ends inside the window (rate: those / seconds), and the ones still running
    at its end are waited for and not counted (no tail stretching the window)."""
    ended: list[tuple[float, float]] = []  # (end time, latency)
    errors: list[BaseException] = []
    lock = threading.Lock()
    t0 = time.monotonic()
    w0, w1 = t0 + warmup, t0 + warmup + seconds

    def run() -> None:
        with httpx.Client(timeout=600) as http:
            while time.monotonic() < w1:
                try:
                    e2e, _ = transcribe(http, url, data)
                except BaseException as e:  # reported below
                    errors.append(e)
                    return
                with lock:
                    ended.append((time.monotonic(), e2e))

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"{clients} clients: {errors[0]!r}")
    inside = [lat for end, lat in ended if w0 <= end <= w1]
    return len(inside) / seconds, inside


@dataclass
class Report:
    startup_s: float = 0.0
    cold_s: float = 0.0
    warm_p50_ms: float = 0.0
    warm_p99_ms: float = 0.0
    overhead_p50_ms: float = 0.0
    idle_s: float | None = None
    cold_again_s: float | None = None
    alone_ray_up: tuple[float, float] | None = None  # engine alone while this Ray idles, model unloaded
    cells: dict[int, Cell] = field(default_factory=dict)


def measure(args: argparse.Namespace, model_dir: Path, name: str, data: bytes, first: bool) -> Report:
    report = Report()
    with tempfile.TemporaryDirectory(prefix=f"bench-serve-{name}-") as tmp:
        server = Server(args, model_dir, Path(tmp), CONFIGS[name])
        try:
            report.startup_s = server.start()
            with httpx.Client(timeout=600) as http:
                report.cold_s, _ = transcribe(http, server.url, data)
                warm = [transcribe(http, server.url, data) for _ in range(args.warm)]
            report.warm_p50_ms = percentile([w[0] * 1e3 for w in warm], 50)
            report.warm_p99_ms = percentile([w[0] * 1e3 for w in warm], 99)
            report.overhead_p50_ms = percentile([(w[0] - w[1]) * 1e3 for w in warm], 50)
            if first and not args.quick:
                t0 = time.monotonic()
                while running_replicas() > 0 and time.monotonic() - t0 < 120:
                    time.sleep(1.0)
                report.idle_s = time.monotonic() - t0
                # Ray's own processes keep running (controller, proxy, GCS, dashboard): their share
                report.alone_ray_up = engine_alone(args, model_dir, data)
                with httpx.Client(timeout=600) as http:
                    report.cold_again_s, _ = transcribe(http, server.url, data)
            for clients in args.clients:
                # the warm-up lets the autoscaler settle; the clients run on into the window
                rps, latencies = closed_loop(server.url, data, clients, args.duration, args.warmup)
                report.cells[clients] = Cell(
                    rps, percentile(latencies, 50) * 1e3, percentile(latencies, 99) * 1e3, running_replicas()
                )
                cell = report.cells[clients]
                print(
                    f"  {name}, {clients:2d} client(s): {cell.rps:6.2f} req/s, p50 {cell.p50_ms:.0f} ms, "
                    f"p99 {cell.p99_ms:.0f} ms, {cell.replicas} replica(s)",
                    flush=True,
                )
        finally:
            server.stop()
    return report


def engine_alone(args: argparse.Namespace, model_dir: Path, data: bytes) -> tuple[float, float]:
    """(p50, p99) ms of the clip through one Engine in this process, no Ray: the shipped engine
    settings (precision fast, max batch 8, all cores), args.warm requests one after another. The
    reference for the service's one-client latency."""
    from qwen_serve.engine import Engine

    pcm, _ = sf.read(io.BytesIO(data), dtype="float32")
    with Engine(model_dir, precision="fast", max_batch=8) as engine:
        for _ in range(3):
            engine.transcribe(pcm, max_new_tokens=args.max_new_tokens)
        times = []
        for _ in range(args.warm):
            t0 = time.perf_counter()
            engine.transcribe(pcm, max_new_tokens=args.max_new_tokens)
            times.append((time.perf_counter() - t0) * 1e3)
    return percentile(times, 50), percentile(times, 99)


def table(reports: dict[str, Report], clients: list[int]) -> str:
    names = list(reports)
    head = "| clients | " + " | ".join(f"{n} req/s | {n} p50 ms | {n} p99 ms" for n in names)
    if len(names) == 2:
        head += f" | req/s {names[0]} / {names[1]}"
    lines = [head + " |", "|" + "---|" * (1 + 3 * len(names) + (len(names) == 2))]
    for c in clients:
        cells = [reports[n].cells[c] for n in names]
        row = f"| {c} | " + " | ".join(f"{x.rps:.2f} | {x.p50_ms:.0f} | {x.p99_ms:.0f}" for x in cells)
        if len(names) == 2:
            row += f" | {cells[0].rps / cells[1].rps:.2f}x"
        lines.append(row + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_checkpoint_args(parser)
    parser.add_argument("--quick", action="store_true", help="tiny checkpoint, 1/2/4 clients, short steps")
    parser.add_argument("--configs", default="defaults,old", help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--clients", default=None, help="client counts, comma-separated (default 1,2,4,8,16)")
    parser.add_argument("--seconds", type=float, default=5.0, help="clip length")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--idle-timeout", type=float, default=5.0, help="QWEN_MODEL_IDLE_TIMEOUT for the run")
    parser.add_argument("--warm", type=int, default=None, help="sequential warm requests (default 30)")
    parser.add_argument(
        "--duration", type=float, default=None, help="measured seconds per client count (default 30)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="unmeasured seconds before each, the clients already running (default 10)",
    )
    args = parser.parse_args()
    quick = args.quick
    args.clients = [int(c) for c in (args.clients or ("1,2,4" if quick else "1,2,4,8,16")).split(",")]
    args.warm = args.warm if args.warm is not None else (5 if quick else 30)
    args.duration = args.duration if args.duration is not None else (4.0 if quick else 30.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 10.0)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")

    model_dir, what = checkpoint(args)
    data = clip(args.seconds)
    print(
        f"qwen-serve benchmark: {what}, {args.seconds:g} s clip, {args.max_new_tokens} new tokens, "
        f"{os.cpu_count()} cores ({cpu_model()})",
        flush=True,
    )
    alone = [engine_alone(args, model_dir, data)]
    print(f"engine alone (no Ray), before: p50 {alone[0][0]:.0f} ms, p99 {alone[0][1]:.0f} ms", flush=True)
    reports: dict[str, Report] = {}
    for i, name in enumerate(names):
        print(f"{name}: {CONFIGS[name] or 'shipped settings'}", flush=True)
        reports[name] = measure(args, model_dir, name, data, first=i == 0)
    alone.append(engine_alone(args, model_dir, data))
    print(f"engine alone (no Ray), after: p50 {alone[1][0]:.0f} ms, p99 {alone[1][1]:.0f} ms", flush=True)

    print(
        f"\nCPU: {cpu_model()}, {os.cpu_count()} cores; {what}; {args.seconds:g} s clip, {args.max_new_tokens} new tokens"
    )
    print("| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    rows = [
        ("serve run -> port answering", lambda r: f"{r.startup_s:.1f} s"),
        ("cold request (scale from zero)", lambda r: f"{r.cold_s:.2f} s"),
        ("warm latency p50 / p99", lambda r: f"{r.warm_p50_ms:.0f} / {r.warm_p99_ms:.0f} ms"),
        ("ingress overhead p50", lambda r: f"{r.overhead_p50_ms:.1f} ms"),
    ]
    for label, fmt in rows:
        print(f"| {label} | " + " | ".join(fmt(reports[n]) for n in names) + " |")
    print(
        f"\none Engine alone (no Ray, precision fast, max batch 8, all cores), the same clip one request "
        f"at a time, before / after the configurations: p50 {alone[0][0]:.0f} / {alone[1][0]:.0f} ms, "
        f"p99 {alone[0][1]:.0f} / {alone[1][1]:.0f} ms"
    )
    first = reports[names[0]]
    if first.alone_ray_up is not None:
        print(
            f"the same Engine alone while {names[0]}'s Ray runs idle (model unloaded, in this process): "
            f"p50 {first.alone_ray_up[0]:.0f} ms, p99 {first.alone_ray_up[1]:.0f} ms"
        )
    if first.idle_s is not None and first.cold_again_s is not None:
        print(
            f"\n{names[0]}: idle -> 0 replicas after {first.idle_s:.1f} s (idle timeout {args.idle_timeout:g} s); "
            f"cold request after scale-down {first.cold_again_s:.2f} s"
        )
    print("\n" + table(reports, args.clients))
    print(
        "\nreplicas at the end of each step: "
        + "; ".join(
            f"{n} " + ", ".join(f"{c}: {reports[n].cells[c].replicas}" for c in args.clients) for n in names
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
