"""The generated checkpoints: Hugging Face layout, the real tokenizer, every dtype and sharding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qwen_serve.engine import Engine
from qwen_serve.engine._native import NativeModel
from qwen_serve.engine.text import load_tokenizer
from qwen_serve.testing.checkpoint import make_checkpoint, make_config, tensor_shapes
from qwen_serve.testing.clips import speech_like

FILES = [
    "config.json", "generation_config.json", "preprocessor_config.json", "tokenizer_config.json",
    "chat_template.json", "vocab.json", "merges.txt", "model.safetensors",
]  # fmt: skip


def test_files_and_determinism(tmp_path: Path, tiny_dir: Path) -> None:
    assert sorted(p.name for p in tiny_dir.iterdir()) == sorted(FILES)
    again = make_checkpoint(tmp_path / "again", preset="tiny-0.6b", seed=0)
    for name in FILES:
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    other = make_checkpoint(tmp_path / "other", preset="tiny-0.6b", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_dir / "model.safetensors").read_bytes()


def test_tokenizer_is_qwens(tiny_dir: Path) -> None:
    with Engine(tiny_dir) as e:
        tok = e.tokenizer
        assert tok.encode("Hello world").ids == [9707, 1879]
        for text in [
            "你好，世界。",
            "佢哋喺度講廣東話",
            "emoji 🎉 ok",
            "  spaces\n\nand lines",
            "language English<asr_text>Hi",
        ]:
            assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text
        ids = {t: tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_start|>",
                                                 "<|audio_end|>", "<|audio_pad|>", "<asr_text>")}  # fmt: skip
        assert ids == {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                       "<|audio_start|>": 151669, "<|audio_end|>": 151670, "<|audio_pad|>": 151676,
                       "<asr_text>": 151704}  # fmt: skip
        # <asr_text> survives skip_special_tokens (the official parser needs it); <|im_end|> does not.
        assert tok.decode([151704, 151645], skip_special_tokens=True) == "<asr_text>"


@pytest.mark.parametrize(("dtype", "shards"), [("f32", 1), ("f16", 1), ("bf16", 3)])
def test_dtypes_and_shards_load(tmp_path: Path, tiny_dir: Path, dtype: str, shards: int) -> None:
    d = make_checkpoint(tmp_path / dtype, preset="tiny-0.6b", seed=0, dtype=dtype, shards=shards)
    if shards > 1:
        index = json.loads((d / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) == shards
    pcm = speech_like(2.0)
    with NativeModel(tiny_dir) as ref, NativeModel(d) as m:
        # Same random values, rounded to another dtype: close, not equal (bf16 is exact only for bf16).
        a, b = ref.encode(pcm), m.encode(pcm)
        assert a.shape == b.shape
        tol = 1e-6 if dtype == "bf16" else 0.05
        assert np.abs(a - b).max() <= tol * max(1.0, float(np.abs(a).max()))


def test_aligner_checkpoint(tiny_aligner_dir: Path, tiny_dir: Path) -> None:
    """The released forced aligner's layout: thinker model_type, classify_num, the top-level timestamp
    keys, vocab 152064, an untied [classify_num, hidden] head, <timestamp> as an added token at its id."""
    assert sorted(p.name for p in tiny_aligner_dir.iterdir()) == sorted(FILES)
    config = json.loads((tiny_aligner_dir / "config.json").read_text())
    thinker = config["thinker_config"]
    assert config["model_type"] == "qwen3_asr" and thinker["model_type"] == "qwen3_forced_aligner"
    assert thinker["classify_num"] == 5000 and thinker["text_config"]["vocab_size"] == 152064
    assert config["timestamp_token_id"] == 151705 and config["timestamp_segment_time"] == 80
    assert thinker["text_config"]["tie_word_embeddings"] is False
    shapes = dict(tensor_shapes(config))
    assert shapes["thinker.lm_head.weight"] == (5000, thinker["text_config"]["hidden_size"])
    added = json.loads((tiny_aligner_dir / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert added["151705"]["content"] == "<timestamp>"
    assert (
        "151705" not in json.loads((tiny_dir / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    )
    tok, _ = load_tokenizer(tiny_aligner_dir)  # keeps the marker whole
    ids = tok.encode("Hello<timestamp><timestamp>world<timestamp><timestamp>", add_special_tokens=False).ids
    assert ids == [9707, 151705, 151705, 14615, 151705, 151705]  # "world": no leading space
    again = make_checkpoint(tiny_aligner_dir.parent / "again-aligner", preset="tiny-aligner", seed=0)
    assert (again / "model.safetensors").read_bytes() == (tiny_aligner_dir / "model.safetensors").read_bytes()


@pytest.mark.reference
def test_official_aligner_loads_and_aligns(tiny_aligner_dir: Path) -> None:
    pytest.importorskip("torch")
    from qwen_asr.inference.qwen3_forced_aligner import Qwen3ForcedAligner

    aligner = Qwen3ForcedAligner.from_pretrained(str(tiny_aligner_dir))
    assert aligner.model.thinker.lm_head.weight.shape[0] == 5000
    assert aligner.timestamp_token_id == 151705 and aligner.timestamp_segment_time == 80
    result = aligner.align(audio=(speech_like(2.0), 16000), text="Hello world, again.", language="English")[0]
    assert [item.text for item in result] == ["Hello", "world", "again"]
    assert all(0 <= item.start_time <= item.end_time <= 400.0 for item in result)


@pytest.mark.reference
@pytest.mark.parametrize(
    "preset", ["tiny-0.6b", "tiny-1.7b", "full-0.6b", "full-1.7b", "tiny-aligner", "full-aligner-0.6b"]
)
def test_layout_matches_official_model(preset: str) -> None:
    torch = pytest.importorskip("torch")
    from qwen_asr.core.transformers_backend import Qwen3ASRConfig, Qwen3ASRForConditionalGeneration

    config = make_config(preset)
    official = Qwen3ASRConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        model = Qwen3ASRForConditionalGeneration(official)
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ours = dict(tensor_shapes(config))
    if config["thinker_config"]["text_config"]["tie_word_embeddings"]:
        state.pop("thinker.lm_head.weight", None)  # tied: the checkpoint stores only the embeddings
    assert ours == state


@pytest.mark.reference
def test_official_processor_loads_and_renders(tiny_dir: Path) -> None:
    from qwen_asr.core.transformers_backend import Qwen3ASRProcessor

    processor = Qwen3ASRProcessor.from_pretrained(str(tiny_dir))
    messages = [
        {"role": "system", "content": "ctx"},
        {"role": "user", "content": [{"type": "audio", "audio": ""}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nctx<|im_end|>\n<|im_start|>user\n"
        "<|audio_start|><|audio_pad|><|audio_end|><|im_end|>\n<|im_start|>assistant\n"
    )
