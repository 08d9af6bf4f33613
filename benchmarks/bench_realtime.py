"""Live transcription through /v1/realtime: latency after speech and how many sessions keep up.

    .venv/bin/python benchmarks/bench_realtime.py               # full-size random 0.6B, 1/2/4/8 sessions, server VAD
    .venv/bin/python benchmarks/bench_realtime.py --manual      # the client commits at speech end (push-to-talk)
    .venv/bin/python benchmarks/bench_realtime.py --quick       # tiny checkpoint, 1/2 sessions: does it run?
    .venv/bin/python benchmarks/bench_realtime.py --model-dir models/qwen3-asr-0.6b   # real weights

Starts the service once (bench_serve's `Server`: `serve run` with the shipped
settings, on 127.0.0.1 only), warms the model with one item, then for each N
in --sessions opens N realtime transcription sessions at once
(`/v1/realtime?intent=transcription`, the `websockets` package, Bearer token)
and replays into each, **in real time**, --utterances utterances: --speech
seconds of speech-like signal (qwen_serve/testing/clips.py `speech_like`,
which Silero VAD detects as speech) followed by --silence seconds of silence,
as 24 kHz PCM16 in appends of 100 ms, each sent when the wall clock reaches
its time. The sessions start spread evenly over one utterance period
(--together starts them all at once: every utterance of every session ends
at the same moment, the worst case for the batching engine).

Modes:

    server VAD (default)  `turn_detection: server_vad` (threshold 0.5, prefix 300 ms, silence
                          --silence-duration-ms, default 500 as OpenAI's): the server commits a turn
                          once it has heard that much silence, so every figure after speech end
                          includes that wait.
    --manual              `turn_detection: null`; push-to-talk: appends only while speaking, an
                          `input_audio_buffer.commit` right after the last speech append.

Measured per utterance (times on the client's clock):

    speech end          the moment the append holding the utterance's last speech sample was sent
    end -> committed    speech end to `input_audio_buffer.committed` (VAD: the silence wait)
    end -> completed    speech end to `conversation.item.input_audio_transcription.completed`
    start -> 1st delta  the moment the first speech append was sent to the item's first `delta`
                        (items are transcribed after they are committed, so today this is about
                        the utterance's length plus end -> completed)

A session **keeps up in real time** when every one of its utterances is
completed before the next utterance's speech ends (end -> completed <
--speech + --silence seconds; the last one within the same time after its
end): then at most one item is ever waiting, however long the session runs.
N sessions are in real time when all N keep up, no item fails or is split
or merged by the VAD, and the client's own sending never slipped more than
--max-slip behind the wall clock. The report gives the largest N in real time.

Random weights never emit a stop token, so every item generates
--max-new-tokens tokens (the `max_new_tokens` app arg, default 32, about what
5 s of speech needs). Targets (issue 10): completed within 0.5 s of speech end
for a 5 s utterance with one session; at least 4 sessions in real time.
Bounded: every session's events are awaited at most one utterance period after
its last speech end (the warm-up item, which loads the model, 180 s); the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soxr
from bench_serve import (
    MODEL,
    TOKEN,
    Server,
    add_checkpoint_args,
    checkpoint,
    cpu_model,
    percentile,
    running_replicas,
)
from websockets.asyncio.client import ClientConnection, connect

from qwen_serve.testing.clips import speech_like

RATE = 24000
CHUNK_S = 0.1
CHUNK = int(RATE * CHUNK_S)
"""Samples per append (100 ms, as a microphone client sends)."""
TARGET_END_TO_COMPLETED_S = 0.5
TARGET_SESSIONS = 4


def pcm24(seconds: float, seed: int) -> np.ndarray:
    """Speech-like signal as 24 kHz int16."""
    x = soxr.resample(speech_like(seconds, seed=seed), 16000, RATE)
    return np.clip(np.round(x * 32767), -32768, 32767).astype("<i2")


@dataclass
class Utterance:
    start: float = 0.0
    """When the append with its first speech sample was sent (monotonic)."""
    end: float = 0.0
    """When the append with its last speech sample was sent."""
    committed: float | None = None
    first_delta: float | None = None
    completed: float | None = None


@dataclass
class SessionRun:
    utterances: list[Utterance] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    """Item ids in commit order (the k-th item is the k-th utterance's)."""
    first_delta: dict[str, float] = field(default_factory=dict)
    completed: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)
    slip_s: float = 0.0
    """Largest delay of an append behind its wall-clock time."""


