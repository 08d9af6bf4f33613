"""The official implementation (PyPI `qwen-asr`, transformers + PyTorch), as the judge.

Runs Qwen3ASRForConditionalGeneration and Qwen3ASRProcessor from
qwen_asr.core.transformers_backend in float32 on the CPU, and the official
prompt building and output parsing of qwen_asr.inference, on a checkpoint
directory. Needs torch (`make reference`).

For a Qwen3-ForcedAligner checkpoint, `align` runs the official
Qwen3ForcedAligner (qwen_asr.inference) the way its `align()` does, step by
step, and `align()` itself end to end.

One adjustment: the audio encoder is meant to attend inside windows of
n_window_infer mel frames (8 s): the official vLLM backend and the
flash-attention path do, but the transformers backend's sdpa/eager path
never passes the block mask it can build (`_prepare_attention_mask`), so
for clips over 8 s it attends across windows. The harness passes that
official mask to the encoder layers so that both sides compute the model
as designed; `windowed=False` gives the unpatched behaviour.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@functools.lru_cache(maxsize=4)
def load(model_dir: str | Path) -> tuple[Any, Any]:
    """(model, processor) for a checkpoint directory, float32, eval mode."""
    import torch
    from qwen_asr.core.transformers_backend import Qwen3ASRForConditionalGeneration, Qwen3ASRProcessor

    model = Qwen3ASRForConditionalGeneration.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    # as the official Qwen3ASRModel.from_pretrained loads it
    processor = Qwen3ASRProcessor.from_pretrained(str(model_dir), fix_mistral_regex=True)
    return model, processor


@contextlib.contextmanager
def windowed_encoder(model: Any, enabled: bool = True) -> Iterator[None]:
    """Makes the encoder layers use the official block mask (see the module docstring)."""
    if not enabled:
        yield
        return
    tower = model.thinker.audio_tower
    layers = list(tower.layers)
    originals = [layer.forward for layer in layers]

    def patched(orig: Any) -> Any:
        def forward(hidden_states: Any, cu_seqlens: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
            mask = tower._prepare_attention_mask(hidden_states, cu_seqlens)
            return orig(hidden_states, cu_seqlens, attention_mask=mask, **kwargs)

        return forward

    for layer, orig in zip(layers, originals, strict=True):
        layer.forward = patched(orig)
    try:
        yield
    finally:
        for layer, orig in zip(layers, originals, strict=True):
            layer.forward = orig


def _prompt_text(processor: Any, context: str, language: str | None) -> str:
    # What qwen_asr.inference.Qwen3ASRModel._build_text_prompt renders.
    messages = [
        {"role": "system", "content": context or ""},
        {"role": "user", "content": [{"type": "audio", "audio": ""}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text + (f"language {language}<asr_text>" if language else "")


def inputs(model_dir: str | Path, pcm: np.ndarray, context: str = "", language: str | None = None) -> Any:
    _, processor = load(model_dir)
    text = _prompt_text(processor, context, language)
    return processor(
        text=[text], audio=[np.asarray(pcm, dtype=np.float32)], return_tensors="pt", padding=True
    )


def mel(model_dir: str | Path, pcm: np.ndarray) -> np.ndarray:
    """Log-mel features [num_mel_bins, frames] as the official processor computes them."""
    batch = inputs(model_dir, pcm)
    n = int(batch["feature_attention_mask"].sum())
    return batch["input_features"][0, :, :n].numpy().astype(np.float32)


def encoder(model_dir: str | Path, pcm: np.ndarray, windowed: bool = True) -> np.ndarray:
    """Audio tower output after the projector [n_tokens, output_dim]."""
    import torch

    model, _ = load(model_dir)
    feats = torch.from_numpy(mel(model_dir, pcm))
    with torch.inference_mode(), windowed_encoder(model, windowed):
        out = model.thinker.audio_tower(feats, feature_lens=torch.tensor([feats.shape[1]]))
    return out.last_hidden_state.numpy().astype(np.float32)


def prompt_ids(
    model_dir: str | Path, n_samples: int, context: str = "", language: str | None = None
) -> list[int]:
    batch = inputs(model_dir, np.zeros(n_samples, dtype=np.float32), context, language)
    return [int(x) for x in batch["input_ids"][0]]


def generate(
    model_dir: str | Path,
    pcm: np.ndarray,
    context: str = "",
    language: str | None = None,
    max_new_tokens: int = 32,
    windowed: bool = True,
) -> dict[str, Any]:
    """Greedy generation as Qwen3ASRModel.transcribe runs it, with the logits of every step."""
    import torch
    from qwen_asr.inference.utils import normalize_language_name, parse_asr_output

    model, processor = load(model_dir)
    forced = normalize_language_name(language) if language else None
    batch = inputs(model_dir, pcm, context, forced)
    with torch.inference_mode(), windowed_encoder(model, windowed):
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            output_logits=True,
        )
    n_prompt = batch["input_ids"].shape[1]
    ids = [int(x) for x in out.sequences[0, n_prompt:]]
    logits = np.stack([step[0].float().numpy() for step in out.logits])
    raw = processor.batch_decode(
        out.sequences[:, n_prompt:], skip_special_tokens=True, clean_up_tokenization_spaces=False
    )[0]
    lang, text = parse_asr_output(raw, user_language=forced)
    return {
        "prompt_ids": [int(x) for x in batch["input_ids"][0]],
        "token_ids": ids,
        "logits": logits,
        "raw_text": raw,
        "language": lang,
        "text": text,
    }


# ==== Forced aligner ====


@functools.lru_cache(maxsize=2)
def load_aligner(model_dir: str | Path) -> Any:
    """The official Qwen3ForcedAligner for a checkpoint directory, float32, eval mode."""
    import torch
    from qwen_asr.inference.qwen3_forced_aligner import Qwen3ForcedAligner

    aligner = Qwen3ForcedAligner.from_pretrained(str(model_dir), dtype=torch.float32)
    aligner.model.eval()
    return aligner


def align(
    model_dir: str | Path, pcm: np.ndarray, text: str, language: str, windowed: bool = True
) -> dict[str, Any]:
    """What Qwen3ForcedAligner.align computes: the words and input ids (encode_timestamp + the HF
    processor), the head's logits at the timestamp markers of one thinker forward pass and their
    argmax; and the items of align() itself (text, start, end in seconds)."""
    import torch

    aligner = load_aligner(model_dir)
    pcm = np.asarray(pcm, dtype=np.float32)
    words, prompt = aligner.aligner_processor.encode_timestamp(text, language)
    batch = aligner.processor(text=[prompt], audio=[pcm], return_tensors="pt", padding=True)
    ids = batch["input_ids"][0]
    with torch.inference_mode(), windowed_encoder(aligner.model, windowed):
        logits = aligner.model.thinker(**batch).logits[0]
        result = aligner.align(audio=(pcm, 16000), text=text, language=language)[0]
    marker_logits = logits[ids == aligner.timestamp_token_id].float().numpy()
    return {
        "words": words,
        "prompt_ids": [int(x) for x in ids],
        "logits": marker_logits,
        "classes": marker_logits.argmax(axis=-1),
        "items": [(it.text, it.start_time, it.end_time) for it in result],
    }


def items_from_classes(
    model_dir: str | Path, words: list[str], classes: Any
) -> list[tuple[str, float, float]]:
    """Word items from marker classes through the official parse_timestamp (fix_timestamp
    included), as align() turns its argmax into seconds."""
    aligner = load_aligner(model_dir)
    ms = np.asarray(classes, dtype=np.float32) * np.float32(aligner.timestamp_segment_time)
    parsed = aligner.aligner_processor.parse_timestamp(words, ms)
    return [
        (it["text"], round(it["start_time"] / 1000.0, 3), round(it["end_time"] / 1000.0, 3)) for it in parsed
    ]
