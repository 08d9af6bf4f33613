"""The C API test program (native/tests/test_api.c: the contract on bad input, two contexts at once),
built with CMake, plain and under AddressSanitizer; and the export map. The kernel test program has
its own file, test_kernels.py."""

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


def build(tmp: Path, *options: str) -> Path:
    build_dir = tmp / "build"
    subprocess.run(
        ["cmake", "-S", str(ROOT / "native"), "-B", str(build_dir), "-DQWEN_BUILD_TESTS=ON", *options],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["cmake", "--build", str(build_dir), "-j2", "--target", "test_api"], check=True, capture_output=True
    )
    return build_dir


def run(program: Path, model: Path) -> str:
    env = dict(os.environ, QWEN_TEST_MODEL=str(model), ASAN_OPTIONS="detect_leaks=1")
    proc = subprocess.run([str(program)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("variant", ["release", "asan"])
def test_api_program(variant: str, tmp_path: Path, tiny_dir: Path) -> None:
    options = ["-DCMAKE_BUILD_TYPE=Release"]
    if variant == "asan":
        options = ["-DCMAKE_BUILD_TYPE=Debug", "-DQWEN_SANITIZE=address"]
    build_dir = build(tmp_path, *options)
    api = run(build_dir / "test_api", tiny_dir)
    assert ", 0 failed" in api
    passed = int(api.split("api: ")[1].split(" passed")[0])
    assert passed >= 20  # the model-backed checks ran too


def test_only_qwen_symbols_exported() -> None:
    from qwen_serve.engine._native import library_path

    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(library_path())], capture_output=True, text=True, check=True
    )
    names = [line.split()[-1] for line in out.stdout.splitlines() if line.strip()]
    assert names and all(n.startswith("qwen_") for n in names), names
