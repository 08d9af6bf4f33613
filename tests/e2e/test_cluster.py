"""Two Ray nodes on this machine: a worker node dies under load.

Replicas of one model on both nodes, clients (the openai SDK, streaming and
not) through the proxy; the worker node is removed. Requests in flight on
it fail with a retryable error in OpenAI's envelope (503
`model_unavailable`, with Retry-After when the status line had not gone out
yet; an SSE error event with the same envelope when the stream had started),
the others succeed, and once a new node joins the pool is back to two
replicas. The cluster runs in its own process (cluster_scenario.py): Ray
allows one `ray.init` per process, and the e2e session holds one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_worker_node_dies_under_load(tiny_dirs: dict[str, Path]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_") or k == "QWEN_LIBRARY"}
    run = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("cluster_scenario.py")), str(tiny_dirs["tiny-1.7b"])],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    requests, kill = report["requests"], report["phases"]["kill"]

    failed = [r for r in requests if r["status"] != 200]
    assert failed, "the node died without a request in flight on it"
    for r in failed:
        assert (r["code"], r["type"]) == ("model_unavailable", "service_unavailable_error"), r
        if r["status"] is not None:  # the answer's status line had not gone out: a plain 503
            assert r["status"] == 503 and r["retry_after"] == "10", r
        else:  # a stream that had started: its error event (the SDK raises it)
            assert r["stream"] and r["error"] == "APIError", r
        assert r["start"] < kill + 10, r  # only what was on (or routed to) the dead replica
    assert any(r["status"] == 200 and r["end"] < kill for r in requests)
    survivors = [r for r in requests if r["status"] == 200 and r["start"] > kill]
    assert survivors, "nothing was served after the kill"
    assert len(failed) < len(requests) / 2, failed
    assert report["phases"]["running_after_kill"] == 1
    assert report["after_recovery"] == [True] * 4  # the pool recovered on the new node