async def expect(ws: ClientConnection, kind: str, timeout: float = 60.0) -> dict[str, Any]:
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if event["type"] == "error":
            raise SystemExit(f"realtime error: {event['error']}")
        if event["type"] == kind:
            return event


async def open_session(url: str, manual: bool, silence_ms: int) -> ClientConnection:
    ws = await connect(
        f"{url.replace('http://', 'ws://')}/v1/realtime?intent=transcription&model={MODEL}",
        additional_headers={"Authorization": f"Bearer {TOKEN}"},
        max_size=None,
        open_timeout=60,
    )
    await expect(ws, "session.created")
    turn = (
        None
        if manual
        else {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": silence_ms,
        }
    )
    session = {
        "type": "transcription",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": RATE},
                "transcription": {"model": MODEL},
                "turn_detection": turn,
            }
        },
    }
    await ws.send(json.dumps({"type": "session.update", "session": session}))
    await expect(ws, "session.updated")
    return ws


async def append(ws: ClientConnection, pcm: np.ndarray) -> None:
    await ws.send(
        json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm.tobytes()).decode()})
    )


async def receive(ws: ClientConnection, run: SessionRun) -> None:
    """Records the time of every item event until the connection closes (or the task is cancelled)."""
    async for message in ws:
        now = time.monotonic()
        event = json.loads(message)
        kind = event["type"]
        if kind == "input_audio_buffer.committed":
            run.items.append(event["item_id"])
            k = len(run.items) - 1
            if k < len(run.utterances):
                run.utterances[k].committed = now
        elif kind == "conversation.item.input_audio_transcription.delta":
            run.first_delta.setdefault(event["item_id"], now)
        elif kind == "conversation.item.input_audio_transcription.completed":
            run.completed[event["item_id"]] = now
            run.output_tokens.append(int(event["usage"]["output_tokens"]))
        elif kind in ("conversation.item.input_audio_transcription.failed", "error"):
            run.problems.append(f"{kind}: {event.get('error')}")


async def one_session(
    ws: ClientConnection, args: argparse.Namespace, speech: list[np.ndarray], t0: float
) -> SessionRun:
    """Replays `speech` into the open session from time `t0` on (monotonic) and records its events."""
    run = SessionRun()
    reader = asyncio.create_task(receive(ws, run))
    try:
        silence = np.zeros(CHUNK, dtype="<i2")
        n_speech = int(args.speech / CHUNK_S)
        n_silence = int(args.silence / CHUNK_S)
        k = 0  # appends (or, in manual mode, 100 ms slots) so far
        for pcm in speech:
            u = Utterance()
            run.utterances.append(u)
            for i in range(n_speech + n_silence):
                delay = t0 + k * CHUNK_S - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif -delay > run.slip_s:
                    run.slip_s = -delay
                k += 1
                if i < n_speech:
                    await append(ws, pcm[i * CHUNK : (i + 1) * CHUNK])
                    if i == 0:
                        u.start = time.monotonic()
                    if i == n_speech - 1:
                        u.end = time.monotonic()
                        if args.manual:
                            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
                elif not args.manual:  # the microphone keeps sending; push-to-talk sends nothing
                    await append(ws, silence)
        # the last item: at most one utterance period after its speech end (the warm-up item: `wait`, as it loads the model)
        deadline = run.utterances[-1].end + max(args.speech + args.silence, args.wait)
        while len(run.completed) + len(run.problems) < len(speech) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await ws.close()
    for u, item in zip(run.utterances, run.items, strict=False):
        u.first_delta = run.first_delta.get(item)
        u.completed = run.completed.get(item)
    if len(run.items) != len(speech):
        run.problems.append(f"{len(run.items)} items committed for {len(speech)} utterances")
    return run


@dataclass
class Step:
    sessions: int
    end_to_committed: list[float]
    end_to_completed: list[float]
    start_to_delta: list[float]
    keeping_up: int
    """Sessions that kept up."""
    slip_s: float
    problems: list[str]
    replicas: int
    output_tokens: list[int] = field(default_factory=list)

    @property
    def realtime(self) -> bool:
        return self.keeping_up == self.sessions and not self.problems


