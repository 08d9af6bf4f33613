"""The AMX-BF16 GEMM test program (native/tests/test_amx.c): the tiled kernel through the portable tile
emulation (native/src/amx_emulate.h) on any CPU, and natively where the CPU has AMX.

Builds only the test_amx target of native/ with CMake, plain and under AddressSanitizer, and runs it.
The emulated kernel is always checked (bit for bit against the TDPBF16PS chain and against a double
sum); the hardware path only runs on CPUs whose /proc/cpuinfo lists amx_tile and amx_bf16.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is required")

VARIANTS = {
    "release": ["-DCMAKE_BUILD_TYPE=Release"],
    "asan": ["-DCMAKE_BUILD_TYPE=Debug", "-DQWEN_SANITIZE=address"],
}
SUMMARY = re.compile(r"^amx: (\d+) passed, (\d+) failed$", re.MULTILINE)
# The emulated kernel sweep alone checks 960 shapes (10 M x 8 K x 4 N x 3 dtypes) plus the edge cases.
MIN_PASSED = 1300


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def build(build_dir: Path, *options: str) -> None:
    subprocess.run(
        ["cmake", "-S", str(ROOT / "native"), "-B", str(build_dir), "-DQWEN_BUILD_TESTS=ON", *options],
        check=True,
        capture_output=True,
    )
    proc = subprocess.run(
        ["cmake", "--build", str(build_dir), "-j2", "--target", "test_amx"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def run(program: Path) -> str:
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0")
    proc = subprocess.run([str(program)], capture_output=True, text=True, env=env, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "AddressSanitizer" not in output, output
    match = SUMMARY.search(proc.stdout)
    assert match, output
    passed, failed = int(match.group(1)), int(match.group(2))
    assert failed == 0, output
    assert passed >= MIN_PASSED, output  # the kernel sweep ran, not just the emulation unit tests
    return proc.stdout


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_amx(variant: str, tmp_path: Path) -> None:
    build_dir = tmp_path / "build"
    build(build_dir, *VARIANTS[variant])
    out = run(build_dir / "test_amx")
    assert "amx: emulated kernel tested, 0 failures" in out, out
    if os.uname().machine == "x86_64" and {"amx_tile", "amx_bf16"} <= cpu_flags():
        assert "native AMX: tested, 0 failures" in out, out
    else:
        assert "native AMX: not available on this CPU (emulated only)" in out, out
        assert "qw_amx_available() = 1" not in out, out
