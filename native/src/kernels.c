/*
 * Kernel dispatch — picks a kernel table from the CPU found at run time.
 */
#include "kernels.h"

#include "../include/qwen.h"

#include <stddef.h>


int qw_best_isa(void) {
#ifdef QW_X86
    __builtin_cpu_init();
    /* kernels_avx512.c is compiled for F/BW/VL/DQ (and FMA/F16C), nothing newer. */
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return QWEN_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return QWEN_ISA_AVX2;
#endif
#ifdef QW_ARM
    return QWEN_ISA_NEON;
#endif
    return QWEN_ISA_SCALAR;
}

const qw_kernels *qw_kernels_for(int isa, int *resolved_isa) {
    int best = qw_best_isa();
#ifdef QW_X86
    if (isa == QWEN_ISA_AVX512BF16) { /* opt-in only: AUTO never picks it */
        if (best != QWEN_ISA_AVX512 || !__builtin_cpu_supports("avx512bf16")) return NULL;
        if (resolved_isa) *resolved_isa = isa;
        return &qw_kernels_avx512bf16;
    }
#endif
    if (isa == QWEN_ISA_AUTO) isa = best;
#ifdef QW_ARM
    if (isa == QWEN_ISA_NEON) {
        if (resolved_isa) *resolved_isa = isa;
        return &qw_kernels_neon;
    }
    if (isa != QWEN_ISA_SCALAR) return NULL; /* x86 sets on ARM */
#endif
    if (isa > best) return NULL;
    if (resolved_isa) *resolved_isa = isa;
    switch (isa) {
#ifdef QW_X86
    case QWEN_ISA_AVX512: return &qw_kernels_avx512;
    case QWEN_ISA_AVX2: return &qw_kernels_avx2;
#endif
    case QWEN_ISA_SCALAR: return &qw_kernels_scalar;
    default: return NULL;
    }
}
