"""Continuous batching in libqwen: decode step time by batch size, and a long file's wall time.

    .venv/bin/python benchmarks/bench_batch.py                      # full-size random 0.6B, 2 threads
    .venv/bin/python benchmarks/bench_batch.py --preset full-1.7b --long-seconds 0
    .venv/bin/python benchmarks/bench_batch.py --precision exact,fast --clients "" --long-seconds 0
    .venv/bin/python benchmarks/bench_batch.py --precision fast --clients "" --long-seconds 0 --clip-seconds 30

1. Decode step: B sequences (5 s clips, --clip-seconds) decode together; one step advances all of
   them with one pass over the weights. Reported per batch size: ms per step, ms per token,
   tokens/s, and the step time against batch 1 (sequential decoding costs B x the batch-1 step),
   over --rounds sweeps of all the batch sizes one after another, each round's ratio against its
   own batch-1 step (a shared VM's slow spells then hit both sides of a ratio alike).
   Then one more sequence is admitted while the B decode: the steps that also run its encoder
   window, and those that also run a prefill chunk (with fast, inside the decode pass).
2. The engine alone (no Ray): one 5 s request's latency and stages (the reference for the
   service's one-client latency), and requests/s of --clients closed-loop threads, 32 tokens each.
3. Long audio: a file of --long-seconds (default 600) transcribed by `Engine.transcribe` with
   max_batch 1 (its 60 s chunks one after another, the old behaviour) and with --max-batch (its
   chunks as parallel sequences), --long-tokens tokens per chunk (random weights never stop early;
   real speech gives ~150-200 tokens a minute).

Weights are random (generated in the exact HF layout, bf16), so the text means nothing; the
work per token is the real model's. Name the CPU next to every figure (printed first).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from bench_engine import add_checkpoint_args, batch_step_ms, checkpoint_dir, test_audio
from bench_serve import cpu_model

from qwen_serve.engine import Engine
from qwen_serve.engine._native import NativeModel


def decode_steps(
    model_dir: Path,
    threads: int,
    batches: list[int],
    steps: int,
    precision: str = "exact",
    rounds: int = 3,
    clip_seconds: float = 5.0,
) -> list[dict[str, Any]]:
    """Per batch size: the median decode step of each of `rounds` sweeps over the batch sizes (the
    sweeps follow each other, so a slow spell of a shared machine hits every size alike), and per
    round the step against that round's batch-1 step."""
    pcm = test_audio(clip_seconds)
    rows: list[dict[str, Any]] = [{"batch": b, "steps": [], "ratios": []} for b in batches]
    with NativeModel(model_dir, threads=threads, max_sequences=max(batches) + 1, precision=precision) as m:
        print(f"\nprecision {precision}: kernels {m.kernels}")
        n_audio = m.audio_token_count(pcm.size)
        prompt = (
            [m.info("audio_start_token_id")] + [m.audio_token_id] * n_audio + [m.info("audio_end_token_id")]
        )
        for _ in range(rounds):
            round_ms = [batch_step_ms(m, pcm, prompt, b, steps) for b in batches]
            for r, ms in zip(rows, round_ms, strict=True):
                r["steps"].append(ms)
                r["ratios"].append(ms / round_ms[0])
        for r in rows:
            r["step_ms"] = statistics.median(r["steps"])
            r["token_ms"] = r["step_ms"] / r["batch"]
            r["tokens_s"] = r["batch"] * 1e3 / r["step_ms"]
            r.update(admitting_steps(m, pcm, prompt, r["batch"]))
    return rows


def admitting_steps(
    m: NativeModel, pcm: Any, prompt: list[int], batch: int, reps: int = 3
) -> dict[str, float]:
    """With `batch` sequences decoding, one more is added: the median time of the steps that also
    run its encoder window and of those that also run a prefill chunk (with precision fast the chunk
    runs inside the decode pass: libqwen's info key prefill_joined counts them)."""
    enc: list[float] = []
    pre: list[float] = []
    for _ in range(reps):
        seqs = [m.seq_add(pcm, prompt, max_new_tokens=400, eos_ids=[-1]) for _ in range(batch)]
        started: set[int] = set()
        while len(started) < batch:
            started.update(s for s, t, *_ in (m.step() or []) if t >= 0)
        extra = m.seq_add(pcm, prompt, max_new_tokens=400, eos_ids=[-1])
        joined0 = m.context_info("prefill_joined")
        first = True
        while True:  # its encoder step, then its prefill chunks until its first token
            t0 = time.perf_counter()
            events = m.step() or []
            (enc if first else pre).append((time.perf_counter() - t0) * 1e3)
            first = False
            if any(s == extra and t >= 0 for s, t, *_ in events):
                break
        joined = m.context_info("prefill_joined") - joined0
        for s in seqs + [extra]:
            m.seq_abort(s)
    return {
        "encoder_step_ms": statistics.median(enc),
        "prefill_step_ms": statistics.median(pre),
        "joined": joined,
    }


