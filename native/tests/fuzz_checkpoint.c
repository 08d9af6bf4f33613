/*
 * Fuzz target: one input is a checkpoint directory (config.json and
 * model.safetensors), loaded by qwen_load. Whatever the bytes, the load
 * either succeeds or returns an error; no crash, leak or undefined behaviour
 * (built with sanitizers: -DQWEN_FUZZ=ON for libFuzzer, or fuzz_replay.c over
 * native/tests/corpus/checkpoint in the tests).
 *
 * Input: u32 n (little-endian) | config.json (n & 0x7fffffff bytes) | model.safetensors
 * (the rest); bit 31 of n loads with precision FAST (int8 packing, the LM head's screen).
 * The seeds are a few-KB checkpoint of the real layout (every tensor Qwen3-ASR has, widths of
 * 8-32, a vocabulary of 64) in bf16, f16 and f32.
 */
#include "fuzz_util.h"
#include "qwen.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const int fast = fuzz_write_checkpoint(data, size);
    if (fast < 0) return 0;
    qwen_params p = qwen_default_params();
    p.n_threads = 1;
    p.precision = fast ? QWEN_PRECISION_FAST : QWEN_PRECISION_EXACT;
    char err[512];
    qwen_context *ctx = qwen_load(fuzz_dir, &p, err, sizeof(err));
    if (ctx) qwen_free(ctx);
    return 0;
}
