"""A two-node Ray cluster on this machine, run as its own process by test_cluster.py.

    python tests/e2e/cluster_scenario.py CHECKPOINT_DIR      # prints one JSON object

Ray allows one `ray.init` per process and the e2e session already holds one,
so this runs apart: a head node and a worker node of one CPU each
(`ray.cluster_utils.Cluster`), the service with one model whose two
replicas need a CPU each, so that one lands on each node (the ingress and
the first replica start before the worker joins: both on the head). Clients
(the openai SDK) load it through the proxy; the worker node is removed under
load; then a new worker joins. What every request got is printed for the
test to judge.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from typing import Any

TOKEN = "sk-cluster"
MODEL = "qwen-asr-1.7b"
CLIENTS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def main(checkpoint: str) -> dict[str, Any]:
    import ray
    from openai import OpenAI
    from ray import serve
    from ray.cluster_utils import Cluster

    from qwen_serve.app import build_app, deployment_name

    sys.path.insert(0, os.path.dirname(__file__))
    from conftest import wav  # the e2e clips

    report: dict[str, Any] = {"requests": [], "phases": {}}
    weight_cache = tempfile.mkdtemp(prefix="qwen-weight-cache-")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    ray.init(address=cluster.address, namespace="serve", log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        args = {
            "api_token": TOKEN,
            "models": {"qwen-asr-0.6b": None, MODEL: {"path": checkpoint}},
            "model_pool_size": 2,
            "model_idle_timeout": 0,
            "autoscaling": {"min_replicas": 2, "initial_replicas": 2},
            "model_num_cpus": 1,  # one replica per one-CPU node
            "threads": 1,
            "max_new_tokens": 200,
            "weight_cache": weight_cache,  # both nodes are this machine: the second replica maps the file
        }
        # Not waiting for it to run: its second replica needs the worker node added below.
        serve.run_many(
            [serve.api.RunTarget(build_app(args), name="qwen", route_prefix="/")],
            wait_for_applications_running=False,
        )
        name = deployment_name(MODEL)

        def states() -> dict[str, int]:
            status = serve.status().applications["qwen"].deployments.get(name)
            if status is None:
                return {}
            return {str(getattr(k, "value", k)): int(v) for k, v in status.replica_states.items()}

        def wait_running(count: int, timeout: float) -> float:
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout:
                if states().get("RUNNING", 0) == count:
                    return time.monotonic() - t0
                time.sleep(0.25)
            raise RuntimeError(f"{states()} after {timeout} s, wanted {count} running")

        log("app deployed")
        wait_running(1, 120)  # one on the head; the other waits for a CPU
        log("one replica running")
        worker = cluster.add_node(num_cpus=1)
        report["phases"]["both_running_s"] = wait_running(2, 120)
        log("two replicas running")

        base_url = f"http://127.0.0.1:{port}/v1"
        stop = threading.Event()
        lock = threading.Lock()

        def client(i: int) -> None:
            c = OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0, timeout=120)
            n = 0
            while not stop.is_set():
                data = wav(2.0 + (i % 3), seed=400 + i * 100 + n)
                stream = (i + n) % 2 == 1
                t0 = time.monotonic()
                entry: dict[str, Any] = {"client": i, "stream": stream, "start": t0}
                try:
                    if stream:
                        events = list(
                            c.audio.transcriptions.create(model=MODEL, file=("c.wav", data), stream=True)
                        )
                        assert events[-1].type == "transcript.text.done"
                    else:
                        c.audio.transcriptions.create(model=MODEL, file=("c.wav", data))
                    entry["status"] = 200
                except Exception as e:  # the test judges what came back
                    response = getattr(e, "response", None)
                    body = getattr(e, "body", None)
                    entry["status"] = getattr(e, "status_code", None)
                    entry["error"] = type(e).__name__
                    entry["code"] = body.get("code") if isinstance(body, dict) else None
                    entry["type"] = body.get("type") if isinstance(body, dict) else None
                    entry["retry_after"] = (
                        response.headers.get("retry-after") if response is not None else None
                    )
                entry["end"] = time.monotonic()
                with lock:
                    report["requests"].append(entry)
                n += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        # Both replicas busy, and some requests served, before the kill: at least 6 s, and on a slow
        # machine until two requests have come back (a fixed wait alone once saw none back).
        started = time.monotonic()
        while time.monotonic() - started < 60:
            with lock:
                served = sum(1 for r in report["requests"] if r.get("status") == 200)
            if served >= 2 and time.monotonic() - started >= 6.0:
                break
            time.sleep(0.1)
        report["phases"]["before_kill_s"] = time.monotonic() - started
        log(f"killing the worker; {len(report['requests'])} requests done")
        report["phases"]["kill"] = time.monotonic()
        cluster.remove_node(worker)  # the worker node dies with its replica and requests
        time.sleep(8.0)  # the survivors keep serving
        stop.set()
        for t in threads:
            t.join(180)
        log(f"clients stopped; {len(report['requests'])} requests done")
        report["phases"]["running_after_kill"] = states().get("RUNNING", 0)

        cluster.add_node(num_cpus=1)  # a new worker: the pool recovers
        report["phases"]["recovered_s"] = wait_running(2, 180)
        log("recovered")
        c = OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0, timeout=120)
        report["after_recovery"] = [
            c.audio.transcriptions.create(model=MODEL, file=("c.wav", wav(1.0, seed=900 + k))).text
            is not None
            for k in range(4)
        ]
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(weight_cache, ignore_errors=True)
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])), flush=True)
