/*
 * AMX tests — the AMX-BF16 GEMM (amx.h, kernels_amx.c), through the portable
 * tile emulation (amx_emulate.h) on every CPU, natively where the CPU has AMX:
 *
 *   emulation  TDPBF16PS on hand-made values: the two adds of a pair and the
 *              pairs of k in order, each rounded to nearest even (values where
 *              any other order gives another float); denormal inputs read as
 *              zero, denormal results flushed; loads and stores with strides
 *              touch the configured rows x bytes only; what the hardware
 *              faults on (bad config, tile not configured, shapes that do not
 *              fit, one tile twice) is counted, not executed.
 *   conv       qw_amx_conv3x3 (implicit A from the padded input; explicit A
 *              from a given im2col) against im2col + the matmul + the
 *              activation (+ the rounding into the padded layout), bit for
 *              bit, emulated and native; nothing outside the outputs written.
 *   packing    qw_amx_pack against the layout written out here (tile (nt, kt),
 *              row q, column j, element e of the pair), zeros past N and K,
 *              f16 / f32 rounded like qw_f32_to_bf16 (ties, NaN, inf,
 *              subnormals; finite values also against a nearest-even formula);
 *              the native pack (no CPU requirement) equals the emulated one.
 *   kernel     M in {1, 2, 15, 16, 17, 31, 32, 33, 64, 100} x K in {1, 2, 31,
 *              32, 33, 64, 100, 1024} x N in {16, 32, 48, 100} x bf16 / f16 /
 *              f32 weights, column slices [n0, n1) (n0 > 0, n1 < N, partial
 *              last tile), bias or NULL, lda and ldc larger than the rows; and
 *              several panels of A (large M and K), K = 0, M rows beyond the
 *              call, threads on disjoint slices. Each result is checked
 *                (a) bit for bit against ref_chain below: the f32 chain that
 *                    the tiled kernel must produce, derived from the
 *                    TDPBF16PS pseudo-code (Intel Intrinsics Guide). A C tile
 *                    starts at zero and each TDPBF16PS continues from it, so
 *                    per 32-k step, pair by pair, the two products are added
 *                    in order: one chain over k = 0 .. Kp-1 (Kp = K rounded
 *                    up to 32, the zero padding included), then + bias;
 *                (b) against a double-precision sum of the same bf16-rounded
 *                    inputs within 1e-5 * sqrt(K) * (1 + |ref|): both use the
 *                    same bf16 values, so what is left is the f32 rounding of
 *                    a K-term chain (about 6e-8 * sqrt(K) for these data: A
 *                    uniform in [-1, 1), W in [-1, 1) / sqrt(K), bias in
 *                    [-1, 1)), the bound test_kernels.c uses;
 *              and C outside [0, M) x [n0, n1) keeps its sentinels; buffers
 *              are heap-allocated to the exact size the kernel may touch (A
 *              ends with its last row's K values, C with its last row's N
 *              columns, packed and bias exactly), so AddressSanitizer sees any
 *              access past them; the emulation counted no fault and the tiles
 *              are released after the call. The path without a panel buffer
 *              (A rounded per step) must give the same bits.
 *   native     where qw_amx_available(): every kernel case also on the
 *              hardware, within (b) of the double sum with the sentinels
 *              kept, and threads on slices giving the one-call bits; how many
 *              cases are bit for bit the emulation is printed (the SDM and
 *              the intrinsics guide differ on the pairs' order). Elsewhere
 *              "native AMX: not available on this CPU (emulated only)"
 *              (neither passed nor failed).
 *   probe      qw_amx_available() against CPUID.(7,0):EDX bits 24, 22 and
 *              XCR0 bits 17, 18 read here: 0 when the CPU lacks them, the same
 *              answer from every call and thread.
 *
 * Exit status is non-zero on any failure; the last line reads
 * "amx: N passed, M failed".
 */
#include "amx.h"
#include "kernels.h"

/* The emulated kernel: kernels_amx.c over amx_emulate.h, as qw_amx_emu_*; its
 * statics (amx_matmul with the per-step path, the emulation state
 * qw_amx_emu) are visible here. */
#define QW_AMX_EMULATE 1
#include "kernels_amx.c"
#undef qw_amx_available
#undef qw_amx_packed_size
#undef qw_amx_pack
#undef qw_amx_pack_bf16_t
#undef qw_amx_pack_keys
#undef qw_amx_pack_values
#undef qw_amx_kv8_bf16
#undef qw_amx_matmul
#undef qw_amx_round_rows
#undef qw_amx_matmul_rounded
#undef qw_amx_conv3x3
#undef qw_amx_matmul_act_bf16

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#ifdef QW_TEST_AMX_NATIVE
#define HAVE_NATIVE 1 /* the native object (AMX flags) is linked in */
#else
#define HAVE_NATIVE 0
#endif

#define TEST_SEED 2024u
#include "test_util.h"

static int native; /* qw_amx_available(): the hardware path runs too */
static int native_failed;
static int native_cases, native_bitwise_cases; /* kernel cases run natively; of them, bitwise the emulation */

/* ==== Data ==== */

static float bf(uint16_t h) { return u2f((uint32_t)h << 16); }

/* f with its low 16 bits set to exactly half a bf16 step: a rounding tie. */
static float tie(float f) { return u2f((f2u(f) & 0xffff0000u) | 0x8000u); }

/* f32 -> f16, round to nearest even, for finite test data. */
static uint16_t to_f16(float f) {
    const uint32_t sign = (f2u(f) >> 16) & 0x8000u;
    const float a = fabsf(f);
    if (a >= 65520.0f) return (uint16_t)(sign | 0x7c00u);
    if (a < ldexpf(1.0f, -14)) return (uint16_t)(sign | (uint32_t)lrintf(a * ldexpf(1.0f, 24))); /* subnormal */
    int e;
    const float m = frexpf(a, &e); /* a = m 2^e, m in [0.5, 1) */
    uint32_t man = (uint32_t)lrintf(m * 2048.0f);
    if (man == 2048) man = 1024, e++;
    return (uint16_t)(sign | ((uint32_t)(e + 14) << 10) | (man - 1024));
}

static const char *dt_name(qw_dtype dt) { return dt == QW_F32 ? "f32" : dt == QW_BF16 ? "bf16" : "f16"; }

/* W[N, K] in dtype dt (exact size); wb gets each weight as the bf16 the kernel must use. */
static void *make_weights(int N, int K, qw_dtype dt, uint16_t *wb) {
    const size_t n = (size_t)N * K;
    const float scale = 1.0f / sqrtf((float)(K > 0 ? K : 1));
    void *w = malloc((n ? n : 1) * (dt == QW_F32 ? 4 : 2));
    for (size_t i = 0; i < n; i++) {
        float f = frand() * scale;
        if (dt == QW_F32) {
            if (i % 7 == 3) f = tie(f);
            ((float *)w)[i] = f;
            wb[i] = qw_f32_to_bf16(f);
        } else if (dt == QW_BF16) {
            wb[i] = ((uint16_t *)w)[i] = qw_f32_to_bf16(f);
        } else {
            const uint16_t h = to_f16(f);
            ((uint16_t *)w)[i] = h;
            wb[i] = qw_f32_to_bf16(qw_f16_to_f32(h));
        }
    }
    return w;
}

