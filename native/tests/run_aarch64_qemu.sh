#!/usr/bin/env bash
# libqwen on AArch64 without an ARM machine: cross-builds the library and the
# C tests and runs them under qemu-user. A manual check, not part of CI.
#
#   apt-get install gcc-aarch64-linux-gnu qemu-user     # Debian/Ubuntu
#   bash native/tests/run_aarch64_qemu.sh [CHECKPOINT_DIR]
#
# With a checkpoint directory (e.g. one from qwen_serve.testing.checkpoint),
# test_api also runs the model in two contexts side by side.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
build="${BUILD_DIR:-$here/../build/aarch64}"
cmake -S "$here" -B "$build" -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
  -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DQWEN_BUILD_TESTS=ON >/dev/null
cmake --build "$build" -j "$(nproc)" >/dev/null
export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
file "$build/libqwen.so"
export QEMU_CPU=max # every extension qemu has: the dot-product int8 table (neondot) runs
qemu-aarch64 "$build/test_kernels" | tail -4
qemu-aarch64 "$build/test_attention" | tail -1
qemu-aarch64 "$build/test_matmul" | tail -1
qemu-aarch64 "$build/test_quant" | tail -6
QEMU_CPU=cortex-a53 qemu-aarch64 "$build/test_quant" | grep -E 'neondot|passed' # Armv8.0: no dot products
QWEN_TEST_MODEL="${1:-}" qemu-aarch64 "$build/test_api"
