#!/usr/bin/env bash
# Builds libqwen of a git revision (a branch, a tag, a commit) for an A/B against the working tree's,
# and prints the library's path:
#   lib=$(benchmarks/build_rev.sh main~1)
#   .venv/bin/python benchmarks/bench_engine.py --configs "fast:auto,fast:auto@$lib" --rounds 3 --skip-reference
# The build is the package's (native/CMakeLists.txt, Release), from a clean checkout of REV in
# $TMPDIR/qwen-rev-<commit>/ (kept: a second call with the same commit only prints the path).
set -euo pipefail
rev="${1:?usage: build_rev.sh REV}"
root="$(cd "$(dirname "$0")/.." && pwd)"
commit="$(git -C "$root" rev-parse --verify "$rev^{commit}")"
out="${TMPDIR:-/tmp}/qwen-rev-${commit:0:12}"
lib="$out/build/libqwen.so"
if [ ! -f "$lib" ]; then
  rm -rf "$out"
  mkdir -p "$out"
  git -C "$root" archive "$commit" native | tar -x -C "$out"
  cmake -S "$out/native" -B "$out/build" -DCMAKE_BUILD_TYPE=Release > "$out/cmake.log" 2>&1
  cmake --build "$out/build" --target qwen -j "$(nproc)" > "$out/build.log" 2>&1
fi
echo "$lib"