async def measure(url: str, args: argparse.Namespace, n: int) -> Step:
    period = args.speech + args.silence
    speech = [pcm24(args.speech, seed=s) for s in range(args.utterances)]
    opened = await asyncio.gather(
        *(open_session(url, args.manual, args.silence_duration_ms) for _ in range(n)), return_exceptions=True
    )
    sessions = [ws for ws in opened if isinstance(ws, ClientConnection)]
    if len(sessions) < n:
        await asyncio.gather(*(ws.close() for ws in sessions))
        raise SystemExit(f"{n} sessions: {next(e for e in opened if isinstance(e, BaseException))!r}")
    t0 = time.monotonic() + 0.2
    offsets = [0.0] * n if args.together else [i * period / n for i in range(n)]
    runs = await asyncio.gather(
        *(one_session(ws, args, speech, t0 + offsets[i]) for i, ws in enumerate(sessions))
    )
    step = Step(n, [], [], [], 0, max(r.slip_s for r in runs), [], 0)
    for i, run in enumerate(runs):
        kept = not run.problems
        for u in run.utterances:
            if u.committed is not None:
                step.end_to_committed.append(u.committed - u.end)
            if u.first_delta is not None:
                step.start_to_delta.append(u.first_delta - u.start)
            if u.completed is None or u.completed - u.end >= period:
                kept = False
            if u.completed is not None:
                step.end_to_completed.append(u.completed - u.end)
        step.keeping_up += kept
        step.output_tokens += run.output_tokens
        step.problems += [f"session {i}: {p}" for p in run.problems]
    if step.slip_s > args.max_slip:
        step.problems.append(f"the client's sending slipped {step.slip_s:.2f} s behind the wall clock")
    return step


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1e3:.0f}" if values else "-"


def label(live: bool, cache: bool) -> str:
    return f"text during speech {'on' if live else 'off'}, libqwen's caches {'on' if cache else 'off'}"


def run_config(args: argparse.Namespace, model_dir: Path, live: bool, cache: bool) -> list[Step]:
    """One `serve run` with QWEN_REALTIME_LIVE_TEXT = live and libqwen's caches at their defaults
    (cache) or off (QWEN_ENCODER_CACHE_WINDOWS, QWEN_PREFIX_CACHE_TOKENS 0): the warm-up item, then
    each N."""
    print(f"-- {label(live, cache)}", flush=True)
    steps: list[Step] = []
    overrides: dict[str, object] = {"realtime_live_text": live}
    if not cache:
        overrides.update(encoder_cache_windows=0, prefix_cache_tokens=0)
    with tempfile.TemporaryDirectory(prefix="bench-realtime-") as tmp:
        server = Server(args, model_dir, Path(tmp), overrides)
        try:
            print(f"serve run -> port answering in {server.start():.1f} s", flush=True)
            t0 = time.monotonic()
            warm = argparse.Namespace(
                **{**vars(args), "utterances": 1, "manual": True, "silence": 0.0, "wait": 180.0}
            )
            asyncio.run(measure(server.url, warm, 1))  # loads the model; not reported
            print(f"warm-up item (model load) {time.monotonic() - t0:.1f} s", flush=True)
            for n in args.sessions:
                step = asyncio.run(measure(server.url, args, n))
                step.replicas = running_replicas()
                steps.append(step)
                print(
                    f"  {n} session(s): end->completed p50 {ms(step.end_to_completed, 50)} ms "
                    f"p95 {ms(step.end_to_completed, 95)} ms; {step.keeping_up}/{n} keep up; "
                    f"{step.replicas} replica(s); tokens per item {min(step.output_tokens, default=0)}"
                    f"-{max(step.output_tokens, default=0)}"
                    + (f"; {'; '.join(step.problems[:3])}" if step.problems else ""),
                    flush=True,
                )
        finally:
            server.stop()

    return steps


