"""A growing live turn, decoded as the realtime session does it, with libqwen's caches on and off.

    .venv/bin/python benchmarks/bench_live_turn.py                  # full-size random 0.6B, a 24 s turn
    .venv/bin/python benchmarks/bench_live_turn.py --seconds 30 --precision exact

While a turn grows, the session decodes the whole turn so far about once a
second (docs/realtime.md, "Text during speech"). Here one engine (no Ray)
decodes a turn of speech-like audio at 2, 3, ... --seconds seconds, each
decode --max-new-tokens tokens, forced to start with the first ids of the previous
decode's answer as the session does, and the same with libqwen's encoder
window and prefix caches off (`encoder_cache_windows=-1`,
`prefix_cache_tokens=-1`), alternating the two engines decode by decode so
that both see the same machine. The turn's first half second is its loudest
(the log-mel is clamped to 8 below its loudest frame, so a louder sound later
changes every earlier frame and leaves nothing to reuse in that decode). Reported: the encoder, prefill and whole
decode time summed over the turn, and per decode at the end of the turn
(where the most windows are complete). Both engines must give the same ids
at every length, or the run fails. Name the CPU next to the figures (printed
first).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serve import add_checkpoint_args, checkpoint, cpu_model  # noqa: E402

from qwen_serve.engine import Engine  # noqa: E402
from qwen_serve.testing.clips import speech_like  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_checkpoint_args(parser)
    parser.add_argument("--seconds", type=float, default=24.0, help="the turn's length")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--precision", default="fast")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    args.quick = False
    model_dir, what = checkpoint(args)
    print(f"CPU: {cpu_model()}; {what}; precision {args.precision}; a {args.seconds:g} s turn", flush=True)
    turn = speech_like(args.seconds, seed=7)
    turn[:8000] *= 3.0
    engines = {
        "on": Engine(model_dir, threads=args.threads, precision=args.precision),
        "off": Engine(
            model_dir,
            threads=args.threads,
            precision=args.precision,
            encoder_cache_windows=-1,
            prefix_cache_tokens=-1,
        ),
    }
    totals = {k: {"encoder": 0.0, "prefill": 0.0, "wall": 0.0} for k in engines}
    last: dict[str, dict[str, float]] = {}
    lengths = [float(s) for s in range(2, int(args.seconds) + 1)]
    for engine in engines.values():  # warm both (first-touch of the weights)
        engine.transcribe(turn[:32000], max_new_tokens=2)
    fixed: list[int] = []
    for seconds in lengths:
        pcm = turn[: int(seconds * 16000)]
        ids = {}
        for name, engine in engines.items():
            t0 = time.perf_counter()
            result = engine.transcribe(pcm, max_new_tokens=args.max_new_tokens, prefix_ids=fixed)
            wall = (time.perf_counter() - t0) * 1e3
            ids[name] = result.token_ids
            t = result.timings
            step = {"encoder": t.encoder_ms, "prefill": t.prefill_ms, "wall": wall}
            for key, value in step.items():
                totals[name][key] += value
            last[name] = step
        if ids["on"] != ids["off"]:
            raise SystemExit(f"at {seconds:g} s the caches changed the ids: {ids['on']} != {ids['off']}")
        fixed = ids["on"][: len(ids["on"]) // 2]
    stats = engines["on"].stats()
    print(
        f"\n{len(lengths)} decodes (2 to {args.seconds:g} s), {args.max_new_tokens} tokens each; "
        f"encoder windows reused {stats['encoder_cache_hits']}, encoded {stats['encoder_cache_misses']}; "
        f"prefixes reused {stats['prefix_cache_hits']} ({stats['prefix_cache_tokens_reused']} prompt rows not "
        "prefilled); ids equal at every length\n"
    )
    print(
        "| caches | encoder, whole turn | prefill, whole turn | decodes, whole turn | last decode: encoder / prefill / wall |"
    )
    print("|---|---|---|---|---|")
    for name in ("off", "on"):
        t, lt = totals[name], last[name]
        print(
            f"| {name} | {t['encoder'] / 1e3:.2f} s | {t['prefill'] / 1e3:.2f} s | {t['wall'] / 1e3:.2f} s "
            f"| {lt['encoder']:.0f} / {lt['prefill']:.0f} / {lt['wall']:.0f} ms |"
        )
    for engine in engines.values():
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
