"""libqwen's weight cache (native/src/weight_cache.c) on tiny checkpoints: the first fast load writes the
packed weights to a file, the next maps them, and the tokens and logits are the same bits as a load
without it; a changed checkpoint, a damaged file or one that does not match are never used (written
again); a directory it cannot write to costs nothing but the cache. Test names say "fast" where
test_kernels.py's emulated-AMX run takes them (the AMX tiles' packing from the file too)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import time
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
        return m.weight_cache_state, [t for t, _ in steps], [np.array(x) for _, x in steps]


def cache_files(cache: Path) -> list[Path]:
    return sorted(cache.iterdir())


def test_fast_weights_written_then_mapped_with_the_same_bits(
    checkpoint: Path,
    tmp_path: Path,
    clip_and_prompt: tuple[np.ndarray, list[int]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="qwen_serve")
    cache = tmp_path / "cache"
    state, tokens, logits = decode(checkpoint, clip_and_prompt, None)
    assert state == "none"
    for expected in ("written", "loaded", "loaded"):
        state, t, x = decode(checkpoint, clip_and_prompt, cache)
        assert state == expected
        assert t == tokens
        assert all(np.array_equal(a, b) for a, b in zip(x, logits, strict=True))
    (file,) = cache_files(cache)  # one file, no temporary left
    assert caplog.text.count(f"written to the weight cache {cache}") == 1  # where the disk went, once
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


def test_fast_cache_name_taken_by_a_fifo_neither_blocks_nor_is_read(
    checkpoint: Path, tmp_path: Path, clip_and_prompt: tuple[np.ndarray, list[int]]
) -> None:
    """A FIFO (or any file that is not a regular one) where the cache file goes: opening it for
    reading would wait for a writer forever. The load treats it as no file and writes over it."""
    cache = tmp_path / "cache"
    assert decode(checkpoint, clip_and_prompt, cache)[0] == "written"
    (file,) = cache_files(cache)
    file.unlink()
    os.mkfifo(file)
    code = (
        "from qwen_serve.engine._native import NativeModel\n"
        f"with NativeModel({str(checkpoint)!r}, threads=1, precision='fast', weight_cache={str(cache)!r}) as m:\n"
        "    print(m.weight_cache_state)\n"
    )
    load = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert load.returncode == 0, load.stderr
    assert load.stdout.split() == ["written"]
    assert file.is_file()  # the new file replaced the FIFO
    assert decode(checkpoint, clip_and_prompt, cache)[0] == "loaded"


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


def test_fast_write_removes_only_its_own_stale_temporaries(
    checkpoint: Path, tmp_path: Path, clip_and_prompt: tuple[np.ndarray, list[int]]
) -> None:
    """A writer killed mid-write leaves `<file>.<pid>-<time>.tmp`; the next load that writes the file
    removes such leftovers older than an hour, never a running writer's or another file's."""
    cache = tmp_path / "cache"
    decode(checkpoint, clip_and_prompt, cache)
    (file,) = cache_files(cache)
    file.unlink()
    stale, running = cache / f"{file.name}.123-abc.tmp", cache / f"{file.name}.456-def.tmp"
    other = cache / "other.qwc.123-abc.tmp"
    for path in (stale, running, other):
        path.write_bytes(b"half a file")
    two_hours_ago = time.time() - 7200
    for path in (stale, other):
        os.utime(path, (two_hours_ago, two_hours_ago))
    assert decode(checkpoint, clip_and_prompt, cache)[0] == "written"
    assert cache_files(cache) == sorted([file, running, other])


def test_fast_write_removes_the_files_of_checkpoints_that_are_gone(
    checkpoint: Path, tmp_path: Path, clip_and_prompt: tuple[np.ndarray, list[int]]
) -> None:
    """A model directory deleted (or moved) leaves its file; the next load that writes a file
    removes it. Files of checkpoints still there, and files that are not the cache's, stay."""
    cache = tmp_path / "cache"
    gone, kept = (
        Path(shutil.copytree(checkpoint, tmp_path / "gone")),
        Path(shutil.copytree(checkpoint, tmp_path / "kept")),
    )
    for model_dir in (gone, kept):
        assert decode(model_dir, clip_and_prompt, cache)[0] == "written"
    files = {f.name.split("-")[0]: f for f in cache_files(cache)}
    assert set(files) == {"gone", "kept"}
    foreign = cache / "notes.qwc"
    foreign.write_bytes(b"not a cache file")
    shutil.rmtree(gone)
    assert (
        decode(kept, clip_and_prompt, cache)[0] == "loaded"
    )  # a load that maps writes nothing, tidies nothing
    assert files["gone"].exists()
    assert decode(checkpoint, clip_and_prompt, cache)[0] == "written"
    assert sorted(f.name.split("-")[0] for f in cache_files(cache)) == ["kept", "notes.qwc", "tiny"]
    assert decode(kept, clip_and_prompt, cache)[0] == "loaded"