static void *alloc64(size_t bytes) { /* a multiple of 64 here: exact */
    return aligned_alloc(64, bytes ? bytes : 64);
}

/* ==== References ==== */

/* A bf16 as the tile unit reads it: a subnormal is a zero. */
static float daz(uint16_t h) {
    const float x = bf(h);
    return fpclassify(x) == FP_SUBNORMAL ? copysignf(0.0f, x) : x;
}

/* The tiled kernel's value of one element, from the pseudo-code of TDPBF16PS:
 * acc starts at zero (TILEZERO); step kt (k in [32 kt, 32 kt + 32)) continues
 * from the accumulator; within it pair q adds a[2q] * b[2q], then a[2q + 1] *
 * b[2q + 1], each one f32 FMA (exact product, one rounding to nearest even),
 * a subnormal result flushed to zero. Zeros pad K to Kp. Then + bias. */
static float ref_chain(const uint16_t *a, const uint16_t *w, int K, const float *bias) {
    const int Kp = (K + 31) / 32 * 32;
    float acc = 0.0f;
    for (int kt = 0; kt < Kp / 32; kt++)
        for (int q = 0; q < 16; q++)
            for (int e = 0; e < 2; e++) {
                const int k = 32 * kt + 2 * q + e;
                const float x = k < K ? daz(a[k]) : 0.0f, y = k < K ? daz(w[k]) : 0.0f;
                acc = fmaf(x, y, acc);
                if (fpclassify(acc) == FP_SUBNORMAL) acc = copysignf(0.0f, acc);
            }
    return bias ? acc + *bias : acc;
}

static double ref_double(const uint16_t *a, const uint16_t *w, int K, const float *bias) {
    double s = 0.0;
    for (int k = 0; k < K; k++) s += (double)bf(a[k]) * (double)bf(w[k]);
    return bias ? s + *bias : s;
}

/* ==== Emulation ==== */

/* A 64-byte LDTILECFG operand: palette 1, tile t of rows[t] x colsb[t]. */
static void make_config(uint8_t cfg[64], const int rows[8], const int colsb[8]) {
    memset(cfg, 0, 64);
    cfg[0] = 1;
    for (int t = 0; t < 8; t++) {
        cfg[16 + 2 * t] = (uint8_t)(colsb[t] & 0xff);
        cfg[17 + 2 * t] = (uint8_t)(colsb[t] >> 8);
        cfg[48 + t] = (uint8_t)rows[t];
    }
}

/* One TDPBF16PS on 1 row: C (1 x nc f32) += A (1 x 2kp bf16) . B (kp x 2nc bf16); returns C[0]. */
static float dp1(float c0, const uint16_t *a, const uint16_t *b, int kp) {
    const int rows[8] = {1, 1, kp, 0, 0, 0, 0, 0}, colsb[8] = {4, 4 * kp, 4, 0, 0, 0, 0, 0};
    uint8_t cfg[64];
    make_config(cfg, rows, colsb);
    _tile_loadconfig(cfg);
    float c[16] = {c0};
    _tile_loadd(0, c, 64);
    _tile_loadd(1, a, 64);
    _tile_loadd(2, b, 4);
    _tile_dpbf16ps(0, 1, 2);
    _tile_stored(0, c, 64);
    _tile_release();
    return c[0];
}

