"""`python -m qwen_serve transcribe` on real audio files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from qwen_serve.engine import Engine
from qwen_serve.engine.types import Transcription
from qwen_serve.testing.clips import speech_like


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qwen_serve", *args], capture_output=True, text=True, timeout=300
    )


def speech_file(
    tmp_path: Path, model_dir: Path, logprobs: bool = False, precision: str = "fast"
) -> tuple[Path, Transcription]:
    """A 2 s clip as a WAV file, and what the engine makes of it (12 tokens at most) with the
    CLI's default precision, or the one given."""
    pcm = speech_like(2.0, seed=5)
    wav = tmp_path / "clip.wav"
    sf.write(wav, pcm, 16000, subtype="FLOAT")
    with Engine(model_dir, precision=precision) as e:
        return wav, e.transcribe(pcm, max_new_tokens=12, logprobs=logprobs)


def test_transcribe_wav_matches_engine(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    d = tiny_dirs["tiny-1.7b"]
    wav, expected = speech_file(tmp_path, d)
    out = run_cli("transcribe", "--model-dir", str(d), "--max-new-tokens", "12", "--json", str(wav))
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["text"] == expected.text
    assert got["usage"]["output_tokens"] == expected.usage.output_tokens
    plain = run_cli("transcribe", "--model-dir", str(d), "--max-new-tokens", "12", str(wav))
    assert plain.stdout.rstrip("\n") == expected.text
    streamed = run_cli("transcribe", "--model-dir", str(d), "--max-new-tokens", "12", "--stream", str(wav))
    assert streamed.stdout.rstrip("\n") == expected.text


def test_precision_exact(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    d = tiny_dirs["tiny-1.7b"]
    wav, expected = speech_file(tmp_path, d, precision="exact")
    args = ("transcribe", "--model-dir", str(d), "--max-new-tokens", "12", "--json")
    out = run_cli(*args, "--precision", "exact", str(wav))
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["text"] == expected.text and got["usage"]["output_tokens"] == expected.usage.output_tokens
    assert run_cli(*args, "--precision", "half", str(wav)).returncode == 2  # argparse's refusal


def test_logprobs(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    d = tiny_dirs["tiny-1.7b"]
    wav, expected = speech_file(tmp_path, d, logprobs=True)
    assert expected.logprobs
    args = ("transcribe", "--model-dir", str(d), "--max-new-tokens", "12", "--logprobs")
    out = run_cli(*args, "--json", str(wav))
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])["logprobs"]
    assert got == [{"token": t.token, "logprob": t.logprob} for t in expected.logprobs]
    lines = run_cli(*args, str(wav)).stdout.splitlines()
    assert lines[0] == expected.text and len(lines) == 1 + len(expected.logprobs)
    assert [float(line.split()[0]) for line in lines[1:]] == [round(t.logprob, 5) for t in expected.logprobs]


def test_stereo_44k_is_resampled(tmp_path: Path, tiny_dir: Path) -> None:
    t = np.arange(44100) / 44100
    stereo = (
        np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], axis=1).astype(np.float32) * 0.3
    )
    wav = tmp_path / "stereo.wav"
    sf.write(wav, stereo, 44100, subtype="PCM_16")
    out = run_cli("transcribe", "--model-dir", str(tiny_dir), "--max-new-tokens", "4", "--json", str(wav))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["duration"] == 1.0


def test_errors_are_clear(tmp_path: Path, tiny_dir: Path) -> None:
    missing = run_cli("transcribe", "--model-dir", str(tmp_path / "none"), str(tmp_path / "a.wav"))
    assert missing.returncode == 2 and "error:" in missing.stderr and "Traceback" not in missing.stderr
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, dtype=np.float32), 16000)
    bad_lang = run_cli("transcribe", "--model-dir", str(tiny_dir), "--language", "Klingon", str(wav))
    assert bad_lang.returncode == 2 and "unsupported language" in bad_lang.stderr


def test_words_with_the_aligner(tmp_path: Path, tiny_dir: Path, tiny_aligner_dir: Path) -> None:
    from qwen_serve.engine import Aligner

    pcm = speech_like(4.0, seed=3)
    wav = tmp_path / "clip.wav"
    sf.write(wav, pcm, 16000, subtype="FLOAT")
    with Engine(tiny_dir, precision="fast") as e, Aligner(tiny_aligner_dir, precision="fast") as a:
        result = e.transcribe(pcm, language="English", max_new_tokens=12)
        expected = a.align_transcription(pcm, result)
    assert expected
    args = ["--model-dir", str(tiny_dir), "--language", "English", "--max-new-tokens", "12"]
    out = run_cli("transcribe", *args, "--aligner-dir", str(tiny_aligner_dir), "--words", "--json", str(wav))
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["words"] == [{"word": w.word, "start": w.start, "end": w.end} for w in expected]
    no_aligner = run_cli("transcribe", *args, "--words", str(wav))
    assert no_aligner.returncode == 2 and "--aligner-dir" in no_aligner.stderr
