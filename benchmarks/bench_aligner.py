"""Forced-aligner speed: libqwen's Aligner against the official Qwen3ForcedAligner, same run.

    .venv/bin/python benchmarks/bench_aligner.py                       # full-size random aligner, 10 s and 60 s
    .venv/bin/python benchmarks/bench_aligner.py --seconds 10,60,180 --precision exact,fast
    .venv/bin/python benchmarks/bench_aligner.py --model-dir models/qwen3-forcedaligner-0.6b   # real weights
    .venv/bin/python benchmarks/bench_aligner.py --serve      # what word timestamps add through the service

One forward pass per clip: mel, encoder, the decoder over the audio tokens and
the transcript with its `<timestamp>` markers, and the head at the markers.
The transcript is English-like text at 2.5 words a second (what speech has);
both sides get the same audio, text and language. Each side runs in its own
subprocess (peak RSS is its own), best of --repeat runs. Weights are random
(the real dimensions of Qwen3-ForcedAligner-0.6B, bf16), so the times mean
nothing as timestamps; the work is the real model's. The CPU is printed first:
name it next to every figure.

--serve: `serve run` with the full-size random 0.6B model and this aligner (the
shipped settings), then sequential warm requests of one clip per --seconds
length, alternating `json` with `verbose_json` + `timestamp_granularities[]=word`:
p50 latency of each and the difference, which is what word timestamps add
(the aligner's pass, its Serve hop, and its replica's first load not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_engine import peak_rss_mb, test_audio
from bench_serve import cpu_model

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "bright",
    "stars",
    "shine",
    "above",
    "quiet",
    "hills",
    "and",
    "people",
    "talk",
    "about",
    "music",
    "weather",
    "travel",
    "plans",
    "friends",
    "dinner",
    "books",
    "science",
    "history",
]


def transcript(seconds: float) -> str:
    n = max(1, int(seconds * 2.5))
    return " ".join(WORDS[i % len(WORDS)] for i in range(n)) + "."


def run_side(args: argparse.Namespace) -> dict[str, float]:
    seconds = args.one_seconds
    pcm = test_audio(seconds)
    text = transcript(seconds)
    best = float("inf")
    if args.side == "official":
        import torch
        from qwen_asr.inference.qwen3_forced_aligner import Qwen3ForcedAligner

        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        model = Qwen3ForcedAligner.from_pretrained(str(args.model_dir), dtype=torch.float32)
        load = time.perf_counter() - t0
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            items = model.align(audio=(pcm, 16000), text=text, language="English")
            best = min(best, time.perf_counter() - t0)
        n_words = len(items[0])
    else:
        from qwen_serve.engine import Aligner

        t0 = time.perf_counter()
        aligner = Aligner(args.model_dir, threads=args.threads, precision=args.side)
        load = time.perf_counter() - t0
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            words = aligner.align(pcm, text, "English")
            best = min(best, time.perf_counter() - t0)
        n_words = len(words)
        aligner.close()
    rss = peak_rss_mb()  # not ru_maxrss: it keeps the parent's RSS at fork time
    return {"align_ms": best * 1e3, "load_s": load, "rss_mb": rss, "words": n_words}


def serve_latency(args: argparse.Namespace) -> None:
    import io
    import tempfile

    import httpx
    import soundfile as sf
    from bench_serve import MODEL, TOKEN, Server, checkpoint, percentile

    from qwen_serve.testing.clips import speech_like

    asr_dir, _ = checkpoint(argparse.Namespace(model_dir=None, quick=False, cache_dir=args.cache_dir))
    serve_args = argparse.Namespace(idle_timeout=600.0, max_new_tokens=32)
    print(
        f"CPU: {cpu_model()}, {os.cpu_count()} CPUs; serve run, full-size random 0.6B + aligner, 32 new tokens"
    )
    print("| audio | json p50 | verbose_json + words p50 | words add |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-aligner-serve-") as tmp:
        server = Server(serve_args, asr_dir, Path(tmp), {})
        (Path(tmp) / "models" / "qwen3-forcedaligner-0.6b").symlink_to(args.model_dir)
        try:
            server.start()
            with httpx.Client(timeout=600) as http:
                for seconds in [float(x) for x in args.seconds.split(",")]:
                    buf = io.BytesIO()
                    sf.write(buf, speech_like(seconds), 16000, format="WAV", subtype="PCM_16")
                    data = buf.getvalue()
                    times: dict[bool, list[float]] = {False: [], True: []}
                    for i in range(2 * args.requests + 2):  # the first pair loads both replicas
                        words = bool(i % 2)
                        form = {"model": MODEL, "language": "en"}
                        if words:
                            form |= {"response_format": "verbose_json", "timestamp_granularities[]": "word"}
                        t0 = time.perf_counter()
                        r = http.post(
                            f"{server.url}/v1/audio/transcriptions",
                            headers={"Authorization": f"Bearer {TOKEN}"},
                            files={"file": ("clip.wav", data)},
                            data=form,
                        )
                        r.raise_for_status()
                        if i >= 2:
                            times[words].append(time.perf_counter() - t0)
                    plain, timed = (percentile([t * 1e3 for t in times[w]], 50) for w in (False, True))
                    print(f"| {seconds:.0f} s | {plain:.0f} ms | {timed:.0f} ms | +{timed - plain:.0f} ms "
                          f"({timed / plain:.2f}x) |", flush=True)  # fmt: skip
        finally:
            server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "qwen-bench")
    p.add_argument("--seconds", default="10,60", help="clip lengths, comma-separated (at most 180)")
    p.add_argument("--precision", default="exact,fast", help="libqwen precisions, comma-separated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2, help="runs per side; the best is kept")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--serve", action="store_true", help="latency through the service, with and without words")
    p.add_argument("--requests", type=int, default=5, help="--serve: requests of each kind per clip length")
    p.add_argument("--side", default=None, help=argparse.SUPPRESS)
    p.add_argument("--one-seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:  # a subprocess: one side, one clip length
        print(json.dumps(run_side(args)))
        return

    if args.model_dir is None:
        from qwen_serve.testing.checkpoint import make_checkpoint

        args.model_dir = args.cache_dir / "full-aligner-0.6b"
        if not (args.model_dir / "config.json").exists():
            print(f"generating full-aligner-0.6b into {args.model_dir} ...", flush=True)
            make_checkpoint(args.model_dir, preset="full-aligner-0.6b", seed=0, dtype="bf16")
    if args.serve:
        serve_latency(args)
        return
    sides = args.precision.split(",") + ([] if args.skip_reference else ["official"])
    lengths = [float(s) for s in args.seconds.split(",")]
    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs; {args.threads} threads; checkpoint {args.model_dir}")
    rows: dict[tuple[str, float], dict[str, float]] = {}
    for seconds in lengths:
        for side in sides:
            cmd = [
                sys.executable, __file__, "--side", side, "--one-seconds", str(seconds),
                "--model-dir", str(args.model_dir), "--threads", str(args.threads), "--repeat", str(args.repeat),
            ]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows[(side, seconds)] = json.loads(out.stdout.strip().splitlines()[-1])
            r = rows[(side, seconds)]
            print(f"  {side:8s} {seconds:5.0f} s: {r['align_ms']:8.0f} ms, {r['words']} words, "
                  f"peak RSS {r['rss_mb']:.0f} MB, load {r['load_s']:.1f} s", flush=True)  # fmt: skip
    names = {"exact": "libqwen exact", "fast": "libqwen fast", "official": "official (PyTorch f32)"}
    print("\n| audio (words) | " + " | ".join(names.get(s, s) for s in sides) + " |")
    print("|---|" + "---|" * len(sides))
    for seconds in lengths:
        cells = []
        for side in sides:
            r = rows[(side, seconds)]
            ratio = ""
            if side != "official" and ("official", seconds) in rows:
                ratio = f" ({rows[('official', seconds)]['align_ms'] / r['align_ms']:.1f}x)"
            cells.append(f"{r['align_ms']:.0f} ms{ratio}")
        words = int(rows[(sides[0], seconds)]["words"])
        print(f"| {seconds:.0f} s ({words}) | " + " | ".join(cells) + " |")
    print("\n| peak RSS, load | " + " | ".join(
        f"{rows[(s, lengths[-1])]['rss_mb']:.0f} MB, {rows[(s, lengths[-1])]['load_s']:.1f} s" for s in sides
    ) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