static void test_emulation(void) {
    const unsigned f0 = qw_amx_emu.faults;
    const uint16_t one = 0x3f80, p24 = 0x3380 /* 2^-24 */, p23 = 0x3400 /* 2^-23 */;
    /* The two adds of a pair in order, each rounded: 1 + 2^-24 ties to 1, then
     * 1 + 2^-23 is exact. Second term first gives 1 + 2^-22 (tie to even);
     * the pair summed first gives 1 + 2^-22 too. */
    {
        const uint16_t a[2] = {one, one}, b[2] = {p24, p23};
        const float r = dp1(1.0f, a, b, 1);
        check(r == 1.0f + ldexpf(1.0f, -23), "emulation", "pair order: got %a, want 1 + 2^-23", r);
        const uint16_t b2[2] = {p23, p24};
        const float r2 = dp1(1.0f, a, b2, 1);
        check(r2 == 1.0f + ldexpf(1.0f, -22), "emulation", "pair order swapped: got %a, want 1 + 2^-22", r2);
    }
    /* Pairs of k in order: pair 0 (2^-24, 2^-24) leaves 1 unchanged, pair 1 adds 2^-23; the other way round
     * 1 + 2^-23 + 2^-24 ties to 1 + 2^-22. */
    {
        const uint16_t a[4] = {one, one, one, one}, b[4] = {p24, p24, p23, 0};
        const float r = dp1(1.0f, a, b, 2);
        check(r == 1.0f + ldexpf(1.0f, -23), "emulation", "k pair order: got %a, want 1 + 2^-23", r);
    }
    /* Denormal inputs read as zero: 2^-133 * 2^100 would be 2^-33. */
    {
        const uint16_t a[2] = {0x0001, 0}, b[2] = {0x7180 /* 2^100 */, 0};
        check(f2u(dp1(0.0f, a, b, 1)) == 0, "emulation", "denormal A read as zero");
        check(f2u(dp1(0.0f, b, a, 1)) == 0, "emulation", "denormal B read as zero");
        const uint16_t c[2] = {0x0080 /* 2^-126, normal */, 0};
        check(dp1(0.0f, c, b, 1) == ldexpf(1.0f, -26), "emulation", "smallest normal bf16 used");
    }
    /* Denormal results flushed: 2^-70 * 2^-70 = 2^-140; 1.5 * 2^-126 - 2^-126 = 2^-127; 3 * 2^-126 - 2^-126 is normal. */
    {
        const uint16_t a[2] = {0x1c80 /* 2^-70 */, 0};
        check(f2u(dp1(0.0f, a, a, 1)) == 0, "emulation", "denormal product flushed");
        const uint16_t x[2] = {one, 0}, y[2] = {0x8080 /* -2^-126 */, 0};
        check(f2u(dp1(u2f(0x00c00000u), x, y, 1)) == 0, "emulation", "denormal sum flushed");
        check(dp1(u2f(0x01400000u), x, y, 1) == ldexpf(1.0f, -125), "emulation", "normal sum kept");
    }
    check(qw_amx_emu.faults == f0, "emulation", "no faults in the valid sequences");

    /* Loads and stores: 3 rows x 12 bytes, strides 20 (load) and 16 (store). */
    {
        const int rows[8] = {3, 16, 16, 0, 0, 0, 0, 0}, colsb[8] = {12, 64, 64, 0, 0, 0, 0, 0};
        uint8_t cfg[64], src[5 * 20], dst[5 * 16];
        make_config(cfg, rows, colsb);
        for (int i = 0; i < 100; i++) src[i] = (uint8_t)(i + 1);
        memset(dst, 0xee, sizeof(dst));
        _tile_loadconfig(cfg);
        _tile_loadd(0, src, 20);
        _tile_stored(0, dst, 16);
        int ok = 1;
        for (int r = 0; r < 5; r++)
            for (int i = 0; i < 16; i++) ok &= dst[r * 16 + i] == (r < 3 && i < 12 ? src[r * 20 + i] : 0xee);
        check(ok, "emulation", "loadd / stored: configured rows x colsb only, strides");
        ok = 1;
        for (int r = 0; r < 16; r++)
            for (int i = 0; i < 64; i++) ok &= r < 3 && i < 12 ? 1 : qw_amx_emu.data[0][r][i] == 0;
        check(ok, "emulation", "loadd zeroes the rest of the tile");
        _tile_zero(0);
        _tile_stored(0, dst, 16);
        ok = 1;
        for (int i = 0; i < 12; i++) ok &= dst[i] == 0 && dst[32 + i] == 0;
        check(ok && qw_amx_emu.faults == f0, "emulation", "zero");

        /* Faults: the same tile twice, shapes that do not fit, unconfigured tiles, bad configs. */
        _tile_dpbf16ps(0, 0, 1);
        check(qw_amx_emu.faults == f0 + 1, "emulation", "dpbf16ps with one tile twice faults");
        _tile_dpbf16ps(0, 1, 1);
        check(qw_amx_emu.faults == f0 + 2, "emulation", "dpbf16ps with A = B faults");
        _tile_dpbf16ps(1, 0, 2); /* A has 3 rows, C 16 */
        check(qw_amx_emu.faults == f0 + 3, "emulation", "dpbf16ps with mismatched rows faults");
        _tile_zero(3);
        check(qw_amx_emu.faults == f0 + 4, "emulation", "an unconfigured tile faults");
        int bad_rows[8] = {17, 0, 0, 0, 0, 0, 0, 0}, bad_colsb[8] = {64, 0, 0, 0, 0, 0, 0, 0};
        make_config(cfg, bad_rows, bad_colsb);
        _tile_loadconfig(cfg);
        check(qw_amx_emu.faults == f0 + 5 && qw_amx_emu.rows[0] == 3, "emulation", "17 rows: #GP, config kept");
        bad_rows[0] = 4, bad_colsb[0] = 0;
        make_config(cfg, bad_rows, bad_colsb);
        _tile_loadconfig(cfg);
        check(qw_amx_emu.faults == f0 + 6, "emulation", "rows without colsb: #GP");
        make_config(cfg, rows, colsb);
        cfg[40] = 1; /* reserved */
        _tile_loadconfig(cfg);
        check(qw_amx_emu.faults == f0 + 7, "emulation", "reserved byte set: #GP");
        memset(cfg, 0, sizeof(cfg)); /* palette 0: INIT */
        _tile_loadconfig(cfg);
        check(!qw_amx_emu.configured, "emulation", "palette 0 releases");
        _tile_loadd(0, src, 20);
        check(qw_amx_emu.faults == f0 + 8, "emulation", "load after release faults");
        qw_amx_emu.faults = f0;
    }
}

/* ==== Packing ==== */

/* The bf16 nearest to finite f (ties to even), from the bits. */
static uint16_t nearest_bf16(float f) {
    const uint32_t u = f2u(f), lo = u & 0xffff0000u, r = u & 0xffffu;
    const uint32_t up = r > 0x8000u || (r == 0x8000u && (lo >> 16 & 1u));
    return (uint16_t)((lo + (up ? 0x10000u : 0)) >> 16);
}

static void test_pack_one(int N, int K, qw_dtype dt) {
    const size_t n = (size_t)N * K;
    void *W = malloc(n * (dt == QW_F32 ? 4 : 2));
    for (size_t i = 0; i < n; i++) {
        if (dt == QW_F32) {
            static const uint32_t special[] = {0x7fc00000u, 0xff800001u, 0x7f800000u, 0xff800000u, 0x00000001u,
                                               0x807fffffu, 0x80000000u, 0x3f808000u, 0x3f818000u, 0x7f7fffffu,
                                               0x007f8000u, 0x00018000u};
            const uint32_t u = i % 5 == 0 ? special[(i / 5) % (sizeof(special) / sizeof(special[0]))]
                             : i % 5 == 1 ? (rand32() & 0xffff0000u) | 0x8000u /* ties */
                                          : rand32();
            ((float *)W)[i] = u2f(u);
        } else {
            ((uint16_t *)W)[i] = (uint16_t)rand32(); /* every kind: subnormals, inf, NaN */
        }
    }
    const size_t bytes = qw_amx_emu_packed_size(N, K);
    const int NT = (N + 15) / 16, KT = (K + 31) / 32;
    check(bytes == (size_t)NT * 16 * KT * 32 * 2, "pack", "packed size N=%d K=%d", N, K);
    uint16_t *P = alloc64(bytes);
    memset(P, 0xab, bytes);
    qw_amx_emu_pack(P, W, dt, N, K);
    int layout = 1, rounding = 1;
    for (int nt = 0; nt < NT; nt++)
        for (int kt = 0; kt < KT; kt++)
            for (int q = 0; q < 16; q++)
                for (int j = 0; j < 16; j++)
                    for (int e = 0; e < 2; e++) {
                        const int row = 16 * nt + j, k = 32 * kt + 2 * q + e;
                        const uint16_t got = P[(((size_t)nt * KT + kt) * 16 + q) * 32 + 2 * j + e];
                        if (row >= N || k >= K) {
                            layout &= got == 0;
                            continue;
                        }
                        const size_t i = (size_t)row * K + k;
                        if (dt == QW_BF16) { /* as stored */
                            layout &= got == ((const uint16_t *)W)[i];
                            continue;
                        }
                        const float f = dt == QW_F32 ? ((const float *)W)[i] : qw_f16_to_f32(((const uint16_t *)W)[i]);
                        layout &= got == qw_f32_to_bf16(f);
                        rounding &= isnan(f) ? isnan(bf(got)) : got == nearest_bf16(f); /* FLT_MAX rounds to inf */
                    }
    check(layout, "pack", "%s N=%d K=%d: layout, qw_f32_to_bf16 rounding, zero padding", dt_name(dt), N, K);
    check(rounding, "pack", "%s N=%d K=%d: nearest-even (ties to even), NaN stays NaN", dt_name(dt), N, K);
#if HAVE_NATIVE
    uint16_t *Q = alloc64(bytes);
    qw_amx_pack(Q, W, dt, N, K); /* no CPU requirement: runs here too */
    check(qw_amx_packed_size(N, K) == bytes && !memcmp(P, Q, bytes), "pack", "%s N=%d K=%d: native pack == emulated",
          dt_name(dt), N, K);
    free(Q);
#endif
    free(P);
    free(W);
}

