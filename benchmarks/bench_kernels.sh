#!/usr/bin/env bash
# Builds and runs the kernel microbenchmark (benchmarks/bench_kernels.c).
#   benchmarks/bench_kernels.sh [-t threads] [-s seconds_per_case] [-v variant] [-d dtype]
# The per-file ISA flags are those of native/CMakeLists.txt (never -march=native).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/build/kernels-bench"
mkdir -p "$out"
cc="${CC:-gcc}"
cflags=(-O3 -std=gnu11 -fno-math-errno -ffp-contract=fast -DQWEN_HAVE_AMX -I"$root/native/src" -I"$root/native/include")
"$cc" "${cflags[@]}" -c "$root/native/src/kernels.c" -o "$out/kernels.o"
"$cc" "${cflags[@]}" -c "$root/native/src/kernels_scalar.c" -o "$out/kernels_scalar.o"
"$cc" "${cflags[@]}" -mavx2 -mfma -mf16c -c "$root/native/src/kernels_avx2.c" -o "$out/kernels_avx2.o"
"$cc" "${cflags[@]}" -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c \
  -c "$root/native/src/kernels_avx512.c" -o "$out/kernels_avx512.o"
"$cc" "${cflags[@]}" -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mfma -mf16c \
  -c "$root/native/src/kernels_avx512bf16.c" -o "$out/kernels_avx512bf16.o"
"$cc" "${cflags[@]}" -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mamx-tile -mamx-bf16 -mfma -mf16c \
  -c "$root/native/src/kernels_amx.c" -o "$out/kernels_amx.o"
"$cc" "${cflags[@]}" -c "$root/native/src/quant.c" -o "$out/quant.o"
"$cc" "${cflags[@]}" -mavx2 -mfma -mf16c -c "$root/native/src/quant_avx2.c" -o "$out/quant_avx2.o"
"$cc" "${cflags[@]}" -mavx2 -mfma -mavxvnni -c "$root/native/src/quant_avxvnni.c" -o "$out/quant_avxvnni.o"
"$cc" "${cflags[@]}" -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mfma \
  -c "$root/native/src/quant_avx512vnni.c" -o "$out/quant_avx512vnni.o"
"$cc" "${cflags[@]}" -mavx512f -mavx512bw -mavx512vl -mavx512dq -mamx-tile -mamx-int8 -mfma \
  -c "$root/native/src/quant_amx.c" -o "$out/quant_amx.o"
# the register peaks (-v peak) with every flag their instructions need; called only where the CPU has them
"$cc" "${cflags[@]}" -mavx2 -mfma -mavx512f -mavx512bw -mavx512vnni -mavx512bf16 -mavxvnni \
  -c "$root/benchmarks/bench_peak.c" -o "$out/bench_peak.o"
"$cc" "${cflags[@]}" "$root/benchmarks/bench_kernels.c" "$out"/kernels*.o "$out"/quant*.o "$out/bench_peak.o" \
  -o "$out/bench_kernels" -lpthread -lm
exec "$out/bench_kernels" "$@"
