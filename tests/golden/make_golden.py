"""Writes the golden files: what the official implementation computes on the tiny checkpoints.

    .venv/bin/python tests/golden/make_golden.py      # needs torch (make reference)

For each tiny preset and clip (0.6 s, 5 s, 11 s) it stores, from the official
qwen-asr code: mel feature slices and statistics, encoder output slices and
statistics, prompt ids, greedy token ids, the top-16 logits of the first
steps and the parsed text, plus the sha256 of the generated weights (so a
change of the generator shows up as such). tests/engine/test_golden.py
checks libqwen against these files without torch.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[1]))

from qwen_serve.testing import reference  # noqa: E402
from qwen_serve.testing.checkpoint import make_checkpoint  # noqa: E402
from qwen_serve.testing.clips import speech_like  # noqa: E402

PRESETS = ["tiny-0.6b", "tiny-1.7b"]
CLIPS = {"0.6s": 0.6, "5s": 5.0, "11s": 11.0}
STEPS = 4  # logit rows kept
TOP = 16
MAX_NEW_TOKENS = 24


def stats(x: np.ndarray) -> list[float]:
    return [float(x.mean()), float(x.std()), float(x.min()), float(x.max())]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for preset in PRESETS:
            d = make_checkpoint(Path(tmp) / preset, preset=preset, seed=0)
            sha = hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
            meta: dict[str, object] = {"preset": preset, "seed": 0, "safetensors_sha256": sha, "clips": {}}
            arrays: dict[str, np.ndarray] = {}
            for name, seconds in CLIPS.items():
                pcm = speech_like(seconds, seed=3)
                mel = reference.mel(d, pcm)
                enc = reference.encoder(d, pcm)
                gen = reference.generate(d, pcm, max_new_tokens=MAX_NEW_TOKENS)
                logits = gen["logits"][:STEPS]
                top = np.argsort(-logits, axis=1)[:, :TOP]
                arrays[f"{name}/mel_head"] = mel[:, :8]
                arrays[f"{name}/mel_tail"] = mel[:, -8:]
                arrays[f"{name}/enc_head"] = enc[:4]
                arrays[f"{name}/enc_tail"] = enc[-4:]
                arrays[f"{name}/top_ids"] = top.astype(np.int32)
                arrays[f"{name}/top_logits"] = np.take_along_axis(logits, top, axis=1).astype(np.float32)
                meta["clips"][name] = {  # type: ignore[index]
                    "seconds": seconds,
                    "mel_shape": list(mel.shape),
                    "mel_stats": stats(mel),
                    "enc_shape": list(enc.shape),
                    "enc_stats": stats(enc),
                    "prompt_ids": gen["prompt_ids"],
                    "token_ids": gen["token_ids"],
                    "text": gen["text"],
                    "language": gen["language"],
                }
            np.savez_compressed(HERE / f"{preset}.npz", **arrays)
            (HERE / f"{preset}.json").write_text(
                json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
            )
            print(f"wrote {preset}")


if __name__ == "__main__":
    main()