static void test_pack(void) {
    for (int dt = 0; dt < 3; dt++) {
        test_pack_one(37, 45, (qw_dtype)dt);
        test_pack_one(16, 32, (qw_dtype)dt);
        test_pack_one(1, 1, (qw_dtype)dt);
        test_pack_one(100, 1024, (qw_dtype)dt);
    }
    check(qw_amx_emu_packed_size(0, 5) == 0 && qw_amx_emu_packed_size(5, 0) == 0, "pack", "empty size");
}

/* An attention's keys and values (T x hd bf16 rows, every bit pattern) packed by qw_amx_pack_keys /
 * qw_amx_pack_values: the bytes of qw_amx_pack / qw_amx_pack_bf16_t, emulated and natively (the
 * native ones transpose with AVX-512: T around the tiles' 16 keys and 32 steps); and T rows of an
 * int8 cache widened by qw_amx_kv8_bf16: (float) q * scale rounded as qw_f32_to_bf16. */
static void test_pack_kv_one(int T, int hd) {
    uint16_t *K = malloc((size_t)T * hd * 2), *V = malloc((size_t)T * hd * 2);
    for (size_t i = 0; i < (size_t)T * hd; i++) K[i] = (uint16_t)rand32(), V[i] = (uint16_t)rand32();
    const size_t kb = qw_amx_emu_packed_size(T, hd), vb = qw_amx_emu_packed_size(hd, T);
    uint16_t *ref = alloc64(kb > vb ? kb : vb), *got = alloc64(kb > vb ? kb : vb);
    int same = 1;
    for (int v = 0; v < 2; v++) {
        const size_t bytes = v ? vb : kb;
        if (v) qw_amx_emu_pack_bf16_t(ref, V, hd, hd, T);
        else qw_amx_emu_pack(ref, K, QW_BF16, T, hd);
        memset(got, 0xab, bytes);
        if (v) qw_amx_emu_pack_values(got, V, T, hd);
        else qw_amx_emu_pack_keys(got, K, T, hd);
        same &= !memcmp(ref, got, bytes);
#if HAVE_NATIVE
        if (native) {
            memset(got, 0xab, bytes);
            if (v) qw_amx_pack_values(got, V, T, hd);
            else qw_amx_pack_keys(got, K, T, hd);
            same &= !memcmp(ref, got, bytes);
        }
#endif
    }
    check(same, "pack", "keys and values T=%d hd=%d: the bytes of qw_amx_pack and qw_amx_pack_bf16_t", T, hd);
    /* an int8 cache: hd values, then hd / 32 f32 scales (specials among them) */
    const size_t rb = qw_kv8_row_bytes(hd);
    char *rows = malloc((size_t)T * rb);
    for (int r = 0; r < T; r++) {
        for (int i = 0; i < hd; i++) rows[(size_t)r * rb + i] = (char)(int8_t)rand32();
        for (int b = 0; b < hd / QW_KV8_BLOCK; b++) {
            static const uint32_t special[] = {0x7fc00000u, 0x7f800000u, 0x00000001u, 0x3f808000u, 0x00000000u};
            const uint32_t u = (r + b) % 3 == 0 ? special[(r * 7 + b) % 5] : (f2u(frand() * 0.1f) & 0xffff0000u) | 0x8000u;
            memcpy(rows + (size_t)r * rb + hd + (size_t)b * 4, &u, 4);
        }
    }
    uint16_t *w = malloc((size_t)T * hd * 2), *wn = malloc((size_t)T * hd * 2);
    qw_amx_emu_kv8_bf16(w, rows, T, hd);
    int widen = 1, widen_native = 1;
    for (int r = 0; r < T; r++)
        for (int i = 0; i < hd; i++) {
            const char *row = rows + (size_t)r * rb;
            widen &= w[(size_t)r * hd + i] == qw_f32_to_bf16((float)((const int8_t *)row)[i] * qw_kv8_scale(row, hd, i));
        }
#if HAVE_NATIVE
    if (native) {
        qw_amx_kv8_bf16(wn, rows, T, hd);
        widen_native = !memcmp(w, wn, (size_t)T * hd * 2);
    }
#endif
    check(widen && widen_native, "pack", "int8 cache T=%d hd=%d widened to bf16 as to_f32 + qw_f32_to_bf16", T, hd);
    free(rows), free(w), free(wn), free(ref), free(got), free(K), free(V);
}

static void test_pack_kv(void) {
    static const int Ts[] = {1, 15, 16, 17, 31, 32, 33, 63, 145};
    for (size_t t = 0; t < sizeof(Ts) / sizeof(Ts[0]); t++) {
        test_pack_kv_one(Ts[t], 128);
        test_pack_kv_one(Ts[t], 64);
    }
}

/* ==== The kernel ==== */

typedef struct {
    int M, K, N, n0, n1;
    const float *A, *bias;
    int lda, ldc;
    const void *packed;
    float *C;
} call;

/* C outside the slice untouched, inside bitwise ref (bits), within tolerance of refd; returns the worst rel. error. */
static int verify(const float *C, const call *c, const float *ref, const double *refd, int *untouched, int *bitwise,
                  int *close, double *worst, int *n_diff) {
    const float tol = 1e-5f * sqrtf((float)(c->K > 0 ? c->K : 1));
    const int w = c->n1 - c->n0;
    *untouched = *bitwise = *close = 1;
    *worst = 0.0;
    *n_diff = 0;
    for (int m = 0; m < c->M; m++)
        for (int n = 0; n < (m + 1 < c->M ? c->ldc : c->N); n++) {
            const float v = C[(size_t)m * c->ldc + n];
            if (n < c->n0 || n >= c->n1) {
                *untouched &= f2u(v) == f2u(SENTINEL);
                continue;
            }
            const size_t i = (size_t)m * w + (n - c->n0);
            if (f2u(v) != f2u(ref[i])) *bitwise = 0, ++*n_diff;
            const double err = fabs(refd[i] - v) / (1.0 + fabs(refd[i]));
            if (!(err <= tol)) *close = 0; /* NaN fails too */
            if (err > *worst) *worst = err;
        }
    return *untouched && *bitwise && *close;
}

static float *new_c(const call *c) {
    const size_t len = (size_t)(c->M - 1) * c->ldc + c->N; /* the last row ends at N: exact */
    float *C = malloc(len * sizeof(float));
    for (size_t i = 0; i < len; i++) C[i] = SENTINEL;
    return C;
}

