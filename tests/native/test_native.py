"""The C API test programs (native/tests/test_api.c: the contract on bad input, two contexts at once;
native/tests/test_align.c: qwen_align on the tiny forced aligner; native/tests/test_pool.c: the thread
pool, also under ThreadSanitizer; native/tests/test_attention.c: attention over the bf16 KV cache of
precision fast, every kernel set; native/tests/test_matmul.c: the products across the pool, also under
ThreadSanitizer), built with CMake, plain and under AddressSanitizer; the fuzz targets
(native/tests/fuzz_*.c) over their saved inputs, under AddressSanitizer and UBSan too; and the export map.
The kernel test program has its own file, test_kernels.py."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("cmake") is None, reason="cmake is required"
)  # always present in CI

VARIANTS = {
    "release": ["-DCMAKE_BUILD_TYPE=Release"],
    "asan": ["-DCMAKE_BUILD_TYPE=Debug", "-DQWEN_SANITIZE=address"],
}


def build(
    tmp: Path,
    *options: str,
    targets: tuple[str, ...] = (
        "test_api",
        "test_align",
        "test_pool",
        "test_attention",
        "test_matmul",
        "replay_checkpoint",
        "replay_json",
        "replay_batch",
    ),
) -> Path:
    build_dir = tmp / "build"
    subprocess.run(
        ["cmake", "-S", str(ROOT / "native"), "-B", str(build_dir), "-DQWEN_BUILD_TESTS=ON", *options],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["cmake", "--build", str(build_dir), "-j2", "--target", *targets],
        check=True,
        capture_output=True,
    )
    return build_dir


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def programs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build directory of test_api and test_align, once per variant."""
    return build(tmp_path_factory.mktemp(request.param), *VARIANTS[request.param])


