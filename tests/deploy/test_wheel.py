"""The wheel carries the package's data files: the playground page (HTML, CSS, JS) beside the code."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "qwen_serve" / "api" / "static"


@pytest.mark.timeout(900)
def test_wheel_ships_the_playground(tmp_path: Path) -> None:
    # scikit-build-core reuses build/{wheel_tag} of the editable install: only the packaging runs again
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("qwen_serve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"qwen_serve/api/static/{p.name}" for p in STATIC.iterdir()}
    assert {"qwen_serve/api/static/index.html", "qwen_serve/api/static/playground.js"} <= expected
    assert expected <= names, expected - names