/* One shape through the emulated kernel (also the per-step path when stepwise), and the native one where it runs. */
static void test_case(int M, int K, int N, int n0, int n1, qw_dtype dt, int with_bias, int stepwise) {
    call c = {.M = M, .K = K, .N = N, .n0 = n0, .n1 = n1, .lda = K + 5, .ldc = N + 3};
    uint16_t *wb = malloc(((size_t)N * K + 1) * sizeof(uint16_t));
    void *W = make_weights(N, K, dt, wb);
    const size_t bytes = qw_amx_emu_packed_size(N, K);
    void *packed = alloc64(bytes);
    qw_amx_emu_pack(packed, W, dt, N, K);
    const size_t a_len = (size_t)(M - 1) * c.lda + K;
    float *A = malloc((a_len ? a_len : 1) * sizeof(float));
    uint16_t *ab = malloc(((size_t)M * K + 1) * sizeof(uint16_t)); /* A rounded to bf16, dense */
    for (size_t i = 0; i < a_len; i++) A[i] = i % 5 == 2 ? tie(frand()) : frand();
    for (int m = 0; m < M; m++)
        for (int k = 0; k < K; k++) ab[(size_t)m * K + k] = qw_f32_to_bf16(A[(size_t)m * c.lda + k]);
    float *bias = malloc((size_t)N * sizeof(float));
    for (int i = 0; i < N; i++) bias[i] = frand();
    c.A = A, c.bias = with_bias ? bias : NULL, c.packed = packed;

    const int w = n1 - n0;
    float *ref = malloc(((size_t)M * w + 1) * sizeof(float));
    double *refd = malloc(((size_t)M * w + 1) * sizeof(double));
    for (int m = 0; m < M; m++)
        for (int n = n0; n < n1; n++) {
            const float *b = c.bias ? &bias[n] : NULL;
            ref[(size_t)m * w + n - n0] = ref_chain(ab + (size_t)m * K, wb + (size_t)n * K, K, b);
            refd[(size_t)m * w + n - n0] = ref_double(ab + (size_t)m * K, wb + (size_t)n * K, K, b);
        }

    int untouched, bitwise, close, n_diff;
    double worst;
    float *C = new_c(&c);
    const unsigned f0 = qw_amx_emu.faults;
    qw_amx_emu_matmul(C, c.ldc, A, c.lda, packed, c.bias, M, N, K, n0, n1);
    const int faults = (int)(qw_amx_emu.faults - f0), released = !qw_amx_emu.configured;
    verify(C, &c, ref, refd, &untouched, &bitwise, &close, &worst, &n_diff);
    check(untouched && bitwise && close && !faults && released, "emulated",
          "M=%d K=%d N=%d n=[%d,%d) %s bias=%d: untouched=%d bitwise=%d (%d differ) vs_double=%d (worst %.3g) "
          "faults=%d released=%d",
          M, K, N, n0, n1, dt_name(dt), with_bias, untouched, bitwise, n_diff, close, worst, faults, released);
    if (stepwise) { /* no panel: A rounded per step */
        float *S = new_c(&c);
        amx_matmul(S, c.ldc, A, c.lda, NULL, packed, c.bias, M, N, K, n0, n1, 1, NULL, 0, NULL);
        int same = 1;
        for (size_t i = 0; i < (size_t)(M - 1) * c.ldc + N; i++) same &= f2u(S[i]) == f2u(C[i]);
        check(same && qw_amx_emu.faults == f0, "emulated", "per-step path M=%d K=%d N=%d n=[%d,%d) %s: same bits", M,
              K, N, n0, n1, dt_name(dt));
        free(S);
    }
    { /* A rounded once for all slices (qw_amx_round_rows, as the library's products do): the same bits */
        const size_t Kp = ((size_t)K + 31) / 32 * 32;
        uint16_t *Ab = malloc((size_t)M * Kp * sizeof(uint16_t));
        float *R = new_c(&c);
        qw_amx_emu_round_rows(Ab, A, c.lda, M, K);
        qw_amx_emu_matmul_rounded(R, c.ldc, Ab, packed, c.bias, M, N, K, n0, n1);
        int same = 1;
        for (size_t i = 0; i < (size_t)(M - 1) * c.ldc + N; i++) same &= f2u(R[i]) == f2u(C[i]);
        check(same && qw_amx_emu.faults == f0, "emulated", "A rounded once M=%d K=%d N=%d n=[%d,%d) %s: same bits", M,
              K, N, n0, n1, dt_name(dt));
        free(R), free(Ab);
    }
#if HAVE_NATIVE
    if (native) {
        float *H = new_c(&c);
        qw_amx_matmul(H, c.ldc, A, c.lda, packed, c.bias, M, N, K, n0, n1);
        int same = 1, n_emu = 0;
        for (size_t i = 0; i < (size_t)(M - 1) * c.ldc + N; i++)
            if (f2u(H[i]) != f2u(C[i])) same = 0, n_emu++;
        verify(H, &c, ref, refd, &untouched, &bitwise, &close, &worst, &n_diff);
        const int before = failed;
        /* Required on hardware: the columns asked for and nothing else, within the double-sum bound.
         * Bit-for-bit equality with the emulation is counted, not required: the SDM and the
         * intrinsics guide describe the pairs' accumulation order differently, and which one the
         * silicon follows is what this count shows (CONTRIBUTING: the AMX-BF16 GEMM). */
        check(untouched && close, "native",
              "M=%d K=%d N=%d n=[%d,%d) %s bias=%d: untouched=%d vs_double=%d (worst %.3g)", M, K, N, n0, n1,
              dt_name(dt), with_bias, untouched, close, worst);
        native_cases++;
        native_bitwise_cases += same;
        if (!same && native_bitwise_cases + 1 == native_cases)
            printf("native AMX: first case differing from the emulation: M=%d K=%d N=%d (%d elements)\n", M, K, N,
                   n_emu);
        native_failed += failed - before;
        free(H);
    }
#endif
    free(C);
    free(ref), free(refd), free(bias), free(ab), free(A), free(packed), free(W), free(wb);
}

/* Rows past M untouched: C with 2 rows more than the call's. */
static void test_rows_beyond(int M, int K, int N) {
    uint16_t *wb = malloc((size_t)N * K * sizeof(uint16_t));
    void *W = make_weights(N, K, QW_BF16, wb);
    void *packed = alloc64(qw_amx_emu_packed_size(N, K));
    qw_amx_emu_pack(packed, W, QW_BF16, N, K);
    float *A = malloc((size_t)(M + 2) * K * sizeof(float)), *C = malloc((size_t)(M + 2) * N * sizeof(float));
    for (int i = 0; i < (M + 2) * K; i++) A[i] = frand();
    for (int i = 0; i < (M + 2) * N; i++) C[i] = SENTINEL;
    qw_amx_emu_matmul(C, N, A, K, packed, NULL, M, N, K, 0, N);
    int ok = 1;
    for (int i = M * N; i < (M + 2) * N; i++) ok &= C[i] == SENTINEL;
    for (int i = 0; i < M * N; i++) ok &= C[i] != SENTINEL;
#if HAVE_NATIVE
    if (native) {
        for (int i = 0; i < (M + 2) * N; i++) C[i] = SENTINEL;
        qw_amx_matmul(C, N, A, K, packed, NULL, M, N, K, 0, N);
        for (int i = M * N; i < (M + 2) * N; i++) ok &= C[i] == SENTINEL;
    }
#endif
    check(ok, "emulated", "M=%d K=%d N=%d: rows from M on untouched", M, K, N);
    free(wb), free(W), free(packed), free(A), free(C);
}

