/*
 * API tests — the library's contract on bad input: errors come back as
 * NULL/status codes with a message, never as a crash. With QWEN_TEST_MODEL
 * set to a checkpoint directory it also runs two contexts side by side.
 */
#include "qwen.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int passed, failed;
#define CHECK(cond, what)                                        \
    do {                                                         \
        if (cond) passed++;                                      \
        else { failed++; fprintf(stderr, "FAIL: %s\n", what); }  \
    } while (0)

static void write_bytes(const char *path, const char *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (f) { fwrite(data, 1, len, f); fclose(f); }
}
static void write_file(const char *path, const char *text) { write_bytes(path, text, strlen(text)); }

int main(void) {
    char err[512];
    CHECK(strcmp(qwen_version(), "0.1.0") == 0, "version");
    CHECK(qwen_best_isa() >= QWEN_ISA_SCALAR, "best isa");
    CHECK(qwen_load(NULL, NULL, err, sizeof(err)) == NULL && err[0], "NULL dir");
    CHECK(qwen_load("/nonexistent/dir", NULL, err, sizeof(err)) == NULL && strstr(err, "config.json"), "missing dir");
    CHECK(qwen_load("/nonexistent/dir", NULL, NULL, 0) == NULL, "missing dir, no err buffer");

    char dir[] = "/tmp/qwen_api_XXXXXX";
    if (!mkdtemp(dir)) return 1;
    char path[600];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    write_file(path, "{\"thinker_config\": {\"audio_config\": {");
    CHECK(qwen_load(dir, NULL, err, sizeof(err)) == NULL && strstr(err, "JSON"), "truncated config");
    write_file(path, "{\"thinker_config\": {\"audio_config\": {}, \"text_config\": {}}}");
    CHECK(qwen_load(dir, NULL, err, sizeof(err)) == NULL && strstr(err, "num_mel_bins"), "missing keys");
    write_file(path,
               "{\"thinker_config\": {\"audio_config\": {\"num_mel_bins\": 128, \"d_model\": 64, \"encoder_layers\": 1,"
               "\"encoder_attention_heads\": 4, \"encoder_ffn_dim\": 64, \"output_dim\": 64, \"downsample_hidden_size\": 8,"
               "\"n_window\": 50, \"n_window_infer\": 800}, \"text_config\": {\"hidden_size\": 64, \"intermediate_size\": 64,"
               "\"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"vocab_size\": 100}}}");
    CHECK(qwen_load(dir, NULL, err, sizeof(err)) == NULL && strstr(err, "safetensors"), "no weights");
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    write_file(path, "\xff\xff\xff\xff\xff\xff\xff\x7f{}");
    CHECK(qwen_load(dir, NULL, err, sizeof(err)) == NULL && strstr(err, "header"), "bad header length");
    write_bytes(path, "\x0a\x00\x00\x00\x00\x00\x00\x00{\"a\": {}} ", 18);
    CHECK(qwen_load(dir, NULL, err, sizeof(err)) == NULL && strstr(err, "bad entry"), "bad tensor entry");
    write_bytes(path, "\x02\x00\x00\x00\x00\x00\x00\x00{}", 10);
    CHECK(qwen_load(dir, NULL, err, sizeof(err)) == NULL && strstr(err, "missing"), "missing tensors");
    if (!strstr(err, "missing")) fprintf(stderr, "  got: %s\n", err);
    qwen_params p = qwen_default_params();
    p.isa = (qwen_isa)99;
    CHECK(qwen_load(dir, &p, err, sizeof(err)) == NULL && strstr(err, "not supported"), "bad isa");
    remove(path);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    remove(path);
    rmdir(dir);

    /* NULL contexts are errors, not crashes. */
    int32_t tok;
    CHECK(qwen_next(NULL, &tok) == QWEN_ERR_INVALID, "next NULL");
    CHECK(qwen_begin(NULL, NULL, 0, NULL, 0, NULL) == QWEN_ERR_INVALID, "begin NULL");
    CHECK(qwen_audio_token_count(NULL, 100) == -1, "count NULL");
    qwen_free(NULL);

    const char *model = getenv("QWEN_TEST_MODEL");
    if (model && *model) {
        qwen_context *a = qwen_load(model, NULL, err, sizeof(err));
        qwen_context *b = qwen_load(model, NULL, err, sizeof(err));
        CHECK(a && b, "two contexts");
        if (a && b) {
            int n = 16000;
            float *pcm = calloc((size_t)n, sizeof(float));
            for (int i = 0; i < n; i++) pcm[i] = 0.1f * (float)((i * 7919) % 200 - 100) / 100.0f;
            int64_t na = qwen_audio_token_count(a, n);
            CHECK(na == 13, "13 tokens per second");
            int32_t bad[3] = {1, 2, 3};
            CHECK(qwen_begin(a, pcm, n, bad, 3, NULL) == QWEN_ERR_INVALID && strstr(qwen_last_error(a), "placeholders"),
                  "placeholder count checked");
            CHECK(qwen_next(a, &tok) == QWEN_ERR_INVALID, "next before begin");
            int32_t *ids = malloc((size_t)(na + 2) * sizeof(int32_t));
            ids[0] = (int32_t)qwen_model_info(a, "audio_start_token_id");
            for (int i = 0; i < na; i++) ids[1 + i] = (int32_t)qwen_model_info(a, "audio_token_id");
            ids[na + 1] = (int32_t)qwen_model_info(a, "audio_end_token_id");
            qwen_run_params rp = qwen_default_run_params();
            rp.max_new_tokens = 5;
            int32_t out_a[5], out_b[5];
            int got_a = 0, got_b = 0;
            CHECK(qwen_begin(a, pcm, n, ids, (int)na + 2, &rp) == QWEN_OK, "begin a");
            CHECK(qwen_begin(b, pcm, n, ids, (int)na + 2, &rp) == QWEN_OK, "begin b");
            /* Interleave the two contexts: results must not interfere. */
            for (int i = 0; i < 5; i++) {
                if (got_a == i && qwen_next(a, &tok) >= 0 && tok >= 0) out_a[got_a++] = tok;
                if (got_b == i && qwen_next(b, &tok) >= 0 && tok >= 0) out_b[got_b++] = tok;
            }
            CHECK(got_a == got_b && got_a > 0 && memcmp(out_a, out_b, (size_t)got_a * sizeof(int32_t)) == 0,
                  "contexts agree");
            free(ids);
            free(pcm);
        }
        qwen_free(a);
        qwen_free(b);
    }
    printf("api: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