def report(args: argparse.Namespace, steps: list[Step], live: bool, cache: bool) -> None:
    print(f"\n{label(live, cache)}:")
    print(
        "| sessions | end -> committed p50 / p95 ms | end -> completed p50 / p95 ms "
        "| start -> 1st delta p50 / p95 ms | keep up | max send slip ms | model replicas | real time |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for s in steps:
        print(
            f"| {s.sessions} | {ms(s.end_to_committed, 50)} / {ms(s.end_to_committed, 95)} "
            f"| {ms(s.end_to_completed, 50)} / {ms(s.end_to_completed, 95)} "
            f"| {ms(s.start_to_delta, 50)} / {ms(s.start_to_delta, 95)} "
            f"| {s.keeping_up}/{s.sessions} | {s.slip_s * 1e3:.0f} | {s.replicas} | {'yes' if s.realtime else 'no'} |"
        )
    realtime = [s.sessions for s in steps if s.realtime]
    largest = max(realtime) if realtime else 0
    if steps and not any(s.start_to_delta for s in steps):
        print("\nno deltas: every transcript was empty (these weights decoded to no text); real weights")
        print("give the speech start -> first delta column")
    one = next((s for s in steps if s.sessions == 1), None)
    print(f"\nlargest N in real time: {largest or 'none'} (target >= {TARGET_SESSIONS})")
    if one is not None and one.end_to_completed:
        p50 = percentile(one.end_to_completed, 50)
        print(
            f"1 session, speech end -> completed p50 {p50 * 1e3:.0f} ms (target <= {TARGET_END_TO_COMPLETED_S * 1e3:.0f} ms "
            f"for a 5 s utterance: {'met' if p50 <= TARGET_END_TO_COMPLETED_S else 'not met'})"
            + ("" if args.manual else f"; includes the VAD's {args.silence_duration_ms} ms silence wait")
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_checkpoint_args(parser)
    parser.add_argument(
        "--quick", action="store_true", help="tiny checkpoint, 1/2 sessions, 2 short utterances"
    )
    parser.add_argument(
        "--manual", action="store_true", help="no server VAD: commit at speech end (push-to-talk)"
    )
    parser.add_argument("--sessions", default=None, help="session counts, comma-separated (default 1,2,4,8)")
    parser.add_argument("--utterances", type=int, default=None, help="utterances per session (default 4)")
    parser.add_argument(
        "--speech", type=float, default=None, help="seconds of speech per utterance (default 5)"
    )
    parser.add_argument("--silence", type=float, default=2.0, help="seconds of silence after each utterance")
    parser.add_argument(
        "--silence-duration-ms", type=int, default=500, help="server VAD's silence_duration_ms"
    )
    parser.add_argument(
        "--together", action="store_true", help="start all sessions at once (default: spread)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=32, help="the max_new_tokens app arg")
    parser.add_argument(
        "--live",
        choices=("on", "off", "both"),
        default="both",
        help="text during speech (QWEN_REALTIME_LIVE_TEXT): on, off, or both one after the other (default)",
    )
    parser.add_argument(
        "--caches",
        choices=("on", "off", "both"),
        default="on",
        help="libqwen's encoder window and prefix caches (QWEN_ENCODER_CACHE_WINDOWS, QWEN_PREFIX_CACHE_TOKENS): "
        "on (the defaults), off (0), or both; they matter for turns over 8 s (--speech)",
    )
    parser.add_argument("--max-slip", type=float, default=0.2, help="seconds the client's sending may slip")
    args = parser.parse_args()
    quick = args.quick
    args.sessions = [int(c) for c in (args.sessions or ("1,2" if quick else "1,2,4,8")).split(",")]
    args.utterances = args.utterances or (2 if quick else 4)
    args.speech = args.speech or (2.0 if quick else 5.0)
    args.wait = 0.0
    args.idle_timeout = 600.0  # keep the model loaded between steps (bench_serve.Server's app arg)
    if args.silence * 1000 < args.silence_duration_ms + 300 and not args.manual:
        parser.error("--silence must exceed the VAD's silence duration by 0.3 s at least")

    model_dir, what = checkpoint(args)
    mode = (
        "manual commit at speech end"
        if args.manual
        else f"server VAD (silence {args.silence_duration_ms} ms)"
    )
    setup = (
        f"{what}; {args.speech:g} s speech + {args.silence:g} s silence x {args.utterances} per session; "
        f"{mode}; {args.max_new_tokens} new tokens per item; sessions "
        + ("started together" if args.together else "spread over one period")
    )
    print(f"realtime benchmark on {os.cpu_count()} cores ({cpu_model()}): {setup}", flush=True)
    choice = {"on": [True], "off": [False], "both": [False, True]}
    configs = [(live, cache) for live in choice[args.live] for cache in choice[args.caches]]
    results = [(live, cache, run_config(args, model_dir, live, cache)) for live, cache in configs]
    print(f"\nCPU: {cpu_model()}, {os.cpu_count()} cores; {setup}")
    for live, cache, steps in results:
        report(args, steps, live, cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