/* Empty calls (M = 0, n0 == n1, n1 < n0) leave C alone. */
static void test_empty(void) {
    uint16_t wb[32 * 32];
    void *W = make_weights(32, 32, QW_BF16, wb);
    void *packed = alloc64(qw_amx_emu_packed_size(32, 32));
    qw_amx_emu_pack(packed, W, QW_BF16, 32, 32);
    float A[32], C[32];
    for (int i = 0; i < 32; i++) A[i] = frand(), C[i] = SENTINEL;
    qw_amx_emu_matmul(C, 32, A, 32, packed, NULL, 0, 32, 32, 0, 32);
    qw_amx_emu_matmul(C, 32, A, 32, packed, NULL, 1, 32, 32, 16, 16);
    qw_amx_emu_matmul(C, 32, A, 32, packed, NULL, 1, 32, 32, 16, 0);
    int ok = 1;
    for (int i = 0; i < 32; i++) ok &= C[i] == SENTINEL;
    check(ok && qw_amx_emu.faults == 0, "emulated", "empty calls leave C untouched");
    free(W), free(packed);
}

typedef struct {
    float *C;
    const call *c;
    int n0, n1;
    unsigned faults;
    int released;
} slice_job;

static void *run_slice(void *arg) {
    slice_job *j = arg;
    const call *c = j->c;
    const unsigned f0 = qw_amx_emu.faults; /* this thread's emulated tiles */
    qw_amx_emu_matmul(j->C, c->ldc, c->A, c->lda, c->packed, c->bias, c->M, c->N, c->K, j->n0, j->n1);
    j->faults = qw_amx_emu.faults - f0;
    j->released = !qw_amx_emu.configured;
    return NULL;
}
#if HAVE_NATIVE
static void *run_slice_native(void *arg) {
    slice_job *j = arg;
    const call *c = j->c;
    qw_amx_matmul(j->C, c->ldc, c->A, c->lda, c->packed, c->bias, c->M, c->N, c->K, j->n0, j->n1);
    return NULL;
}
#endif

/* Threads on disjoint slices at once, each with its own tiles: the same bits as one call. */
static void test_threads(void) {
    const int M = 45, K = 200, N = 100;
    uint16_t *wb = malloc((size_t)N * K * sizeof(uint16_t));
    void *W = make_weights(N, K, QW_F16, wb);
    void *packed = alloc64(qw_amx_emu_packed_size(N, K));
    qw_amx_emu_pack(packed, W, QW_F16, N, K);
    float *A = malloc((size_t)M * K * sizeof(float)), *bias = malloc((size_t)N * sizeof(float));
    for (int i = 0; i < M * K; i++) A[i] = frand();
    for (int i = 0; i < N; i++) bias[i] = frand();
    const call c = {.M = M, .K = K, .N = N, .n0 = 0, .n1 = N, .A = A, .bias = bias, .lda = K, .ldc = N, .packed = packed};
    float *one = malloc((size_t)M * N * sizeof(float)), *par = malloc((size_t)M * N * sizeof(float));
    static const int cuts[4] = {0, 32, 64, 100};
    for (int variant = 0; variant < 1 + HAVE_NATIVE * native; variant++) {
        /* each path's slices against the same path in one call */
#if HAVE_NATIVE
        if (variant) qw_amx_matmul(one, N, A, K, packed, bias, M, N, K, 0, N);
        else
#endif
            qw_amx_emu_matmul(one, N, A, K, packed, bias, M, N, K, 0, N);
        for (int i = 0; i < M * N; i++) par[i] = SENTINEL;
        slice_job jobs[3];
        pthread_t tid[3];
        for (int t = 0; t < 3; t++) {
            jobs[t] = (slice_job){par, &c, cuts[t], cuts[t + 1], 0, 0};
#if HAVE_NATIVE
            pthread_create(&tid[t], NULL, variant ? run_slice_native : run_slice, &jobs[t]);
#else
            pthread_create(&tid[t], NULL, run_slice, &jobs[t]);
#endif
        }
        int ok = 1;
        for (int t = 0; t < 3; t++) {
            pthread_join(tid[t], NULL);
            ok &= !jobs[t].faults && (variant || jobs[t].released);
        }
        for (int i = 0; i < M * N; i++) ok &= f2u(par[i]) == f2u(one[i]);
        check(ok, variant ? "native" : "emulated", "3 threads on slices [0,32) [32,64) [64,100): same bits as one call");
        if (variant) native_failed += !ok;
    }
    free(wb), free(W), free(packed), free(A), free(bias), free(one), free(par);
}

static void test_kernel(void) {
    static const int Ms[] = {1, 2, 15, 16, 17, 31, 32, 33, 64, 100};
    static const int Ks[] = {1, 2, 31, 32, 33, 64, 100, 1024};
    static const int Ns[] = {16, 32, 48, 100};
    const int nM = (int)(sizeof(Ms) / sizeof(Ms[0])), nK = (int)(sizeof(Ks) / sizeof(Ks[0]));
    const int nN = (int)(sizeof(Ns) / sizeof(Ns[0]));
    for (int mi = 0; mi < nM; mi++)
        for (int ki = 0; ki < nK; ki++)
            for (int ni = 0; ni < nN; ni++)
                for (int dt = 0; dt < 3; dt++) {
                    const int N = Ns[ni], last = (N - 1) / 16 * 16; /* start of the last (maybe partial) tile */
                    /* Slices: all; from n0 > 0; up to n1 < N; both (when N allows). */
                    int n0 = 0, n1 = N;
                    switch ((mi + ki + ni + dt) % 4) {
                    case 1: n0 = N > 16 ? 16 : 0; break;
                    case 2: n1 = last > 0 ? last : N; break;
                    case 3:
                        n0 = N > 32 ? 16 : 0;
                        n1 = last > n0 ? last : N;
                        break;
                    default: break;
                    }
                    test_case(Ms[mi], Ks[ki], N, n0, n1, (qw_dtype)dt, (mi + ki + dt) & 1, (mi + ki + ni) % 3 == 0);
                }
    /* Slices of N = 100 (7 tiles, the last of 4 columns). */
    static const int slices[][2] = {{0, 100}, {16, 100}, {32, 64}, {96, 100}, {48, 80}, {80, 96}, {0, 16}};
    for (size_t s = 0; s < sizeof(slices) / sizeof(slices[0]); s++)
        test_case(33, 100, 100, slices[s][0], slices[s][1], (qw_dtype)(s % 3), (int)(s & 1), 1);
    /* Several panels of A (1 MiB of bf16 each: 256 rows at K = 2048, 128 at K = 4096, 160 at K = 3000),
     * with a last block: a panel of its own from 32 rows on (300 = 256 + 44, 196 = 160 + 36), else taken
     * by the panel before (173 = 160 + 13, 130 = 128 + 2). */
    test_case(300, 2048, 64, 0, 64, QW_BF16, 1, 1);
    test_case(196, 3000, 48, 16, 48, QW_F32, 1, 1);
    test_case(173, 3000, 40, 0, 40, QW_F16, 0, 0);
    test_case(130, 4096, 48, 0, 48, QW_BF16, 0, 1);
    /* No k at all: bias (or zeros). */
    test_case(3, 0, 20, 0, 20, QW_BF16, 1, 1);
    test_case(17, 0, 16, 0, 16, QW_F32, 0, 0);
    test_rows_beyond(1, 40, 20);
    test_rows_beyond(17, 33, 48);
    test_rows_beyond(33, 64, 16);
    test_empty();
    test_threads();
}

