"""Qwen3-ASR checkpoints in the exact Hugging Face layout, with random weights.

Model weights cannot be downloaded in CI, so tests and benchmarks use
checkpoints written here: the same files as Qwen/Qwen3-ASR-0.6B / -1.7B
(config.json, model.safetensors or shards + index, vocab.json, merges.txt,
tokenizer_config.json, chat_template.json, preprocessor_config.json,
generation_config.json), the same tensor names and config keys, the real
Qwen tokenizer, and random weights from a fixed seed.

    python -m qwen_serve.testing.checkpoint OUT_DIR --preset tiny-0.6b
    python -m qwen_serve.testing.checkpoint OUT_DIR --preset full-0.6b      # ~1.8 GB, real dimensions

Presets "tiny-*" keep the real models' proportions at small sizes (and the
full vocabulary, so the real tokenizer works); "full-*" have the real
dimensions (0.6B: d_model 896, 18 encoder layers, hidden 1024, 28 layers;
1.7B: 1024 / 24, 2048 / 28).

The "*-aligner*" presets are Qwen/Qwen3-ForcedAligner-0.6B's layout: thinker
model_type "qwen3_forced_aligner" with classify_num (5000 time bins),
top-level timestamp_token_id (151705, the `<timestamp>` added token) and
timestamp_segment_time (80 ms), text vocab_size 152064, and an untied head
thinker.lm_head.weight [classify_num, hidden]. Its encoder has the 1.7B's
dimensions (d_model 1024, 24 layers, 16 heads, FFN 4096) in front of the
0.6B's decoder (hidden 1024, 28 layers); "full-aligner-0.6b" has exactly those.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

TOKENIZER_DATA = Path(__file__).parent / "tokenizer"

LANGUAGES = [
    "Chinese", "English", "Cantonese", "Arabic", "German", "French", "Spanish", "Portuguese",
    "Indonesian", "Italian", "Korean", "Russian", "Thai", "Vietnamese", "Japanese", "Turkish",
    "Hindi", "Malay", "Dutch", "Swedish", "Danish", "Finnish", "Polish", "Czech", "Filipino",
    "Persian", "Greek", "Romanian", "Hungarian", "Macedonian",
]  # fmt: skip

# Added tokens of the Qwen3 family from <|endoftext|> on. Ids 151643-151670,
# 151676 (<|audio_pad|>) and 151704 (<asr_text>) are the ones Qwen3-ASR uses;
# the names of the others are placeholders that only keep the ids in place.
_NAMED_TOKENS = {
    151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>",
    151646: "<|object_ref_start|>", 151647: "<|object_ref_end|>", 151648: "<|box_start|>",
    151649: "<|box_end|>", 151650: "<|quad_start|>", 151651: "<|quad_end|>",
    151652: "<|vision_start|>", 151653: "<|vision_end|>", 151654: "<|vision_pad|>",
    151655: "<|image_pad|>", 151656: "<|video_pad|>", 151657: "<tool_call>", 151658: "</tool_call>",
    151659: "<|fim_prefix|>", 151660: "<|fim_middle|>", 151661: "<|fim_suffix|>", 151662: "<|fim_pad|>",
    151663: "<|repo_name|>", 151664: "<|file_sep|>", 151665: "<tool_response>", 151666: "</tool_response>",
    151667: "<think>", 151668: "</think>", 151669: "<|audio_start|>", 151670: "<|audio_end|>",
    151676: "<|audio_pad|>", 151704: "<asr_text>",
}  # fmt: skip
# Not special: they must survive decode(skip_special_tokens=True), as the
# official parser looks for <asr_text> in the decoded text.
_NOT_SPECIAL = {
    151657,
    151658,
    151659,
    151660,
    151661,
    151662,
    151663,
    151664,
    151665,
    151666,
    151667,
    151668,
    151704,
}
FIRST_ADDED, LAST_ADDED = 151643, 151704
# The forced aligner's tokenizer has one more added token: its time marker.
TIMESTAMP_TOKEN, TIMESTAMP_TOKEN_ID = "<timestamp>", 151705
ALIGNER_LANGUAGES = [
    "Chinese", "Cantonese", "English", "German", "Spanish", "French", "Italian", "Portuguese",
    "Russian", "Korean", "Japanese",
]  # fmt: skip
ALIGNER = dict(classify_num=5000, timestamp_token_id=TIMESTAMP_TOKEN_ID, timestamp_segment_time=80)
ALIGNER_VOCAB = 152064
# The aligner presets: q/k norm weights 6x, so that the decoder's attention is peaked (scores of
# order 36 rather than 1) and each <timestamp> marker's hidden state depends on its own
# neighbourhood; with flat attention every marker of a clip averages the same audio and the
# head's argmax is one or two classes for the whole clip, which would make parity say little.
ALIGNER_INIT = dict(qk_norm=6.0)

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if item['type'] == 'audio' %}{{- '<|audio_start|><|audio_pad|><|audio_end|>' }}"
    "{%- elif item['type'] == 'text' %}{{- item['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny-0.6b": {
        "audio": dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=256,
                      output_dim=96, downsample_hidden_size=16),
        "text": dict(hidden_size=96, intermediate_size=288, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=32, tie_word_embeddings=True),
    },
    "tiny-1.7b": {
        "audio": dict(d_model=80, encoder_layers=3, encoder_attention_heads=5, encoder_ffn_dim=320,
                      output_dim=128, downsample_hidden_size=16),
        "text": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=32, tie_word_embeddings=False),
    },
    "full-0.6b": {
        "audio": dict(d_model=896, encoder_layers=18, encoder_attention_heads=14, encoder_ffn_dim=3584,
                      output_dim=1024, downsample_hidden_size=480),
        "text": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    },
    "full-1.7b": {
        "audio": dict(d_model=1024, encoder_layers=24, encoder_attention_heads=16, encoder_ffn_dim=4096,
                      output_dim=2048, downsample_hidden_size=480),
        "text": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    },
    "tiny-aligner": {
        "audio": dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=256,
                      output_dim=96, downsample_hidden_size=16),
        "text": dict(hidden_size=96, intermediate_size=288, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=32, tie_word_embeddings=False, vocab_size=ALIGNER_VOCAB),
        "aligner": ALIGNER,
        "init": ALIGNER_INIT,
    },
    "full-aligner-0.6b": {
        "audio": dict(d_model=1024, encoder_layers=24, encoder_attention_heads=16, encoder_ffn_dim=4096,
                      output_dim=1024, downsample_hidden_size=480),
        "text": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=False, vocab_size=ALIGNER_VOCAB),
        "aligner": ALIGNER,
        "init": ALIGNER_INIT,
    },
}  # fmt: skip


def make_config(preset: str) -> dict[str, Any]:
    p = PRESETS[preset]
    audio = dict(
        model_type="qwen3_asr_audio_encoder", num_mel_bins=128, n_window=50, n_window_infer=800,
        conv_chunksize=500, max_source_positions=1500, activation_function="gelu", dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, scale_embedding=False, initializer_range=0.02,
        **p["audio"],
    )  # fmt: skip
    text = dict(
        model_type="qwen3_asr_text", vocab_size=151936, hidden_act="silu", max_position_embeddings=65536,
        rms_norm_eps=1e-6, rope_theta=1000000.0, attention_bias=False, attention_dropout=0.0,
        rope_scaling={"interleaved": True, "mrope_interleaved": True, "mrope_section": [24, 20, 20],
                      "rope_type": "default", "type": "default"},
        use_cache=True, initializer_range=0.02,
    )  # fmt: skip
    text.update(p["text"])
    aligner = p.get("aligner")
    thinker: dict[str, Any] = {
        # The official model builds the classify_num-way head only for a model_type holding
        # "forced_aligner" (save_pretrained would write "qwen3_asr_thinker": the release's value wins).
        "model_type": "qwen3_forced_aligner" if aligner else "qwen3_asr_thinker",
        "audio_config": audio,
        "text_config": text,
        "audio_token_id": 151676,
        "audio_start_token_id": 151669,
        "audio_end_token_id": 151670,
        "user_token_id": 872,
        "initializer_range": 0.02,
    }
    config: dict[str, Any] = {
        "architectures": ["Qwen3ASRForConditionalGeneration"],
        "model_type": "qwen3_asr",
        "support_languages": ALIGNER_LANGUAGES if aligner else LANGUAGES,
        "thinker_config": thinker,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.57.6",
    }
    if aligner:  # classify_num in the thinker; the timestamp keys at the top level, as released
        thinker["classify_num"] = aligner["classify_num"]
        config["timestamp_token_id"] = aligner["timestamp_token_id"]
        config["timestamp_segment_time"] = aligner["timestamp_segment_time"]
    return config


def is_aligner(config: dict[str, Any]) -> bool:
    return "forced_aligner" in config["thinker_config"].get("model_type", "")


def tensor_shapes(config: dict[str, Any]) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of Qwen3ASRForConditionalGeneration's state dict."""
    a = config["thinker_config"]["audio_config"]
    t = config["thinker_config"]["text_config"]
    d, ffn, c = a["d_model"], a["encoder_ffn_dim"], a["downsample_hidden_size"]
    f3 = (((a["num_mel_bins"] + 1) // 2 + 1) // 2 + 1) // 2
    p = "thinker.audio_tower"
    for i, cin in enumerate((1, c, c), start=1):
        yield f"{p}.conv2d{i}.weight", (c, cin, 3, 3)
        yield f"{p}.conv2d{i}.bias", (c,)
    yield f"{p}.conv_out.weight", (d, c * f3)
    for i in range(a["encoder_layers"]):
        q = f"{p}.layers.{i}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            yield f"{q}.self_attn.{proj}.weight", (d, d)
            yield f"{q}.self_attn.{proj}.bias", (d,)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            yield f"{q}.{norm}.weight", (d,)
            yield f"{q}.{norm}.bias", (d,)
        yield f"{q}.fc1.weight", (ffn, d)
        yield f"{q}.fc1.bias", (ffn,)
        yield f"{q}.fc2.weight", (d, ffn)
        yield f"{q}.fc2.bias", (d,)
    yield f"{p}.ln_post.weight", (d,)
    yield f"{p}.ln_post.bias", (d,)
    yield f"{p}.proj1.weight", (d, d)
    yield f"{p}.proj1.bias", (d,)
    yield f"{p}.proj2.weight", (a["output_dim"], d)
    yield f"{p}.proj2.bias", (a["output_dim"],)
    h, inter, hd = t["hidden_size"], t["intermediate_size"], t["head_dim"]
    nq, nkv = t["num_attention_heads"] * hd, t["num_key_value_heads"] * hd
    yield "thinker.model.embed_tokens.weight", (t["vocab_size"], h)
    for i in range(t["num_hidden_layers"]):
        q = f"thinker.model.layers.{i}"
        yield f"{q}.self_attn.q_proj.weight", (nq, h)
        yield f"{q}.self_attn.k_proj.weight", (nkv, h)
        yield f"{q}.self_attn.v_proj.weight", (nkv, h)
        yield f"{q}.self_attn.o_proj.weight", (h, nq)
        yield f"{q}.self_attn.q_norm.weight", (hd,)
        yield f"{q}.self_attn.k_norm.weight", (hd,)
        yield f"{q}.mlp.gate_proj.weight", (inter, h)
        yield f"{q}.mlp.up_proj.weight", (inter, h)
        yield f"{q}.mlp.down_proj.weight", (h, inter)
        yield f"{q}.input_layernorm.weight", (h,)
        yield f"{q}.post_attention_layernorm.weight", (h,)
    yield "thinker.model.norm.weight", (h,)
    if is_aligner(config):
        yield "thinker.lm_head.weight", (config["thinker_config"]["classify_num"], h)
    elif not t.get("tie_word_embeddings", False):
        yield "thinker.lm_head.weight", (t["vocab_size"], h)


def _init(rng: np.random.Generator, name: str, shape: tuple[int, ...], qk_norm: float = 1.0) -> np.ndarray:
    """Random values that keep activations of order one through the layers. qk_norm scales the
    decoder's per-head q/k norm weights (sharper attention: see ALIGNER_INIT)."""
    if len(shape) == 1:
        if name.startswith("thinker.model.") and name.endswith(("q_norm.weight", "k_norm.weight")):
            return (qk_norm * (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32))).astype(np.float32)
        if name.endswith("norm.weight") or "layer_norm.weight" in name or "ln_post.weight" in name:
            return (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
        return (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    if name.endswith("embed_tokens.weight") or name.endswith("lm_head.weight"):
        return (EMBED_STD * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)).astype(np.float32)


EMBED_STD = 1.0  # with tied embeddings (0.6B) the tiny model tends to repeat a token: fine, and it exercises the repetition fix
_DTYPES = {"bf16": ("BF16", 2), "f16": ("F16", 2), "f32": ("F32", 4)}


def _encode(values: np.ndarray, dtype: str) -> bytes:
    if dtype == "f32":
        return values.astype("<f4").tobytes()
    if dtype == "f16":
        return values.astype("<f2").tobytes()
    bits = values.astype(np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even
    return rounded.astype("<u2").tobytes()


def _write_safetensors(
    path: Path,
    tensors: list[tuple[int, str, tuple[int, ...]]],
    dtype: str,
    seed: int,
    init: dict[str, float] | None = None,
) -> None:
    """Streams tensors to one safetensors file: the header first, then each tensor's bytes.
    Tensor i draws from its own generator (seed, i), so values do not depend on sharding."""
    st_dtype, size = _DTYPES[dtype]
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for _, name, shape in tensors:
        n = int(np.prod(shape)) * size
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data section
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for i, name, shape in tensors:
            f.write(_encode(_init(np.random.default_rng([seed, i]), name, shape, **(init or {})), dtype))


def _tokenizer_config(aligner: bool = False) -> dict[str, Any]:
    added = {}
    names = _NAMED_TOKENS | ({TIMESTAMP_TOKEN_ID: TIMESTAMP_TOKEN} if aligner else {})
    not_special = _NOT_SPECIAL | ({TIMESTAMP_TOKEN_ID} if aligner else set())
    for i in range(FIRST_ADDED, (TIMESTAMP_TOKEN_ID if aligner else LAST_ADDED) + 1):
        added[str(i)] = {
            "content": names.get(i, f"<|reserved_{i}|>"),
            "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": i not in not_special,
        }  # fmt: skip
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": [
            "<|im_start|>",
            "<|im_end|>",
            "<|audio_start|>",
            "<|audio_end|>",
            "<|audio_pad|>",
        ],
        "audio_bos_token": "<|audio_start|>",
        "audio_eos_token": "<|audio_end|>",
        "audio_token": "<|audio_pad|>",
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "extra_special_tokens": {
            "audio_bos_token": "<|audio_start|>",
            "audio_eos_token": "<|audio_end|>",
            "audio_token": "<|audio_pad|>",
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },  # fmt: skip
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "processor_class": "Qwen3ASRProcessor",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


PREPROCESSOR_CONFIG = {
    "chunk_length": 30, "dither": 0.0, "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128, "hop_length": 160, "n_fft": 400, "n_samples": 480000, "nb_max_frames": 3000,
    "padding_side": "right", "padding_value": 0.0, "processor_class": "Qwen3ASRProcessor",
    "return_attention_mask": True, "sampling_rate": 16000,
}  # fmt: skip


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def make_checkpoint(
    out_dir: str | Path, preset: str = "tiny-0.6b", seed: int = 0, dtype: str = "bf16", shards: int = 1
) -> Path:
    """Writes a checkpoint directory and returns its path. Same arguments, same bytes."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = make_config(preset)
    config["torch_dtype"] = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype]
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", {"do_sample": False, "eos_token_id": [151645, 151643],
                                                 "pad_token_id": 151643, "max_new_tokens": 512})  # fmt: skip
    _write_json(out / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    _write_json(out / "tokenizer_config.json", _tokenizer_config(is_aligner(config)))
    _write_json(out / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    for name in ("vocab.json", "merges.txt"):
        with gzip.open(TOKENIZER_DATA / f"{name}.gz", "rb") as src, open(out / name, "wb") as dst:
            shutil.copyfileobj(src, dst)

    tensors = [(i, name, shape) for i, (name, shape) in enumerate(tensor_shapes(config))]
    for old in out.glob("*.safetensors*"):
        old.unlink()
    if shards <= 1:
        _write_safetensors(out / "model.safetensors", tensors, dtype, seed, PRESETS[preset].get("init"))
    else:
        parts = [tensors[i::shards] for i in range(shards)]  # interleaved: every shard has both towers
        weight_map = {}
        total = 0
        for k, part in enumerate(parts, start=1):
            fname = f"model-{k:05d}-of-{shards:05d}.safetensors"
            _write_safetensors(out / fname, part, dtype, seed, PRESETS[preset].get("init"))
            for _, name, shape in part:
                weight_map[name] = fname
                total += int(np.prod(shape)) * _DTYPES[dtype][1]
        _write_json(
            out / "model.safetensors.index.json",
            {"metadata": {"total_size": total}, "weight_map": weight_map},
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--preset", default="tiny-0.6b", choices=sorted(PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="bf16", choices=sorted(_DTYPES))
    p.add_argument("--shards", type=int, default=1)
    args = p.parse_args()
    path = make_checkpoint(args.out_dir, args.preset, args.seed, args.dtype, args.shards)
    print(path)


if __name__ == "__main__":
    main()