def engine_clients(
    model_dir: Path, threads: int, clients: list[int], seconds: float, precision: str = "exact"
) -> None:
    from qwen_serve.testing.clips import speech_like

    pcm = speech_like(5.0, seed=0)
    with Engine(model_dir, threads=threads, max_batch=max(clients + [1]), precision=precision) as e:
        e.transcribe(pcm, max_new_tokens=32)  # warm
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            r = e.transcribe(pcm, max_new_tokens=32)
            runs.append((time.perf_counter() - t0, r.timings))
        wall, t = min(runs, key=lambda x: x[0])
        print(
            f"\n[{precision}] one 5 s request alone: {wall:.2f} s (encoder {t.encoder_ms:.0f} ms, prefill "
            f"{t.prefill_ms:.0f} ms, decode {t.decode_ms:.0f} ms)"
        )
        for n in clients:
            done: list[float] = []
            stop = time.perf_counter() + seconds

            def loop(done: list[float], stop: float) -> None:
                while time.perf_counter() < stop:
                    t0 = time.perf_counter()
                    e.transcribe(pcm, max_new_tokens=32)
                    done.append(time.perf_counter() - t0)

            workers = [threading.Thread(target=loop, args=(done, stop)) for _ in range(n)]
            t0 = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            p50 = sorted(done)[len(done) // 2]
            print(
                f"[{precision}] {n} closed-loop clients: {len(done) / (time.perf_counter() - t0):.2f} req/s, p50 {p50:.1f} s"
            )


def long_file(
    model_dir: Path, threads: int, seconds: float, tokens: int, max_batch: int, precision: str = "exact"
) -> dict[str, float]:
    pcm = test_audio(seconds)
    with Engine(model_dir, threads=threads, max_batch=max_batch, precision=precision) as e:
        t0 = time.perf_counter()
        r = e.transcribe(pcm, max_new_tokens=tokens)
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "chunks": len(r.segments), "tokens": len(r.token_ids)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,2,4,8,16")
    p.add_argument("--steps", type=int, default=12, help="decode steps timed per batch size (median kept)")
    p.add_argument("--rounds", type=int, default=3, help="sweeps over the batch sizes, one after another")
    p.add_argument("--clip-seconds", type=float, default=5.0, help="audio of each decoding sequence")
    p.add_argument("--long-seconds", type=float, default=600.0, help="0 skips the long-file part")
    p.add_argument("--long-tokens", type=int, default=160, help="tokens per 60 s chunk")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--clients", default="4,8", help="engine-alone closed-loop clients; empty skips")
    p.add_argument("--client-seconds", type=float, default=40.0)
    p.add_argument("--precision", default="exact,fast", help="precisions to measure, each in turn")
    args = p.parse_args()
    args.model_dir = checkpoint_dir(args)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs; {args.threads} threads; checkpoint {args.model_dir}")

    precisions = args.precision.split(",")
    for precision in precisions:
        rows = decode_steps(
            args.model_dir,
            args.threads,
            [int(b) for b in args.batches.split(",")],
            args.steps,
            precision,
            args.rounds,
            args.clip_seconds,
        )
        one = rows[0]["step_ms"]
        print(
            f"{args.clip_seconds:g} s clips, {args.rounds} rounds; step: median of the rounds' medians (each round's in"
            " brackets); against batch 1: median of the rounds' ratios [range]"
        )
        print(
            "| batch | step | per token | tokens/s | step / batch-1 step | sequential (B x batch-1) "
            "| + admitting one: encoder step, prefill step (chunks in the decode pass) |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            each = "/".join(f"{x:.0f}" for x in r["steps"])
            print(
                f"| {r['batch']} | {r['step_ms']:.1f} ms ({each}) | {r['token_ms']:.1f} ms | {r['tokens_s']:.1f} | "
                f"{statistics.median(r['ratios']):.2f}x [{min(r['ratios']):.2f}-{max(r['ratios']):.2f}] | "
                f"{r['batch'] * one:.0f} ms | {r['encoder_step_ms']:.0f} ms, "
                f"{r['prefill_step_ms']:.0f} ms ({r['joined']:.0f} of its chunks joined) |"
            )

    if args.clients:
        for precision in precisions:
            engine_clients(
                args.model_dir,
                args.threads,
                [int(c) for c in args.clients.split(",")],
                args.client_seconds,
                precision,
            )

    if args.long_seconds > 0:
        print(f"\n{args.long_seconds:g} s file, {args.long_tokens} tokens per chunk:")
        print("| engine | chunks | tokens | wall time |")
        print("|---|---|---|---|")
        base = 0.0
        for precision in precisions:
            for mb in (1, args.max_batch):
                r = long_file(
                    args.model_dir, args.threads, args.long_seconds, args.long_tokens, mb, precision
                )
                base = base or r["wall_s"]
                how = "chunks in turn" if mb == 1 else "chunks in parallel"
                print(
                    f"| {precision}, max_batch {mb} ({how}) | {r['chunks']} | {r['tokens']} | "
                    f"{r['wall_s']:.1f} s ({base / r['wall_s']:.2f}x) |"
                )


if __name__ == "__main__":
    main()