/* ==== The implicit convolution ==== */

/* qw_amx_conv3x3 against im2col + the matmul + act (+ qw_amx_round_rows' rounding into the padded
 * layout) on the same bf16 input, bit for bit: emulated, and natively (against the native matmul)
 * where AMX runs; everything outside the slice's outputs keeps its sentinel (the bf16 output's
 * border included). */
static void test_conv_case(int Ti, int Fi, int Cin, int Cout, int n0, int n1, int bf16_out, int with_bias) {
    const int To = (Ti + 1) / 2, Fo = (Fi + 1) / 2, M = To * Fo, K = 9 * Cin, ldo = Cout + 3;
    uint16_t *in = calloc((size_t)(Ti + 2) * (Fi + 2) * Cin, sizeof(uint16_t)); /* zero border */
    for (int t = 0; t < Ti; t++)
        for (int f = 0; f < Fi; f++)
            for (int c = 0; c < Cin; c++)
                in[((size_t)(t + 1) * (Fi + 2) + f + 1) * Cin + c] = qw_f32_to_bf16(frand());
    float *A = malloc((size_t)M * K * sizeof(float)); /* the im2col, of values already bf16 */
    for (int to = 0; to < To; to++)
        for (int fo = 0; fo < Fo; fo++)
            for (int ky = 0; ky < 3; ky++)
                for (int kx = 0; kx < 3; kx++)
                    for (int c = 0; c < Cin; c++)
                        A[((size_t)to * Fo + fo) * K + (ky * 3 + kx) * Cin + c] =
                            bf(in[((size_t)(2 * to + kx) * (Fi + 2) + 2 * fo + ky) * Cin + c]);
    uint16_t *wb = malloc((size_t)Cout * K * sizeof(uint16_t));
    void *W = make_weights(Cout, K, QW_BF16, wb);
    void *packed = alloc64(qw_amx_emu_packed_size(Cout, K));
    qw_amx_emu_pack(packed, W, QW_BF16, Cout, K);
    float *bias = malloc((size_t)Cout * sizeof(float));
    for (int n = 0; n < Cout; n++) bias[n] = frand();
    const size_t out_len = bf16_out ? (size_t)(To + 2) * (Fo + 2) * ldo : (size_t)M * ldo;
    for (int variant = 0; variant < 1 + HAVE_NATIVE * native; variant++) {
        float *R = malloc((size_t)M * ldo * sizeof(float));
#if HAVE_NATIVE
        if (variant) qw_amx_matmul(R, ldo, A, K, packed, with_bias ? bias : NULL, M, Cout, K, n0, n1);
        else
#endif
            qw_amx_emu_matmul(R, ldo, A, K, packed, with_bias ? bias : NULL, M, Cout, K, n0, n1);
        for (int m = 0; m < M; m++) act_test(R + (size_t)m * ldo + n0, n1 - n0);
        float *of = malloc(out_len * sizeof(float));
        uint16_t *ob = malloc(out_len * sizeof(uint16_t));
        for (size_t i = 0; i < out_len; i++) of[i] = SENTINEL, ob[i] = SENTINEL_BF16;
        uint16_t *rows = NULL; /* explicit A: the im2col rounded, for Cin or Fo that the implicit tiles cannot take */
        if (Cin % 32 || Fo % 16) {
            rows = malloc((size_t)M * ((size_t)(K + 31) / 32 * 32) * sizeof(uint16_t));
            qw_amx_emu_round_rows(rows, A, K, M, K);
        }
        const qw_conv3x3 c = {in, rows, Ti, Fi, Cin, packed, with_bias ? bias : NULL, Cout, act_test,
                               bf16_out ? NULL : of, bf16_out ? ob : NULL, ldo};
        const unsigned f0 = qw_amx_emu.faults;
#if HAVE_NATIVE
        if (variant) qw_amx_conv3x3(&c, n0, n1);
        else
#endif
            qw_amx_emu_conv3x3(&c, n0, n1);
        int same, untouched;
        const int n_diff = conv_output_check(R, of, bf16_out ? ob : NULL, out_len, ldo, To, Fo, n0, n1,
                                             SENTINEL, SENTINEL_BF16, &same, &untouched);
        const int faults = (int)(qw_amx_emu.faults - f0);
        check(same && untouched && !faults, variant ? "native" : "emulated",
              "conv3x3 Ti=%d Fi=%d Cin=%d Cout=%d n=[%d,%d) %s bias=%d %s: im2col's bits=%d (%d differ) untouched=%d "
              "faults=%d",
              Ti, Fi, Cin, Cout, n0, n1, bf16_out ? "bf16" : "f32", with_bias, rows ? "explicit" : "implicit", same,
              n_diff, untouched, faults);
        if (variant) native_failed += !(same && untouched);
        free(R), free(of), free(ob), free(rows);
    }
    free(in), free(A), free(wb), free(W), free(packed), free(bias);
}

static void test_conv(void) {
    test_conv_case(9, 32, 32, 48, 0, 48, 0, 1);     /* Fo = 16: two time steps a row block; a last block of 16 rows */
    test_conv_case(7, 31, 32, 16, 0, 16, 1, 0);     /* odd Fi; one column block of 16 */
    test_conv_case(20, 64, 64, 100, 16, 80, 1, 1);  /* Fo = 32, 320 rows: 3 panels; a slice of 2 blocks of 32 */
    test_conv_case(12, 64, 32, 100, 96, 100, 0, 1); /* the last 4 columns */
    test_conv_case(1, 32, 96, 40, 0, 40, 1, 1);     /* one time step; 40 = 32 + 8 columns */
    /* explicit A (the im2col given): one input channel, as conv1 */
    test_conv_case(20, 128, 1, 48, 0, 48, 1, 1);    /* Fo = 64, K = 9 on one k step */
    test_conv_case(5, 13, 1, 20, 16, 20, 0, 1);     /* Fo = 7: blocks across time steps, a last block of 21 rows */
    test_conv_case(3, 8, 40, 36, 0, 36, 1, 0);      /* Cin = 40: K = 360 on 12 k steps, the last partial */
}

