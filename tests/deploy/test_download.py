"""The download command, with huggingface_hub's snapshot_download replaced (no network here)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest

from qwen_serve import download


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("QWEN_"):
            monkeypatch.delenv(key)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def snapshot_download(repo_id: str, local_dir: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, "local_dir": local_dir, **kwargs})
        for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt"):
            Path(local_dir, name).write_text("{}")
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_downloads_both_and_the_aligner_by_default(
    tmp_path: Path, fake_hub: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no serve_config.yaml here
    assert download.main(["--models-dir", str(tmp_path / "m")]) == 0
    assert [(c["repo_id"], c["local_dir"]) for c in fake_hub] == [
        ("Qwen/Qwen3-ASR-0.6B", str(tmp_path / "m" / "qwen3-asr-0.6b")),
        ("Qwen/Qwen3-ASR-1.7B", str(tmp_path / "m" / "qwen3-asr-1.7b")),
        ("Qwen/Qwen3-ForcedAligner-0.6B", str(tmp_path / "m" / "qwen3-forcedaligner-0.6b")),
    ]
    assert download.checkpoint_problem(tmp_path / "m" / "qwen3-asr-0.6b") is None


def test_if_missing_skips_complete(tmp_path: Path, fake_hub: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QWEN_MODELS_DIR", str(tmp_path / "env-models"))
    assert download.main(["qwen-asr-0.6b"]) == 0
    assert download.main(["--if-missing"]) == 0
    assert [c["repo_id"] for c in fake_hub] == [
        "Qwen/Qwen3-ASR-0.6B",
        "Qwen/Qwen3-ASR-1.7B",
        "Qwen/Qwen3-ForcedAligner-0.6B",
    ]
    assert fake_hub[0]["local_dir"].startswith(str(tmp_path / "env-models"))


def test_reads_serve_config(tmp_path: Path, fake_hub: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "serve_config.yaml").write_text(
        "applications:\n  - import_path: qwen_serve.app:build_app\n    args:\n      models_dir: cfg-models\n"
    )
    assert download.main(["qwen-asr-1.7b"]) == 0
    assert fake_hub[0]["local_dir"] == str(Path("cfg-models") / "qwen3-asr-1.7b")


def test_unknown_model(
    tmp_path: Path, fake_hub: list, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert download.main(["whisper-1"]) == 2
    assert "unknown model" in capsys.readouterr().err and not fake_hub


def test_failure_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)

    def offline(**kwargs: Any) -> str:
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    assert download.main(["qwen-asr-0.6b", "--models-dir", str(tmp_path)]) == 1
    assert "no network" in capsys.readouterr().err


def test_problems() -> None:
    assert download.checkpoint_problem(Path("/nonexistent")) == "the directory does not exist"


def test_aligner_alone_and_turned_off(
    tmp_path: Path, fake_hub: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert download.main(["qwen3-forcedaligner-0.6b", "--models-dir", str(tmp_path)]) == 0
    assert [c["repo_id"] for c in fake_hub] == ["Qwen/Qwen3-ForcedAligner-0.6B"]
    monkeypatch.setenv("QWEN_ALIGNER", "")  # turned off: no longer a known checkpoint
    assert download.main(["qwen3-forcedaligner-0.6b"]) == 2
