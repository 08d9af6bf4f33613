"""Loading a model: libqwen's weight cache against packing at every load, and the official load.

    .venv/bin/python benchmarks/bench_load.py                       # full-size random 0.6B, 3 rounds
    .venv/bin/python benchmarks/bench_load.py --preset full-1.7b --rounds 2
    .venv/bin/python benchmarks/bench_load.py --model-dir models/qwen3-asr-0.6b   # real weights
    .venv/bin/python benchmarks/bench_load.py --cold       # also a load from the cache after dropping
                                                           # the page cache (root: /proc/sys/vm/drop_caches)
    .venv/bin/python benchmarks/bench_load.py --cache-root /dev/shm --skip-reference   # 4 KiB pages

What a replica's start costs and holds (precision fast, `Engine(...)` in a fresh process each time:
what ModelServer runs; the load times exclude the Python imports), in rounds whose cases take turns:

- `packed`: no weight cache, every load quantizes and packs (the behaviour without QWEN_WEIGHT_CACHE);
- `writes`: an empty cache directory, the load packs and writes the file (a node's first load);
- `mapped`: the file is there (and in the page cache), the load maps it (every later load);
- `mapped, cold`: the same after the page cache was dropped (a node's first load after a reboot);
- `official`: Qwen3ASRForConditionalGeneration.from_pretrained (float32) and its processor.

Each libqwen case then decodes the 10 s clip (prefill and 16 tokens, best of 3) to show that mapped
weights run as fast as packed ones, and reports its memory from /proc/self/smaps_rollup: RSS, PSS
(its share of pages other processes map too) and the file-backed part. Last, a pool: --pool
processes load at once and hold the model (replicas of one node), with and without the cache, and
their PSS is summed: what the node's memory really holds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import add_checkpoint_args, checkpoint_dir, test_audio  # noqa: E402


def smaps() -> dict[str, float]:
    """MB of this process's memory by /proc/self/smaps_rollup's fields."""
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        out[key] = int(value.split()[0]) / 1024
    return out


def worker(args: argparse.Namespace) -> None:
    """Loads, tells the parent, decodes (unless --no-decode), waits for "measure", reports."""
    if args.worker == "official":  # imports before the clock, on both sides
        import torch
        from qwen_asr.core.transformers_backend import Qwen3ASRForConditionalGeneration, Qwen3ASRProcessor

        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        model = Qwen3ASRForConditionalGeneration.from_pretrained(args.model_dir, dtype=torch.float32).eval()
        Qwen3ASRProcessor.from_pretrained(args.model_dir)
        result: dict[str, Any] = {"load_s": time.perf_counter() - t0, "state": "-"}
        del model
    else:
        from qwen_serve.engine import Engine

        cache = args.worker_cache or None
        t0 = time.perf_counter()
        engine = Engine(
            args.model_dir,
            threads=args.threads,
            precision="fast",
            max_batch=1,
            encoder_cache_windows=-1,
            prefix_cache_tokens=-1,
            weight_cache=cache,
        )
        result = {"load_s": time.perf_counter() - t0, "state": engine.weight_cache_state}
        print("LOADED", flush=True)
        if not args.no_decode:
            pcm = test_audio(10.0)
            prompt = engine.prompt_ids(pcm.size)
            prefill, decode = [], []
            for _ in range(3):
                list(engine.native.generate(pcm, prompt, max_new_tokens=16, eos_ids=[-1]))
                prefill.append(engine.native.timing("prefill"))
                decode.append(engine.native.timing("decode") / 15)
            result.update(prefill_ms=min(prefill), decode_ms=min(decode))
        sys.stdin.readline()  # "measure": every process of the case has loaded
        m = smaps()
        result.update(rss_mb=m["Rss"], pss_mb=m["Pss"], pss_file_mb=m.get("Pss_File", 0.0))
        result["file_pmd_mb"] = m.get("FilePmdMapped", 0.0)
    print("RESULT " + json.dumps(result), flush=True)
    sys.stdin.readline()  # held until the parent has every process's figures


def run_case(args: argparse.Namespace, which: str, cache: str, n: int = 1, decode: bool = True) -> list[dict]:
    """n worker processes at once; their results once all have loaded and measured."""
    cmd = [sys.executable, __file__, "--worker", which, "--model-dir", str(args.model_dir)]
    cmd += ["--threads", str(args.threads), "--worker-cache", cache] + ([] if decode else ["--no-decode"])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    procs = [
        subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(n)
    ]
    results = []
    try:
        if which != "official":
            for p in procs:  # every process loaded before any measures: the pool's pages are shared then
                assert p.stdout is not None
                while (line := p.stdout.readline()) and line.strip() != "LOADED":
                    pass
        for p in procs:
            assert p.stdin is not None and p.stdout is not None
            if which != "official":
                p.stdin.write("measure\n")
                p.stdin.flush()
            while (line := p.stdout.readline()) and not line.startswith("RESULT "):
                pass
            if not line:
                raise SystemExit(f"{which} worker failed")
            results.append(json.loads(line[len("RESULT ") :]))
    finally:
        for p in procs:
            if p.stdin:
                p.stdin.close()
            p.wait(timeout=120)
    return results


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def spread(values: list[float], unit: str, digits: int = 2) -> str:
    med = float(np.median(values))
    if len(values) == 1:
        return f"{med:.{digits}f} {unit}"
    return f"{med:.{digits}f} {unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pool", type=int, default=2, help="processes of the pool case")
    p.add_argument(
        "--cold", action="store_true", help="also load from the cache after dropping the page cache"
    )
    p.add_argument(
        "--cache-root",
        type=Path,
        default=None,
        help="where the cache directories go (default: the temp dir); /dev/shm: a file system "
        "without large folios (tmpfs without huge=), whose mapped file has 4 KiB pages",
    )
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--worker", choices=["ours", "official"], help=argparse.SUPPRESS)
    p.add_argument("--worker-cache", default="", help=argparse.SUPPRESS)
    p.add_argument("--no-decode", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    args.model_dir = checkpoint_dir(args)
    from bench_serve import cpu_model

    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs; checkpoint {args.model_dir}, {args.threads} threads")
    cases: dict[str, list[dict]] = {}
    work = Path(tempfile.mkdtemp(prefix="qwen-weight-cache-", dir=args.cache_root))
    try:
        for r in range(args.rounds):
            cache = work / f"round{r}"
            for name, where in (("packed", ""), ("writes", str(cache)), ("mapped", str(cache))):
                cases.setdefault(name, []).extend(run_case(args, "ours", where))
            if args.cold:
                if not drop_page_cache():
                    raise SystemExit("--cold needs to write /proc/sys/vm/drop_caches (root)")
                cases.setdefault("mapped, cold", []).extend(run_case(args, "ours", str(cache)))
            if not args.skip_reference:
                cases.setdefault("official", []).extend(run_case(args, "official", ""))
            size = sum(f.stat().st_size for f in cache.iterdir())
            if r:
                shutil.rmtree(cache)
        pool_none = run_case(args, "ours", "", n=args.pool, decode=False)
        pool_cached = run_case(args, "ours", str(work / "round0"), n=args.pool, decode=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nweight cache file: {size / 1e9:.2f} GB; medians (ranges) of {args.rounds} rounds\n")
    print("| case | load | prefill | decode / token | RSS | PSS | of it file-backed (huge pages) |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in cases.items():
        states = sorted({x["state"] for x in runs})
        load = spread([x["load_s"] for x in runs], "s")
        if name == "official":
            print(f"| {name} | {load} | | | | | |")
            continue
        prefill = spread([x["prefill_ms"] for x in runs], "ms", 1)
        decode = spread([x["decode_ms"] for x in runs], "ms", 2)
        rss = np.median([x["rss_mb"] for x in runs])
        pss = np.median([x["pss_mb"] for x in runs])
        file = np.median([x["pss_file_mb"] for x in runs])
        pmd = np.median([x["file_pmd_mb"] for x in runs])
        label = f"{name} ({'/'.join(states)})"
        print(
            f"| {label} | {load} | {prefill} | {decode} | {rss:.0f} MB | {pss:.0f} MB | {file:.0f} MB ({pmd:.0f}) |"
        )
    print(f"\n{args.pool} processes holding the model at once (loaded together):\n")
    print("| | load, each | RSS, each | PSS summed |")
    print("|---|---|---|---|")
    for name, runs in (("no cache", pool_none), ("weight cache", pool_cached)):
        loads = ", ".join(f"{x['load_s']:.2f}" for x in runs)
        rss = ", ".join(f"{x['rss_mb']:.0f}" for x in runs)
        print(f"| {name} | {loads} s | {rss} MB | {sum(x['pss_mb'] for x in runs):.0f} MB |")


if __name__ == "__main__":
    main()
