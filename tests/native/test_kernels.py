"""The kernel test programs: every SIMD kernel table against the scalar one (native/tests/test_kernels.c),
every int8 weight table (precision "fast") likewise (native/tests/test_quant.c), and the AMX-BF16 GEMM
through the portable tile emulation on any CPU, natively where the CPU has AMX (native/tests/test_amx.c);
then the whole library with its AMX kernel emulated (precision "fast" on tiles without AMX hardware).

Builds only the kernel test targets of native/ with CMake (so it does not depend on the rest of the
library), plain and under AddressSanitizer, and runs them. The AVX-512 table runs on CPUs that have
AVX-512 and the NEON table on AArch64; elsewhere both are tested through SIMDe's portable intrinsics
when SIMDe (pip: simde-py) is installed or QWEN_SIMDE_INCLUDE names its headers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is required")

VARIANTS = {
    "release": ["-DCMAKE_BUILD_TYPE=Release"],
    "asan": ["-DCMAKE_BUILD_TYPE=Debug", "-DQWEN_SANITIZE=address"],
}
SUMMARY = re.compile(r"^(kernels|quant|amx): (\d+) passed, (\d+) failed$", re.MULTILINE)


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^(?:flags|Features)\s*:(.*)$", text, re.MULTILINE)  # x86, AArch64
    return set(match.group(1).split()) if match else set()


def simde_include() -> str | None:
    """Headers of SIMDe >= 0.8 (the directory holding simde/), if any."""
    if os.environ.get("QWEN_SIMDE_INCLUDE"):
        return os.environ["QWEN_SIMDE_INCLUDE"]
    try:
        import simde_py  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(simde_py.get_include())


def build(build_dir: Path, targets: list[str], *options: str) -> None:
    subprocess.run(
        ["cmake", "-S", str(ROOT / "native"), "-B", str(build_dir), "-DQWEN_BUILD_TESTS=ON", *options],
        check=True,
        capture_output=True,
    )
    proc = subprocess.run(
        ["cmake", "--build", str(build_dir), "-j2", "--target", *targets], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def run(program: Path, minimum: int = 1000) -> str:
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0")
    proc = subprocess.run([str(program)], capture_output=True, text=True, env=env, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "AddressSanitizer" not in output, output
    match = SUMMARY.search(proc.stdout)
    assert match, output
    passed, failed = int(match.group(2)), int(match.group(3))
    assert failed == 0, output
    assert passed >= minimum, output  # the shape sweep ran, not just the conversions
    return proc.stdout


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kernels(variant: str, tmp_path: Path) -> None:
    build_dir = tmp_path / "build"
    build(build_dir, ["test_kernels"], *VARIANTS[variant])
    out = run(build_dir / "test_kernels")
    flags = cpu_flags()
    if {"avx2", "fma", "f16c"} <= flags:
        assert "kernels: avx2 tested, 0 failures" in out, out  # the AVX2 path is always tested where it runs
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        assert "kernels: avx512 tested, 0 failures" in out, out
    else:
        assert "avx512 not supported by this CPU: skipped" in out, out
    if os.uname().machine in ("aarch64", "arm64"):
        assert "kernels: neon tested, 0 failures" in out, out


@pytest.mark.parametrize("table", ["avx512", "neon"])
def test_kernels_emulated(table: str, tmp_path: Path) -> None:
    """A table this CPU cannot run, compiled over SIMDe (AVX-512 or NEON emulation) and checked like
    the others. Under AddressSanitizer only: SIMDe's headers take ~30 s to compile optimised."""
    include = simde_include()
    if include is None:
        pytest.skip("SIMDe headers not found (pip install simde-py, or set QWEN_SIMDE_INCLUDE)")
    if os.uname().machine != "x86_64":
        pytest.skip("x86-64 only (AArch64 runs the real NEON table in test_kernels)")
    target = f"test_kernels_{table}_emulated"
    build_dir = tmp_path / "build"
    build(build_dir, [target], *VARIANTS["asan"], f"-DQWEN_SIMDE_INCLUDE={include}")
    out = run(build_dir / target)
    assert f"kernels: {table} tested, 0 failures" in out, out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_int8_kernels(variant: str, tmp_path: Path) -> None:
    """Packing, the row quantizer, and each int8 table the CPU runs bit for bit against the scalar one,
    which is held to double precision and to the quantization bound; the AMX-INT8 table over the tile
    emulation on every CPU (with its vector steps in C, and as AVX-512 where the CPU has it), and on the
    tiles where the CPU has AMX-INT8 (and the OS grants them)."""
    build_dir = tmp_path / "build"
    build(build_dir, ["test_quant"], *VARIANTS[variant])
    out = run(build_dir / "test_quant", minimum=5000)
    assert "quant: scalar tested" in out, out
    flags = cpu_flags()
    if {"avx2", "fma"} <= flags:
        assert "quant: avx2 tested" in out, out
    if {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= flags:
        assert "quant: avx512vnni tested" in out, out
    else:
        assert "avx512vnni not supported by this CPU: skipped" in out, out
    if {"avx2", "fma", "avx_vnni"} <= flags:
        assert "quant: avxvnni tested" in out, out
    assert "quant: amx (emulated tiles) tested" in out, out
    if os.uname().machine == "x86_64":  # emulated tiles with the AVX-512 steps AMX machines run
        avx512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
        native = "tested" if avx512 else "not supported by this CPU: skipped"
        assert f"quant: amx (emulated tiles, native AVX-512) {native}" in out, out
    if os.uname().machine == "x86_64":  # the hardware's AMX-INT8 table where the CPU has it
        expected = (
            "quant: amx tested"
            if {"amx_tile", "amx_int8"} <= flags
            else "amx not supported by this CPU: skipped"
        )
        assert expected in out, out
    if os.uname().machine in ("aarch64", "arm64"):
        assert "quant: neon tested" in out, out
        if flags:  # Linux says (asimddp); elsewhere either line
            dot = "tested" if "asimddp" in flags else "not supported by this CPU: skipped"
            assert f"quant: neondot {dot}" in out, out
        else:
            assert "quant: neondot " in out, out


def test_int8_kernels_emulated(tmp_path: Path) -> None:
    """The AVX-512 VNNI, AVX-VNNI and NEON int8 tables compiled over SIMDe and checked like the others (ASan build)."""
    include = simde_include()
    if include is None:
        pytest.skip("SIMDe headers not found (pip install simde-py, or set QWEN_SIMDE_INCLUDE)")
    if os.uname().machine != "x86_64":
        pytest.skip("x86-64 only (AArch64 runs the real NEON table in test_int8_kernels)")
    build_dir = tmp_path / "build"
    build(build_dir, ["test_quant_emulated"], *VARIANTS["asan"], f"-DQWEN_SIMDE_INCLUDE={include}")
    out = run(build_dir / "test_quant_emulated", minimum=5000)
    for table in ("avx512vnni", "avxvnni", "neon", "neondot"):
        assert f"quant: {table} (SIMDe) tested" in out, out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_amx_kernel(variant: str, tmp_path: Path) -> None:
    """The emulated kernel (bit for bit the TDPBF16PS chain, and within the double-sum bound) on 960
    shapes and the edge cases; the hardware path where /proc/cpuinfo lists amx_tile and amx_bf16."""
    build_dir = tmp_path / "build"
    build(build_dir, ["test_amx"], *VARIANTS[variant])
    out = run(build_dir / "test_amx", minimum=1300)
    assert "amx: emulated kernel tested, 0 failures" in out, out
    if os.uname().machine == "x86_64" and {"amx_tile", "amx_bf16"} <= cpu_flags():
        assert "native AMX: tested, 0 failures" in out, out
    else:
        assert "native AMX: not available on this CPU (emulated only)" in out, out
        assert "qw_amx_available() = 1" not in out, out


def test_library_with_emulated_amx(tmp_path: Path, tiny_dir: Path) -> None:
    """precision "fast" with AMX through the whole library: built with QWEN_AMX_EMULATE, libqwen puts
    the encoder on (emulated) tiles on any x86-64 CPU. The C API test's batching
    contract (each sequence's logits in a batch bitwise those it gets alone), the engine's
    precision tests (fast within quantization noise of exact), the weight cache's (the tiles
    mapped from its file, the same bits) and the log-probabilities' must hold there too."""
    if os.uname().machine != "x86_64":
        pytest.skip("the AMX kernel is x86-64 only")
    build_dir = tmp_path / "build"
    build(build_dir, ["qwen", "test_api"], "-DQWEN_AMX_EMULATE=ON")
    env = dict(os.environ, QWEN_TEST_MODEL=str(tiny_dir))
    api = subprocess.run([str(build_dir / "test_api")], capture_output=True, text=True, env=env, timeout=900)
    assert api.returncode == 0 and ", 0 failed" in api.stdout, api.stdout + api.stderr
    env = dict(os.environ, QWEN_LIBRARY=str(build_dir / "libqwen.so"))
    check = (
        "from qwen_serve.engine._native import NativeModel; import sys; "
        "m = NativeModel(sys.argv[1], precision='fast'); print(m.kernels)"
    )
    kernels = subprocess.run(
        [sys.executable, "-c", check, str(tiny_dir)], capture_output=True, text=True, env=env, check=True
    )
    assert "amx" in kernels.stdout, kernels.stdout
    tests = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests/engine/test_engine.py"),
            str(ROOT / "tests/engine/test_weight_cache.py"),  # the tiles packed once, then mapped
            str(ROOT / "tests/engine/test_logprobs.py"),  # the screened head's whole rows on the tiles' table
            "-k",
            "fast",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert tests.returncode == 0 and " passed" in tests.stdout, tests.stdout + tests.stderr
