/* bench_peak.c: register peaks (bench_kernels -v peak). Each runs n rounds of its chains:
 * BENCH_PEAK_YMM instructions a round on ymm, BENCH_PEAK_ZMM on zmm. */
#ifndef BENCH_PEAK_H
#define BENCH_PEAK_H
#define BENCH_PEAK_YMM 12
#define BENCH_PEAK_ZMM 24
/* Each returns the sum of its chains, so that nothing is dead code. */
double bench_peak_fma256(long n);    /* AVX2 + FMA */
double bench_peak_fma512(long n);    /* AVX-512 F */
double bench_peak_dpbf16(long n);    /* AVX512_BF16 */
double bench_peak_dpbusd512(long n); /* AVX-512 VNNI */
double bench_peak_dpbusd256(long n); /* AVX-VNNI */
#endif
