"""The service's speed through real HTTP: `serve run` start-up, cold and warm latency, ingress
overhead, and throughput with 1, 2 and 4 concurrent clients at pool size 2.

    .venv/bin/python benchmarks/bench_serve.py                           # tiny checkpoint
    .venv/bin/python benchmarks/bench_serve.py --model-dir /path/full-0.6b   # e.g. a full-size random 0.6B:
        python -m qwen_serve.testing.checkpoint /path/full-0.6b --preset full-0.6b

It writes a Serve config for a temporary models directory, starts
`serve run` as users do (on 127.0.0.1 only), and talks HTTP with keep-alive
clients. "Engine time" is what the replica's Engine reports
(x-engine-time-ms), so "ingress overhead" = end-to-end latency - engine time:
upload, form parsing, audio decoding, Serve routing and the response. Random
weights never emit a stop token, so every request generates --max-new-tokens
tokens (default 32, about what 5 s of speech needs).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

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


class Server:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        models = workdir / "models"
        models.mkdir()
        if args.model_dir:
            (models / "qwen3-asr-0.6b").symlink_to(Path(args.model_dir).resolve())
        else:
            from qwen_serve.testing.checkpoint import make_checkpoint

            make_checkpoint(models / "qwen3-asr-0.6b", preset="tiny-0.6b", seed=0)
        config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
        config["http_options"] = {"host": "127.0.0.1", "port": self.port}
        app_args = config["applications"][0]["args"]
        app_args.update(
            models_dir=str(models),
            models={"qwen-asr-1.7b": None},  # only the 0.6B slot
            model_pool_size=2,
            model_idle_timeout=args.idle_timeout,
            threads=args.threads,
            max_new_tokens=args.max_new_tokens,
            model_num_cpus=0.5,
            max_queued_requests=64,
            autoscaling={"metrics_interval_s": 0.5, "look_back_period_s": 2.0, "upscale_delay_s": 0.0},
        )
        self.config_path = workdir / "serve_config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log = open(workdir / "serve.log", "w")  # noqa: SIM115
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        env = dict(os.environ, QWEN_API_TOKEN=TOKEN, RAY_AUTH_MODE="disabled")
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


def running_replicas(url: str) -> int:
    """RUNNING replicas of the model, from `serve status` (the CLI, as an operator would)."""
    serve = str(Path(sys.executable).with_name("serve"))
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    out = subprocess.run([serve, "status"], capture_output=True, text=True, env=env, timeout=60).stdout
    status = yaml.safe_load(out) or {}
    deployment = status.get("applications", {}).get(APP, {}).get("deployments", {}).get(f"Model:{MODEL}", {})
    return int((deployment.get("replica_states") or {}).get("RUNNING", 0))


def throughput(url: str, data: bytes, clients: int, seconds: float) -> tuple[float, float]:
    """(requests/s, p50 latency) with `clients` closed-loop clients for `seconds`."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run() -> None:
        with httpx.Client(timeout=300) as http:
            while time.monotonic() < stop:
                e2e, _ = transcribe(http, url, data)
                with lock:
                    latencies.append(e2e)

    t0 = time.monotonic()
    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies) / (time.monotonic() - t0), percentile(latencies, 50)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model-dir", help="checkpoint to serve as qwen-asr-0.6b (default: a tiny random one)"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="clip length")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="engine threads per replica")
    parser.add_argument("--idle-timeout", type=float, default=5.0, help="QWEN_MODEL_IDLE_TIMEOUT for the run")
    parser.add_argument("--warm", type=int, default=30, help="sequential warm requests")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per throughput step")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before each step")
    args = parser.parse_args()

    data = clip(args.seconds)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        server = Server(args, Path(tmp))
        try:
            what = args.model_dir or "tiny random 0.6B checkpoint"
            print(
                f"qwen-serve benchmark: {what}, {args.seconds:g} s clip, {args.max_new_tokens} new tokens, "
                f"{args.threads} thread(s)/replica, pool size 2, {os.cpu_count()} cores"
            )
            print(f"serve run -> port answering:        {server.start():7.2f} s")
            with httpx.Client(timeout=300) as http:
                e2e, engine = transcribe(http, server.url, data)
                print(f"cold request (scale from zero):     {e2e:7.2f} s  (engine {engine:.2f} s)")
                warm = [transcribe(http, server.url, data) for _ in range(args.warm)]
            e2e_ms = [w[0] * 1e3 for w in warm]
            overhead_ms = [(w[0] - w[1]) * 1e3 for w in warm]
            print(
                f"warm latency p50 / p99:             {percentile(e2e_ms, 50):7.1f} / {percentile(e2e_ms, 99):.1f} ms "
                f"(engine p50 {percentile([w[1] * 1e3 for w in warm], 50):.1f} ms)"
            )
            print(
                f"ingress overhead p50 / p99:         {percentile(overhead_ms, 50):7.1f} / {percentile(overhead_ms, 99):.1f} ms"
            )

            # Scale to zero, then a second cold start (replica start + model load, fresh metrics path).
            t0 = time.monotonic()
            while running_replicas(server.url) > 0 and time.monotonic() - t0 < 120:
                time.sleep(1.0)
            print(
                f"idle -> 0 replicas after:           {time.monotonic() - t0:7.2f} s (idle timeout {args.idle_timeout:g} s)"
            )
            with httpx.Client(timeout=300) as http:
                e2e, engine = transcribe(http, server.url, data)
            print(f"cold request after scale-down:      {e2e:7.2f} s  (engine {engine:.2f} s)")

            for clients in (1, 2, 4):
                throughput(server.url, data, clients, args.warmup)  # let the autoscaler settle
                rps, p50 = throughput(server.url, data, clients, args.duration)
                print(
                    f"throughput, {clients} client(s):            {rps:7.2f} req/s  (p50 {p50 * 1e3:.0f} ms, "
                    f"{running_replicas(server.url)} replicas)"
                )
        finally:
            server.stop()
            shutil.rmtree(Path(tmp) / "models", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
