/*
 * The register peak of the instructions libqwen's stages rest on (bench_kernels -v peak): each
 * thread runs independent chains of one instruction on registers, nothing loaded or stored,
 * enough chains that its latency never shows. A stage's GFLOP/s or GOP/s against these is how
 * close to its compute roofline it runs (docs/performance.md):
 *   fma256, fma512  vfmadd231ps on 8 / 16 floats (exact's GEMMs: AVX2, AVX-512)
 *   dpbf16          vdpbf16ps, 32 bf16 pairs a vector (fast's encoder without AMX: AVX512_BF16)
 *   dpbusd512       vpdpbusd, 64 byte products a vector (fast's int8 products: AVX-512 VNNI)
 *   dpbusd256       the same on 32 bytes, VEX-encoded (AVX-VNNI, Intel client cores)
 * Compiled with every flag these need (bench_kernels.sh); bench_kernels calls only what
 * __builtin_cpu_supports says the CPU has. AMX tiles are not measured here.
 */
#include <immintrin.h>

#include "bench_peak.h"

/* Independent chains: 12 on VEX's 16 registers (and the 2 sources), 24 on EVEX's 32, more than
 * any of these instructions' latency times the units that run it. */
#define CHAINS12(OP) OP(a0); OP(a1); OP(a2); OP(a3); OP(a4); OP(a5); OP(a6); OP(a7); OP(a8); OP(a9); OP(a10); OP(a11)
#define CHAINS24(OP) CHAINS12(OP); OP(b0); OP(b1); OP(b2); OP(b3); OP(b4); OP(b5); OP(b6); OP(b7); OP(b8); OP(b9); OP(b10); OP(b11)

#define FMA512(r) __asm__ volatile("vfmadd231ps %2, %1, %0" : "+v"(r) : "v"(x), "v"(y))
#define BF16(r) __asm__ volatile("vdpbf16ps %2, %1, %0" : "+v"(r) : "v"(x), "v"(y))
#define DP512(r) __asm__ volatile("vpdpbusd %2, %1, %0" : "+v"(r) : "v"(x), "v"(y))
#define FMA256(r) __asm__ volatile("vfmadd231ps %2, %1, %0" : "+x"(r) : "x"(x), "x"(y))
#define DP256(r) __asm__ volatile("%{vex%} vpdpbusd %2, %1, %0" : "+x"(r) : "x"(x), "x"(y))

/* n rounds of the chains; s: their sum, returned so that nothing is dead code */
#define SUM12(SUM, a) SUM(SUM(SUM(a##0, a##1), SUM(a##2, a##3)), SUM(SUM(SUM(a##4, a##5), SUM(a##6, a##7)), SUM(SUM(a##8, a##9), SUM(a##10, a##11))))
#define DECL12(a) a##0 = x, a##1 = x, a##2 = x, a##3 = x, a##4 = x, a##5 = x, a##6 = x, a##7 = x, a##8 = x, a##9 = x, a##10 = x, a##11 = x
#define RUN12(T, SET1, OP, SUM)                   \
    T x = SET1, y = SET1, DECL12(a);              \
    for (long i = 0; i < n; i++) {                \
        CHAINS12(OP);                             \
    }                                             \
    T s = SUM12(SUM, a);
#define RUN24(T, SET1, OP, SUM)                   \
    T x = SET1, y = SET1, DECL12(a), DECL12(b);   \
    for (long i = 0; i < n; i++) {                \
        CHAINS24(OP);                             \
    }                                             \
    T s = SUM(SUM12(SUM, a), SUM12(SUM, b));

double bench_peak_fma512(long n) {
    RUN24(__m512, _mm512_set1_ps(1e-6f), FMA512, _mm512_add_ps)
    return _mm512_reduce_add_ps(s);
}

double bench_peak_dpbf16(long n) {
    RUN24(__m512, _mm512_set1_ps(1e-6f), BF16, _mm512_add_ps)
    return _mm512_reduce_add_ps(s);
}

double bench_peak_dpbusd512(long n) {
    RUN24(__m512i, _mm512_set1_epi8(1), DP512, _mm512_add_epi32)
    return _mm512_reduce_add_epi32(s);
}

double bench_peak_fma256(long n) {
    RUN12(__m256, _mm256_set1_ps(1e-6f), FMA256, _mm256_add_ps)
    float t[8];
    _mm256_storeu_ps(t, s);
    return t[0];
}

double bench_peak_dpbusd256(long n) {
    RUN12(__m256i, _mm256_set1_epi8(1), DP256, _mm256_add_epi32)
    return _mm256_extract_epi32(s, 0);
}
