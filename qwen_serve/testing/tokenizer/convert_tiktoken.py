"""Rebuilds vocab.json.gz and merges.txt.gz from a Qwen `qwen.tiktoken` rank file.

The Qwen2/Qwen3 byte-level BPE vocabulary (151,643 regular tokens) ships in
the PyPI package `dashscope` as dashscope/resources/qwen.tiktoken. Usage:

    pip download --no-deps dashscope -d /tmp/ds && unzip -o /tmp/ds/dashscope-*.whl -d /tmp/ds
    python -m qwen_serve.testing.tokenizer.convert_tiktoken /tmp/ds/dashscope/resources/qwen.tiktoken

A tiktoken file lists each token's bytes (base64) with its rank. The merge
that creates a token is found by running BPE on its bytes with only the
merges of lower rank: what is left is the pair that merges into it.
"""

from __future__ import annotations

import base64
import gzip
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (byte-level BPE)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def bpe_split(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    parts = [bytes([b]) for b in token]
    while True:
        best, best_rank = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best is None:
            return parts
        parts = parts[:best] + [parts[best] + parts[best + 1]] + parts[best + 2 :]


def convert(tiktoken_path: Path, out_dir: Path = HERE) -> None:
    ranks: dict[bytes, int] = {}
    for line in tiktoken_path.read_text().splitlines():
        if line.strip():
            b64, rank_text = line.split()
            ranks[base64.b64decode(b64)] = int(rank_text)
    enc = bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(enc[x] for x in b)

    vocab = {to_str(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) == 1:
            continue
        pair = bpe_split(ranks, tok, rank)
        if len(pair) != 2:
            raise ValueError(f"token {tok!r} (rank {rank}) is not one merge away: {pair}")
        merges.append(f"{to_str(pair[0])} {to_str(pair[1])}")
    with gzip.open(out_dir / "vocab.json.gz", "wt", encoding="utf-8", compresslevel=9) as f:
        json.dump(vocab, f, ensure_ascii=False, separators=(",", ":"))
    with gzip.open(out_dir / "merges.txt.gz", "wt", encoding="utf-8", compresslevel=9) as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    print(f"{len(vocab)} tokens, {len(merges)} merges -> {out_dir}")


if __name__ == "__main__":
    convert(Path(sys.argv[1]))
