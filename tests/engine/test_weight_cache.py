"""libqwen's weight cache (native/src/weight_cache.c) on tiny checkpoints: the first fast load writes the
packed weights to a file, the next maps them, and the tokens and logits are the same bits as a load
without it; a changed checkpoint, a damaged file or one that does not match are never used (written
again); a directory it cannot write to costs nothing but the cache. Test names say "fast" where
test_kernels.py's emulated-AMX run takes them (the AMX tiles' packing from the file too)."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from qwen_serve.engine import Engine
from qwen_serve.engine._native import NativeModel, exact_isas
from qwen_serve.testing.clips import speech_like

FOOTER = struct.Struct("<8sQQQ")  # magic, data bytes, key bytes, padding (weight_cache.c)
PAGE = os.sysconf("SC_PAGESIZE")


@pytest.fixture(scope="module")
def clip_and_prompt(tiny_dir: Path) -> tuple[np.ndarray, list[int]]:
    pcm = speech_like(3.0, 1)
    with Engine(tiny_dir, threads=1, max_batch=1) as e:
        return pcm, e.prompt_ids(pcm.size)


@pytest.fixture
def checkpoint(tiny_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny checkpoint that a test may touch."""
    return Path(shutil.copytree(tiny_dir, tmp_path / "tiny"))


def decode(
    model_dir: Path, clip_and_prompt: tuple[np.ndarray, list[int]], cache: Path | str | None, **options: str
) -> tuple[str, list[int], list[np.ndarray]]:
    """What the load did with the cache, and 8 greedy tokens with their logits."""
    pcm, prompt = clip_and_prompt
    with NativeModel(model_dir, threads=2, weight_cache=cache, **{"precision": "fast", **options}) as m:
        steps = list(m.generate(pcm, prompt, max_new_tokens=8, eos_ids=[-1], with_logits=True))
        return m.weight_cache, [t for t, _ in steps], [np.array(x) for _, x in steps]


def cache_files(cache: Path) -> list[Path]:
    return sorted(cache.iterdir())


def test_fast_weights_written_then_mapped_with_the_same_bits(
    checkpoint: Path, tmp_path: Path, clip_and_prompt: tuple[np.ndarray, list[int]]
) -> None:
    cache = tmp_path / "cache"
    state, tokens, logits = decode(checkpoint, clip_and_prompt, None)
    assert state == "none"
    for expected in ("written", "loaded", "loaded"):
        state, t, x = decode(checkpoint, clip_and_prompt, cache)
        assert state == expected
        assert t == tokens
        assert all(np.array_equal(a, b) for a, b in zip(x, logits, strict=True))
    (file,) = cache_files(cache)  # one file, no temporary left
    assert file.name.startswith("tiny-") and file.suffix == ".qwc"
    magic, data, key, _ = FOOTER.unpack(file.read_bytes()[-FOOTER.size :])
    assert magic == b"QWENWC01" and data > 0
    assert file.stat().st_size == -(-data // PAGE) * PAGE + key + FOOTER.size
    with NativeModel(checkpoint, precision="fast", weight_cache=cache) as m:
        assert m.context_info("weight_cache_bytes") == data


def test_fast_weights_written_again_for_a_changed_checkpoint(
    checkpoint: Path, tmp_path: Path, clip_and_prompt: tuple[np.ndarray, list[int]]
) -> None:
    cache = tmp_path / "cache"
    assert decode(checkpoint, clip_and_prompt, cache)[0] == "written"
    weights = checkpoint / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # the checkpoint changed
    assert decode(checkpoint, clip_and_prompt, cache)[0] == "written"
    assert decode(checkpoint, clip_and_prompt, cache)[0] == "loaded"
    assert len(cache_files(cache)) == 1  # the same file, replaced


def test_fast_damaged_file_is_written_again(
    checkpoint: Path, tmp_path: Path, clip_and_prompt: tuple[np.ndarray, list[int]]
) -> None:
    cache = tmp_path / "cache"
    _, tokens, logits = decode(checkpoint, clip_and_prompt, cache)
    (file,) = cache_files(cache)
    whole = file.read_bytes()
    for damaged in (
        whole[:-100],  # cut short
        whole[: -FOOTER.size] + b"NOTMAGIC" + whole[-FOOTER.size + 8 :],  # no footer
        whole[:-40] + bytes([whole[-40] ^ 1]) + whole[-39:],  # another key (its last byte)
        b"",
    ):
        file.write_bytes(damaged)
        state, t, x = decode(checkpoint, clip_and_prompt, cache)
        assert state == "written" and t == tokens
        assert all(np.array_equal(a, b) for a, b in zip(x, logits, strict=True))
        assert file.read_bytes() == whole


def test_fast_file_with_this_key_and_other_bytes_is_removed(
    checkpoint: Path, tmp_path: Path, clip_and_prompt: tuple[np.ndarray, list[int]]
) -> None:
    """A file that holds this load's key but not its bytes (what a library bug would write) fails the
    load once with a message and goes; the next load writes it again."""
    cache = tmp_path / "cache"
    decode(checkpoint, clip_and_prompt, cache)
    (file,) = cache_files(cache)
    whole = file.read_bytes()
    magic, data, key_bytes, pad = FOOTER.unpack(whole[-FOOTER.size :])
    key = whole[-FOOTER.size - key_bytes : -FOOTER.size]
    grown = data + PAGE  # a page more than the load takes
    file.write_bytes(whole[:data] + bytes(PAGE) + bytes(-(-grown // PAGE) * PAGE - grown) + key)
    with file.open("ab") as f:
        f.write(FOOTER.pack(magic, grown, key_bytes, pad))
    with pytest.raises(ValueError, match="did not match this load"):
        decode(checkpoint, clip_and_prompt, cache)
    assert not file.exists()
    assert decode(checkpoint, clip_and_prompt, cache)[0] == "written"


def test_fast_unwritable_cache_costs_only_the_cache(
    checkpoint: Path, clip_and_prompt: tuple[np.ndarray, list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    _, tokens, logits = decode(checkpoint, clip_and_prompt, None)
    state, t, x = decode(checkpoint, clip_and_prompt, "/proc")  # exists; no file can be made there
    assert state == "failed" and t == tokens
    assert all(np.array_equal(a, b) for a, b in zip(x, logits, strict=True))
    assert "weight cache not written in /proc" in caplog.text


def test_exact_on_avx2_or_scalar_packs_nothing_to_cache(
    checkpoint: Path, tmp_path: Path, clip_and_prompt: tuple[np.ndarray, list[int]]
) -> None:
    """exact runs on the checkpoint's own pages with these kernel sets: no file at all."""
    cache = tmp_path / "cache"
    isa = "avx2" if "avx2" in exact_isas() else "scalar"
    assert decode(checkpoint, clip_and_prompt, cache, precision="exact", isa=isa)[0] == "none"
    assert cache_files(cache) == []
