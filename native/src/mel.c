/*
 * Mel — Whisper-style log-mel features, as the official processor computes
 * them (WhisperFeatureExtractor): 16 kHz, n_fft 400, hop 160, periodic Hann
 * window, centred frames with reflect padding, the last frame dropped,
 * power spectrum, Slaney mel filters (0..8 kHz, Slaney norm), log10 with a
 * 1e-10 floor, clamp to (max - 8), then (x + 4) / 4.
 *
 * The DFT runs as a matmul on the kernel table: frames[T, 400] @ basis^T
 * where basis rows are the windowed cos and -sin of each frequency bin.
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define N_FFT 400
#define HOP 160
#define N_FREQ (N_FFT / 2 + 1)
#define SAMPLE_RATE 16000

static double hz_to_mel(double f) { /* Slaney */
    const double logstep = 27.0 / log(6.4);
    return f < 1000.0 ? 3.0 * f / 200.0 : 15.0 + log(f / 1000.0) * logstep;
}

static double mel_to_hz(double m) {
    const double logstep = log(6.4) / 27.0;
    return m < 15.0 ? 200.0 * m / 3.0 : 1000.0 * exp(logstep * (m - 15.0));
}

int qw_mel_init(qwen_context *ctx) {
    const int n_mels = ctx->cfg.n_mels;
    ctx->mel_filters = qw_own(ctx, (size_t)n_mels * N_FREQ * sizeof(float));
    ctx->dft_basis = qw_own(ctx, (size_t)2 * N_FREQ * N_FFT * sizeof(float));
    double *hz = malloc((size_t)(n_mels + 2) * sizeof(double));
    if (!ctx->mel_filters || !ctx->dft_basis || !hz) {
        free(hz);
        return QWEN_ERR_NOMEM;
    }
    /* Triangular filters between n_mels + 2 points evenly spaced in mel. */
    double m0 = hz_to_mel(0.0), m1 = hz_to_mel(SAMPLE_RATE / 2.0);
    for (int i = 0; i < n_mels + 2; i++) hz[i] = mel_to_hz(m0 + (m1 - m0) * i / (n_mels + 1));
    for (int m = 0; m < n_mels; m++) {
        double enorm = 2.0 / (hz[m + 2] - hz[m]);
        for (int f = 0; f < N_FREQ; f++) {
            double ff = (SAMPLE_RATE / 2.0) * f / (N_FREQ - 1);
            double down = (ff - hz[m]) / (hz[m + 1] - hz[m]);
            double up = (hz[m + 2] - ff) / (hz[m + 2] - hz[m + 1]);
            double w = down < up ? down : up;
            ctx->mel_filters[(size_t)m * N_FREQ + f] = (float)(w > 0.0 ? w * enorm : 0.0);
        }
    }
    free(hz);
    /* Windowed DFT basis: row 2f = w[n] cos(2 pi f n / N), row 2f+1 = -w[n] sin(...) */
    for (int f = 0; f < N_FREQ; f++) {
        for (int n = 0; n < N_FFT; n++) {
            double w = 0.5 - 0.5 * cos(2.0 * M_PI * n / N_FFT);
            double ang = 2.0 * M_PI * (double)((long)f * n % N_FFT) / N_FFT;
            ctx->dft_basis[(size_t)(2 * f) * N_FFT + n] = (float)(w * cos(ang));
            ctx->dft_basis[(size_t)(2 * f + 1) * N_FFT + n] = (float)(-w * sin(ang));
        }
    }
    return QWEN_OK;
}

int64_t qw_mel_frames(int64_t n_samples) { return n_samples / HOP; }

/* Reflect an index into [0, n) like numpy/torch "reflect" padding. */
static int64_t reflect(int64_t i, int64_t n) {
    if (n == 1) return 0;
    int64_t period = 2 * (n - 1);
    i %= period;
    if (i < 0) i += period;
    return i < n ? i : period - i;
}

qwen_status qw_mel(qwen_context *ctx, const float *pcm, int64_t n_samples, float *out, int64_t n_frames) {
    const int n_mels = ctx->cfg.n_mels;
    const int block = 256; /* frames per pass, bounds the scratch memory */
    float *frames = malloc((size_t)block * N_FFT * sizeof(float));
    float *spec = malloc((size_t)block * 2 * N_FREQ * sizeof(float));
    float *power = malloc((size_t)block * N_FREQ * sizeof(float));
    float *mel = malloc((size_t)block * n_mels * sizeof(float));
    if (!frames || !spec || !power || !mel) {
        free(frames); free(spec); free(power); free(mel);
        return qw_fail(ctx, QWEN_ERR_NOMEM, "out of memory in mel");
    }
    qw_mat basis = {ctx->dft_basis, QW_F32, 2 * N_FREQ, N_FFT};
    qw_mat filt = {ctx->mel_filters, QW_F32, n_mels, N_FREQ};
    float gmax = -INFINITY;
    for (int64_t t0 = 0; t0 < n_frames; t0 += block) {
        int nb = (int)(n_frames - t0 < block ? n_frames - t0 : block);
        for (int t = 0; t < nb; t++) {
            int64_t start = (t0 + t) * HOP - N_FFT / 2; /* centred */
            float *fr = frames + (size_t)t * N_FFT;
            if (start >= 0 && start + N_FFT <= n_samples) {
                memcpy(fr, pcm + start, N_FFT * sizeof(float));
            } else {
                for (int n = 0; n < N_FFT; n++) fr[n] = pcm[reflect(start + n, n_samples)];
            }
        }
        qw_matmul(ctx, spec, frames, &basis, NULL, nb);
        for (int t = 0; t < nb; t++)
            for (int f = 0; f < N_FREQ; f++) {
                float re = spec[(size_t)t * 2 * N_FREQ + 2 * f], im = spec[(size_t)t * 2 * N_FREQ + 2 * f + 1];
                power[(size_t)t * N_FREQ + f] = re * re + im * im;
            }
        qw_matmul(ctx, mel, power, &filt, NULL, nb);
        for (int t = 0; t < nb; t++)
            for (int m = 0; m < n_mels; m++) {
                float v = mel[(size_t)t * n_mels + m];
                v = log10f(v > 1e-10f ? v : 1e-10f);
                gmax = v > gmax ? v : gmax;
                out[(size_t)m * n_frames + t0 + t] = v;
            }
    }
    float floor_v = gmax - 8.0f;
    for (size_t i = 0; i < (size_t)n_mels * (size_t)n_frames; i++) {
        float v = out[i] > floor_v ? out[i] : floor_v;
        out[i] = (v + 4.0f) / 4.0f;
    }
    free(frames); free(spec); free(power); free(mel);
    return QWEN_OK;
}