def test_fast_weights_of_random_bytes_decode_without_harm(
    checkpoint: Path, tmp_path: Path, clip_and_prompt: tuple[np.ndarray, list[int]]
) -> None:
    """The cache is trusted as the checkpoint is (its key is no checksum): a file whose weights are
    any bytes (NaN and infinite scales among them) holds no index or pointer, so it decodes tokens of
    the vocabulary, nothing worse."""
    cache = tmp_path / "cache"
    decode(checkpoint, clip_and_prompt, cache)
    (file,) = cache_files(cache)
    whole = bytearray(file.read_bytes())
    data = FOOTER.unpack(whole[-FOOTER.size :])[1]
    whole[:data] = np.random.default_rng(0).integers(0, 256, data, dtype=np.uint8).tobytes()
    file.write_bytes(bytes(whole))
    state, tokens, _ = decode(checkpoint, clip_and_prompt, cache)
    with NativeModel(checkpoint) as m:
        vocab = m.vocab_size
    assert state == "loaded" and len(tokens) == 8 and all(0 <= t < vocab for t in tokens)


def test_fast_checkpoint_through_a_symlink_maps_the_same_file(
    checkpoint: Path, tmp_path: Path, clip_and_prompt: tuple[np.ndarray, list[int]]
) -> None:
    """The key names files by their real paths: a models directory of symlinks (what a Hugging Face
    snapshot or a benchmark's temporary directory is) finds the file its target wrote."""
    cache = tmp_path / "cache"
    assert decode(checkpoint, clip_and_prompt, cache)[0] == "written"
    link = tmp_path / "models" / "linked"
    link.parent.mkdir()
    link.symlink_to(checkpoint, target_is_directory=True)
    assert decode(link, clip_and_prompt, cache)[0] == "loaded"
    assert len(cache_files(cache)) == 1


def test_fast_the_replicas_setting_reaches_libqwen(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QWEN_WEIGHT_CACHE as a replica builds its engine: "~" is that process's home, "" is off."""
    from qwen_serve.model.server import load_engine

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    options = dict(
        threads=1, isa="auto", precision="fast", max_batch=1, kv_budget_tokens=None, max_waiting=None
    )
    states = []
    for setting in ("~/.cache/qwen-serve/weights", "~/.cache/qwen-serve/weights", ""):
        engine = load_engine(
            checkpoint, **options, encoder_cache_windows=0, prefix_cache_tokens=0, weight_cache=setting
        )
        states.append(engine.weight_cache_state)
        engine.close()
    assert states == ["written", "loaded", "none"]
    assert len(cache_files(tmp_path / "home/.cache/qwen-serve/weights")) == 1


def test_fast_file_system_without_room_to_reserve_still_gets_the_file(
    checkpoint: Path, tmp_path: Path
) -> None:
    """The writing load packs into the new file's own pages once fallocate reserved the room; where it
    cannot (here a file size limit below the reservation, which is the checkpoint's size and more),
    the anonymous arena is written out at the end instead: the same file. Below even that, the
    load goes on without one."""
    with NativeModel(checkpoint, precision="fast", weight_cache=tmp_path / "probe") as m:
        packed = m.context_info("weight_cache_bytes")
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # a write past the limit fails with EFBIG instead
        "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))\n"
        "from qwen_serve.engine._native import NativeModel\n"
        "with NativeModel(sys.argv[1], precision='fast', weight_cache=sys.argv[2]) as m:\n"
        "    print(m.weight_cache_state)\n"
    )
    for limit, expected in ((packed + (1 << 20), "written"), (4096, "failed")):
        cache = tmp_path / f"cache-{limit}"
        out = subprocess.run(
            [sys.executable, "-c", script, str(checkpoint), str(cache), str(limit)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.split() == [expected], out.stderr
        assert all(not f.name.endswith(".tmp") for f in cache_files(cache))  # nothing half-written left
        with NativeModel(checkpoint, precision="fast", weight_cache=cache) as m:
            assert m.weight_cache_state == ("loaded" if expected == "written" else "written")


def test_fast_load_that_fails_midway_leaves_no_file(checkpoint: Path, tmp_path: Path) -> None:
    """A checkpoint that fails in the decoder, after the encoder's weights were packed into the new
    file: the load's error, and nothing in the cache directory (the temporary goes with the context)."""
    config_path = checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    config["thinker_config"]["text_config"]["num_hidden_layers"] += 1  # a layer the weights lack
    config_path.write_text(json.dumps(config))
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="missing"):
        NativeModel(checkpoint, precision="fast", weight_cache=cache)
    assert cache_files(cache) == []
