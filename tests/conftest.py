"""Shared fixtures: tiny checkpoints in the exact Hugging Face layout, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from qwen_serve.testing.checkpoint import make_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    return {
        preset: make_checkpoint(root / preset, preset=preset, seed=0) for preset in ("tiny-0.6b", "tiny-1.7b")
    }


@pytest.fixture(scope="session")
def tiny_dir(tiny_dirs: dict[str, Path]) -> Path:
    return tiny_dirs["tiny-0.6b"]


@pytest.fixture(scope="session")
def tiny_aligner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen3-ForcedAligner checkpoint (classify_num head, <timestamp> token)."""
    from qwen_serve.testing.checkpoint import make_checkpoint

    return make_checkpoint(
        tmp_path_factory.mktemp("checkpoints") / "tiny-aligner", preset="tiny-aligner", seed=0
    )
