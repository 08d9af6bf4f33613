"""libqwen against the golden files of the official implementation (no torch needed).

The files are made by tests/golden/make_golden.py; tolerances as in test_parity.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from qwen_serve.engine import Engine
from qwen_serve.testing.clips import speech_like

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


@pytest.fixture(scope="module", params=["tiny-0.6b", "tiny-1.7b"])
def case(request: pytest.FixtureRequest, tiny_dirs: dict[str, Path]):
    meta = json.loads((GOLDEN / f"{request.param}.json").read_text(encoding="utf-8"))
    arrays = np.load(GOLDEN / f"{request.param}.npz")
    d = tiny_dirs[request.param]
    with Engine(d, threads=2) as e:
        yield d, e, meta, arrays


def test_generator_unchanged(case) -> None:
    d, _, meta, _ = case
    assert hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest() == meta["safetensors_sha256"]


@pytest.mark.parametrize("clip", ["0.6s", "5s", "11s"])
def test_against_golden(case, clip: str) -> None:
    _, e, meta, arrays = case
    m = meta["clips"][clip]
    pcm = speech_like(m["seconds"], seed=3)
    mel = e.native.mel(pcm)
    assert list(mel.shape) == m["mel_shape"]
    assert np.abs(mel[:, :8] - arrays[f"{clip}/mel_head"]).max() <= 2e-4
    assert np.abs(mel[:, -8:] - arrays[f"{clip}/mel_tail"]).max() <= 2e-4
    assert np.allclose([mel.mean(), mel.std(), mel.min(), mel.max()], m["mel_stats"], atol=2e-4)
    enc = e.native.encode(pcm)
    assert list(enc.shape) == m["enc_shape"]
    scale = max(abs(v) for v in m["enc_stats"][2:])
    assert np.abs(enc[:4] - arrays[f"{clip}/enc_head"]).max() <= 1e-3 * scale
    assert np.abs(enc[-4:] - arrays[f"{clip}/enc_tail"]).max() <= 1e-3 * scale
    prompt = e.prompt_ids(pcm.size)
    assert prompt == m["prompt_ids"]
    steps = list(e.native.generate(pcm, prompt, max_new_tokens=24, eos_ids=e.eos_ids, with_logits=True))
    assert [t for t, _ in steps] == m["token_ids"]
    for i, (_, logits) in enumerate(steps[: arrays[f"{clip}/top_ids"].shape[0]]):
        assert logits is not None
        ref = arrays[f"{clip}/top_logits"][i]
        ours = logits[arrays[f"{clip}/top_ids"][i]]
        assert np.abs(ours - ref).max() <= 1e-3 * np.abs(ref).max() + 1e-4
    r = e.transcribe(pcm, max_new_tokens=24)
    assert r.text == m["text"] and (r.language or "") == m["language"]