/* ==== The product with an epilogue (qw_amx_matmul_act_bf16) ==== */

/* qw_amx_matmul_act_bf16 against qw_amx_matmul_rounded + act + qw_amx_round_rows on the same rounded A,
 * bit for bit: emulated, and natively where AMX runs; nothing outside the slice's outputs written. */
static void test_act_case(int M, int K, int N, int n0, int n1, int with_bias) {
    const int ldcb = N + 5, Kp = (K + 31) / 32 * 32;
    float *A = malloc((size_t)M * K * sizeof(float));
    for (int i = 0; i < M * K; i++) A[i] = i % 7 == 3 ? tie(frand()) : frand();
    uint16_t *Ab = alloc64((size_t)M * Kp * sizeof(uint16_t) + 64);
    qw_amx_emu_round_rows(Ab, A, K, M, K);
    uint16_t *wb = malloc((size_t)N * K * sizeof(uint16_t));
    void *W = make_weights(N, K, QW_BF16, wb);
    void *packed = alloc64(qw_amx_emu_packed_size(N, K));
    qw_amx_emu_pack(packed, W, QW_BF16, N, K);
    float *bias = malloc((size_t)N * sizeof(float));
    for (int n = 0; n < N; n++) bias[n] = frand();
    for (int variant = 0; variant < 1 + HAVE_NATIVE * native; variant++) {
        float *R = malloc((size_t)M * N * sizeof(float));
        uint16_t *Rb = malloc((size_t)M * N * sizeof(uint16_t));
        uint16_t *ob = malloc((size_t)M * ldcb * sizeof(uint16_t));
        for (size_t i = 0; i < (size_t)M * ldcb; i++) ob[i] = SENTINEL_BF16;
        const unsigned f0 = qw_amx_emu.faults;
#if HAVE_NATIVE
        if (variant) {
            qw_amx_matmul_rounded(R, N, Ab, packed, with_bias ? bias : NULL, M, N, K, n0, n1);
            qw_amx_matmul_act_bf16(ob, ldcb, Ab, packed, with_bias ? bias : NULL, act_test, M, N, K, n0, n1);
        } else
#endif
        {
            qw_amx_emu_matmul_rounded(R, N, Ab, packed, with_bias ? bias : NULL, M, N, K, n0, n1);
            qw_amx_emu_matmul_act_bf16(ob, ldcb, Ab, packed, with_bias ? bias : NULL, act_test, M, N, K, n0, n1);
        }
        for (int m = 0; m < M; m++) { /* act, then the rounding of qw_amx_round_rows (qw_f32_to_bf16) */
            act_test(R + (size_t)m * N + n0, n1 - n0);
            for (int n = n0; n < n1; n++) Rb[(size_t)m * N + n] = qw_f32_to_bf16(R[(size_t)m * N + n]);
        }
        int same = 1, untouched = 1, n_diff = 0;
        for (int m = 0; m < M; m++)
            for (int n = 0; n < ldcb; n++) {
                const uint16_t o = ob[(size_t)m * ldcb + n];
                if (n >= n0 && n < n1) {
                    const int ok = o == Rb[(size_t)m * N + n];
                    same &= ok, n_diff += !ok;
                } else {
                    untouched &= o == SENTINEL_BF16;
                }
            }
        const int faults = (int)(qw_amx_emu.faults - f0);
        check(same && untouched && !faults, variant ? "native" : "emulated",
              "matmul_act_bf16 M=%d K=%d N=%d n=[%d,%d) bias=%d: the product's bits=%d (%d differ) untouched=%d "
              "faults=%d",
              M, K, N, n0, n1, with_bias, same, n_diff, untouched, faults);
        if (variant) native_failed += !(same && untouched);
        free(R), free(Rb), free(ob);
    }
    free(A), free(Ab), free(wb), free(W), free(packed), free(bias);
}

static void test_act(void) {
    test_act_case(130, 96, 128, 0, 128, 1); /* a short last block of 2 rows taken by the panel before */
    test_act_case(17, 64, 48, 16, 48, 0);   /* a slice of one and a half column blocks; 16 + 1 rows */
    test_act_case(40, 70, 40, 32, 40, 1);   /* K not a multiple of 32; the last 8 columns */
    test_act_case(1, 32, 16, 0, 16, 1);     /* one row */
    test_act_case(5, 0, 32, 0, 32, 1);      /* no k: act(bias) */
}

/* ==== Probe ==== */

static void *probe_thread(void *arg) {
    *(int *)arg = qw_amx_available();
    return NULL;
}

static void test_probe(void) {
    check(qw_amx_emu_available() == 1, "probe", "the emulated build reports AMX");
#if HAVE_NATIVE
    int tile = 0, bf16 = 0, xcr0 = 0;
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) tile = d >> 24 & 1, bf16 = d >> 22 & 1;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c >> 27 & 1)) { /* OSXSAVE */
        unsigned lo, hi;
        __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        xcr0 = (lo >> 17 & 3) == 3;
    }
#endif
    const int avail = qw_amx_available();
    printf("amx: probe: CPUID AMX-TILE=%d AMX-BF16=%d, XCR0 tile state=%d -> qw_amx_available() = %d\n", tile, bf16,
           xcr0, avail);
    check(avail == 0 || avail == 1, "probe", "answer is 0 or 1");
    check(!avail || (tile && bf16 && xcr0), "probe", "1 only with CPUID AMX-TILE + AMX-BF16 and XCR0 bits 17, 18");
    check(tile && bf16 ? 1 : avail == 0, "probe", "0 on a CPU without AMX-TILE / AMX-BF16");
    int answers[4];
    pthread_t tid[4];
    for (int t = 0; t < 4; t++) pthread_create(&tid[t], NULL, probe_thread, &answers[t]);
    int same = qw_amx_available() == avail;
    for (int t = 0; t < 4; t++) pthread_join(tid[t], NULL), same &= answers[t] == avail;
    check(same, "probe", "the same answer from every call and thread");
    native = avail;
    if (native) check(qw_amx_selfcheck() == 1, "native", "the load-time self-check passes on this CPU");
#endif
    /* the load-time self-check, on the emulated unit (the code qwen_load runs before using the tiles) */
    check(qw_amx_emu_selfcheck() == 1, "emulated", "self-check passes");
}

int main(void) {
    test_probe();
    test_emulation();
    test_pack();
    test_pack_kv();
    const int before = failed;
    test_kernel();
    test_conv();
    test_act();
    printf("amx: emulated kernel tested, %d failures\n", failed - before - native_failed);
    if (native) {
        printf("native AMX: tested, %d failures\n", native_failed);
        printf("native AMX: %d of %d kernel cases bit for bit the emulation\n", native_bitwise_cases, native_cases);
    }
    else printf("native AMX: not available on this CPU (emulated only)\n");
    printf("amx: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