def run(program: Path, **env_vars: Path) -> str:
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1", **{k: str(v) for k, v in env_vars.items()})
    proc = subprocess.run([str(program)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "AddressSanitizer" not in proc.stderr, proc.stderr
    return proc.stdout


def test_api_program(programs: Path, tiny_dir: Path) -> None:
    api = run(programs / "test_api", QWEN_TEST_MODEL=tiny_dir)
    assert ", 0 failed" in api
    passed = int(api.split("api: ")[1].split(" passed")[0])
    assert passed >= 20  # the model-backed checks ran too


def test_align_program(programs: Path, tiny_dir: Path, tiny_aligner_dir: Path) -> None:
    out = run(programs / "test_align", QWEN_TEST_ALIGNER=tiny_aligner_dir, QWEN_TEST_MODEL=tiny_dir)
    assert ", 0 failed" in out, out
    passed = int(out.split("align: ")[1].split(" passed")[0])
    assert passed >= 35, out  # the checkpoint-backed checks ran too


def test_pool_program(programs: Path) -> None:
    out = run(programs / "test_pool")
    assert "pool: 13 passed, 0 failed" in out, out


def test_attention_program(programs: Path) -> None:
    out = run(programs / "test_attention")
    assert ", 0 failed" in out, out
    passed = int(out.split("attention: ")[-1].split(" passed")[0])
    assert passed >= 354, out  # at least the scalar table's cases (354 each table)


def test_matmul_program(programs: Path) -> None:
    """qw_matmul_n across 1-24 threads (a decode step's parts and their ends taken; a prefill's slices)
    gives each column the bits one kernel call over all of them gives, every kernel set."""
    out = run(programs / "test_matmul")
    assert ", 0 failed" in out, out
    passed = int(out.split("matmul: ")[-1].split(" passed")[0])
    assert passed >= 1800, out  # at least the scalar table's cases (1800 each table)


CORPUS = ROOT / "native" / "tests" / "corpus"


def replay(build_dir: Path, target: str, **env_vars: str) -> str:
    """A fuzz target over native/tests/corpus/<target>: the seeds (a few-KB checkpoint of the real
    layout in bf16, f16 and f32; a config.json and a safetensors header; programs of scheduler
    calls) and every input a fuzzer found to crash. Each must run cleanly."""
    proc = subprocess.run(
        [str(build_dir / f"replay_{target}"), str(CORPUS / target)],
        capture_output=True,
        text=True,
        env=dict(os.environ, ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="print_stacktrace=1", **env_vars),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Sanitizer" not in proc.stderr and "runtime error" not in proc.stderr, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("target", ["checkpoint", "json"])
def test_fuzz_corpus(programs: Path, target: str) -> None:
    out = replay(programs, target)
    n = len(list((CORPUS / target).iterdir()))
    assert f"replay: {n} passed, 0 failed" in out, out


@pytest.mark.parametrize("seed", ["seed_bf16_tied_exact", "seed_f16_tied_fast"])
def test_fuzz_batch_corpus(programs: Path, seed: str) -> None:
    """Programs of qwen_seq_add / qwen_step / qwen_seq_abort / logits (native/tests/fuzz_batch.c): no
    memory error, every slot and KV token back at the end, and each sequence that ended on its own
    with the tokens it gets alone (both caches on in the batch, off alone; some of them asking for
    log-probabilities, which must be numbers <= 0). The programs were kept
    from a fuzzing run for what they reach: sequences compared, windows and prefixes reused."""
    out = replay(
        programs,
        "batch",
        QWEN_FUZZ_CHECKPOINT=str(CORPUS / "checkpoint" / seed),
        QWEN_FUZZ_VERBOSE="1",
    )
    lines = [line.split() for line in out.splitlines() if line.startswith("batch: ")]
    n = len(list((CORPUS / "batch").iterdir()))
    assert len(lines) == n and f"replay: {n} passed, 0 failed" in out, out
    assert sum(int(w[1]) for w in lines) >= 2 * n, out  # sequences compared with their runs alone
    assert any(int(w[-7].rstrip(",")) > 0 for w in lines), out  # an encoder window reused
    assert any(int(w[-3].rstrip(",")) > 0 for w in lines), out  # a prompt prefix reused
    assert int(lines[-1][-1]) > 0, out  # log-probabilities checked (the count runs over the inputs)


def test_fuzz_corpus_under_ubsan(tmp_path: Path) -> None:
    """Undefined behaviour that does not crash (an int from an out-of-range double, an overflow)."""
    build_dir = build(
        tmp_path,
        "-DCMAKE_BUILD_TYPE=Debug",
        "-DQWEN_SANITIZE=undefined",
        targets=("replay_checkpoint", "replay_json", "replay_batch"),
    )
    for target in ("checkpoint", "json"):
        assert ", 0 failed" in replay(build_dir, target)
    seed = str(CORPUS / "checkpoint" / "seed_f16_tied_fast")
    assert ", 0 failed" in replay(build_dir, "batch", QWEN_FUZZ_CHECKPOINT=seed)


@pytest.mark.parametrize("program", ["test_pool", "test_matmul"])
def test_pool_under_thread_sanitizer(tmp_path: Path, program: str) -> None:
    """The pool itself, and the products' claims on it (test_matmul: parts taken from both ends)."""
    build_dir = build(tmp_path, "-DCMAKE_BUILD_TYPE=Debug", "-DQWEN_SANITIZE=thread", targets=(program,))
    proc = subprocess.run([str(build_dir / program)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and ", 0 failed" in proc.stdout, proc.stdout + proc.stderr
    assert "ThreadSanitizer" not in proc.stderr, proc.stderr


def test_only_qwen_symbols_exported() -> None:
    from qwen_serve.engine._native import library_path

    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(library_path())], capture_output=True, text=True, check=True
    )
    names = [line.split()[-1] for line in out.stdout.splitlines() if line.strip()]
    assert names and all(n.startswith("qwen_") for n in names), names
    assert "qwen_align" in names
