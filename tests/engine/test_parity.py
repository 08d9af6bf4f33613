"""libqwen against the official implementation (qwen-asr, PyTorch) on tiny checkpoints.

Tolerances (float32 on both sides; bf16 weights are widened exactly by both):
- mel features: max |diff| <= 2e-4 (different FFT and summation order)
- encoder output: max |diff| <= 1e-3 * max |ref|
- logits of every generated step: max |diff| <= 1e-3 * max |ref| + 1e-4
- greedy token ids, prompt ids, parsed language and text: identical
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qwen_serve.engine import Engine
from qwen_serve.engine._native import NativeModel, exact_isas
from qwen_serve.testing.clips import speech_like

pytestmark = pytest.mark.reference
reference = pytest.importorskip("qwen_serve.testing.reference")

CLIPS = {"0.6s": 0.6, "5s": 5.0, "11s": 11.0}  # under 1 s, about 5 s, over 8 s (two encoder windows)


@pytest.fixture(scope="module", params=["tiny-0.6b", "tiny-1.7b"])
def model(request: pytest.FixtureRequest, tiny_dirs: dict[str, Path]):
    d = tiny_dirs[request.param]
    with Engine(d, threads=2) as e:
        yield d, e


@pytest.mark.parametrize("name", list(CLIPS))
def test_mel(model, name: str) -> None:
    d, e = model
    pcm = speech_like(CLIPS[name], seed=1)
    ours, ref = e.native.mel(pcm), reference.mel(d, pcm)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 2e-4


@pytest.mark.parametrize("name", list(CLIPS))
def test_encoder(model, name: str) -> None:
    d, e = model
    pcm = speech_like(CLIPS[name], seed=2)
    ours, ref = e.native.encode(pcm), reference.encoder(d, pcm)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-3 * np.abs(ref).max()


@pytest.mark.parametrize("name", list(CLIPS))
@pytest.mark.parametrize(
    ("language", "context"), [(None, ""), ("English", "Qwen, Ray Serve, iPhone JavaScript McDonald's")]
)
def test_generate(model, name: str, language: str | None, context: str) -> None:
    d, e = model
    pcm = speech_like(CLIPS[name], seed=3)
    ref = reference.generate(d, pcm, context=context, language=language, max_new_tokens=24)
    prompt = e.prompt_ids(pcm.size, context=context, language=language)
    assert prompt == list(ref["prompt_ids"])
    got = list(e.native.generate(pcm, prompt, max_new_tokens=24, eos_ids=e.eos_ids, with_logits=True))
    ids = [t for t, _ in got]
    assert ids == list(ref["token_ids"])
    ref_logits = np.asarray(ref["logits"])
    for step, (_, logits) in enumerate(got):
        assert logits is not None
        tol = 1e-3 * np.abs(ref_logits[step]).max() + 1e-4
        assert np.abs(logits - ref_logits[step]).max() <= tol, f"step {step}"
    result = e.transcribe(pcm, language=language, context=context, max_new_tokens=24)
    assert result.token_ids == ids
    assert result.text == ref["text"]
    assert (result.language or "") == (ref["language"] or "")


@pytest.mark.parametrize("isa", exact_isas())
def test_kernel_sets_agree(tiny_dir: Path, isa: str) -> None:
    """Every kernel set this CPU runs gives the scalar path's tokens and near-equal logits."""
    pcm = speech_like(5.0, seed=4)
    with NativeModel(tiny_dir, threads=2, isa="scalar") as s, NativeModel(tiny_dir, threads=2, isa=isa) as v:
        assert v.isa == isa
        n = s.audio_token_count(pcm.size)
        ids = [s.info("audio_start_token_id")] + [s.audio_token_id] * n + [s.info("audio_end_token_id")]
        a = list(s.generate(pcm, ids, max_new_tokens=12, eos_ids=[-1], with_logits=True))
        b = list(v.generate(pcm, ids, max_new_tokens=12, eos_ids=[-1], with_logits=True))
        assert [t for t, _ in a] == [t for t, _ in b]
        for (_, la), (_, lb) in zip(a, b, strict=False):
            assert la is not None and lb is not None
            assert np.abs(la - lb).max() <= 1e-4 * np.abs(la).max() + 1e-5
