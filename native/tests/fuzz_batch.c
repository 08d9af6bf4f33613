/*
 * Fuzz target: the sequence scheduler (batch.c, its caches) driven by a program of API calls, with
 * the batching contract as the oracle: every sequence that ends gets exactly the tokens it gets
 * alone. One input is a list of operations, a byte each and its arguments after it:
 *   add (audio of one of 4 signals and one of 6 lengths, some of them past an 8 s encoder window
 *        so that complete windows and prompt prefixes are reused, a prompt of 0-3 text ids around
 *        the placeholders, a wrong placeholder count now and then, 1-12 new tokens, an EOS id,
 *        log-probabilities or not),
 *   step, abort (a slot), the logits and timings of a slot, info.
 * At its end the program steps until no sequence is left; then each sequence that ended on its
 * own (QWEN_DONE) runs again alone, in a context of one slot with both caches off, and its tokens
 * must be the same (asking for log-probabilities changes no token). Each event's log-probability
 * is a number <= 0 for a sequence that asked, 0 for one that did not. Slots, the KV budget and
 * the caches must be back to empty.
 *
 * The checkpoint: a file in fuzz_checkpoint.c's format (u32 n | config.json | model.safetensors),
 * named by QWEN_FUZZ_CHECKPOINT (the tests: native/tests/corpus/checkpoint/seed_*); bit 31 of n
 * picks the precision. Contexts: 4 slots, a KV budget for about 3 sequences, prefill chunks of 16
 * tokens (several per prompt), both caches on.
 */
#include "fuzz_util.h"
#include "qwen.h"

#include <math.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SLOTS 4
#define MAX_NEW 12
#define MAX_PROMPT 160

static qwen_context *multi, *solo;
static int n_logprobs; /* events with a log-probability checked, over the inputs so far */

static void free_contexts(void) {
    qwen_free(multi);
    qwen_free(solo);
}

static void setup(void) {
    const char *path = getenv("QWEN_FUZZ_CHECKPOINT");
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (!f) {
        fprintf(stderr, "fuzz_batch: QWEN_FUZZ_CHECKPOINT must name a checkpoint file (fuzz_checkpoint.c's format)\n");
        abort();
    }
    static uint8_t buf[1 << 20];
    const size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    const int fast = fuzz_write_checkpoint(buf, n);
    if (fast < 0) abort();
    qwen_params p = qwen_default_params();
    p.n_threads = 2;
    p.precision = fast ? QWEN_PRECISION_FAST : QWEN_PRECISION_EXACT;
    p.max_context = 256;
    p.prefill_chunk = 16;
    p.max_sequences = SLOTS;
    p.kv_budget_tokens = 3 * (MAX_PROMPT + MAX_NEW);
    p.encoder_cache_windows = 2;
    p.prefix_cache_tokens = 256;
    char err[512];
    multi = qwen_load(fuzz_dir, &p, err, sizeof(err));
    p.max_sequences = 1, p.kv_budget_tokens = 0, p.encoder_cache_windows = -1, p.prefix_cache_tokens = -1;
    solo = qwen_load(fuzz_dir, &p, err, sizeof(err));
    if (!multi || !solo) {
        fprintf(stderr, "fuzz_batch: %s\n", err);
        abort();
    }
    atexit(free_contexts); /* before the directory goes (atexit runs last in, first out) */
}

typedef struct { /* what a sequence was given, to run it again alone */
    float *pcm;
    int64_t n;
    int32_t prompt[MAX_PROMPT];
    int n_prompt, max_new;
    int32_t eos;
    int logprobs;
    int32_t tokens[MAX_NEW + 1];
    int n_tokens, live, used; /* live: running; used: the slot held a sequence (an ended one stays there) */
} seq_rec;

static const int64_t lengths[6] = {0, 1, 3000, 16000, 128000, 136000}; /* 8 s is one encoder window */

static float *audio_signal(int kind, int64_t n) {
    float *x = malloc((size_t)(n ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) /* the same kind gives the same samples: its windows and prefixes repeat */
        x[i] = kind == 0 ? 0.0f : kind == 1 ? 0.3f * sinf(0.05f * (float)i) : kind == 2 ? (float)((i * 7919) % 401 - 200) / 400.0f : (i & 1 ? 0.9f : -0.9f);
    return x;
}

/* One sequence alone, in the solo context: its tokens (as qwen_step's events give them). */
static int run_alone(const seq_rec *r, int32_t *out) {
    qwen_run_params rp = qwen_default_run_params();
    rp.max_new_tokens = r->max_new;
    rp.eos_ids = &r->eos;
    rp.n_eos_ids = 1;
    int s, n = 0, ne;
    if (qwen_seq_add(solo, r->pcm, r->n, r->prompt, r->n_prompt, &rp, &s) != QWEN_OK) abort();
    qwen_event ev[1];
    for (int guard = 0; guard < 1000; guard++) {
        if (qwen_step(solo, ev, &ne) == QWEN_DONE) break;
        for (int e = 0; e < ne; e++) {
            if (ev[e].token >= 0 && n <= MAX_NEW) out[n++] = ev[e].token;
            if (ev[e].status < 0) abort(); /* alone it must not fail */
        }
    }
    return n;
}

/* A step's events into the records: tokens, and a sequence that ended on its own kept for the oracle. */
static void take_events(const qwen_event *ev, int ne, seq_rec *rec, seq_rec *ended, int *n_ended) {
    for (int e = 0; e < ne; e++) {
        if (ev[e].seq < 0 || ev[e].seq >= SLOTS || !rec[ev[e].seq].live) abort(); /* an event for no sequence */
        seq_rec *r = &rec[ev[e].seq];
        if (ev[e].token >= 0 && r->n_tokens <= MAX_NEW) r->tokens[r->n_tokens++] = ev[e].token;
        const float lp = ev[e].logprob;
        if (ev[e].token >= 0 && r->logprobs ? isnan(lp) || lp > 0 : lp != 0) abort(); /* a log-probability or 0 */
        n_logprobs += ev[e].token >= 0 && r->logprobs;
        if (ev[e].status < 0) abort(); /* nothing a program does may fail a running sequence */
        if (ev[e].status != QWEN_OK) {
            r->live = 0;
            if (ev[e].status == QWEN_DONE && *n_ended < 32) ended[(*n_ended)++] = *r, r->pcm = NULL;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!multi) setup();
    seq_rec rec[SLOTS];
    memset(rec, 0, sizeof(rec));
    for (int s = 0; s < SLOTS; s++) /* slots an earlier input used hold its ended sequences */
        rec[s].used = qwen_seq_abort(multi, s) == QWEN_OK;
    seq_rec ended[32];
    int n_ended = 0;
    qwen_event ev[SLOTS];
    int ne;
    const int32_t audio_id = (int32_t)qwen_model_info(multi, "audio_token_id");
    const int32_t vocab = (int32_t)qwen_model_info(multi, "vocab_size");
    size_t i = 0;
#define ARG() (i < size ? data[i++] : 0)
    for (int ops = 0; i < size && ops < 64; ops++) {
        const int op = ARG() % 6;
        if (op == 0) { /* add */
            const int a = ARG(), b = ARG(), c = ARG();
            seq_rec r = {0};
            r.n = lengths[a % 6];
            r.pcm = audio_signal(a / 6 % 4, r.n);
            const int64_t na = qwen_audio_token_count(multi, r.n);
            const int pre = b % 4, post = b / 4 % 4, wrong = b / 16 % 8 == 0;
            for (int k = 0; k < pre; k++) r.prompt[r.n_prompt++] = (c + 3 * k) % vocab;
            for (int64_t k = 0; k < na + wrong && r.n_prompt < MAX_PROMPT - 4; k++) r.prompt[r.n_prompt++] = audio_id;
            for (int k = 0; k < post; k++) r.prompt[r.n_prompt++] = (c + 5 * k + 1) % vocab;
            if (!r.n_prompt) r.prompt[r.n_prompt++] = c % vocab;
            r.max_new = 1 + c % MAX_NEW;
            r.eos = (int32_t)(c / 16 % vocab);
            qwen_run_params rp = qwen_default_run_params();
            rp.max_new_tokens = r.max_new;
            rp.eos_ids = &r.eos;
            rp.n_eos_ids = 1;
            rp.logprobs = r.logprobs = b / 128;
            int s = -1;
            const qwen_status st = qwen_seq_add(multi, r.pcm, r.n, r.prompt, r.n_prompt, &rp, &s);
            if (st == QWEN_OK && s >= 0 && s < SLOTS) {
                if (rec[s].live) abort(); /* a slot handed out twice */
                r.live = r.used = 1;
                free(rec[s].pcm);
                rec[s] = r;
            } else {
                if (st == QWEN_OK) abort();
                free(r.pcm);
            }
        } else if (op == 1 || op == 5) { /* step (twice as likely) */
            if (qwen_step(multi, ev, &ne) == QWEN_OK) take_events(ev, ne, rec, ended, &n_ended);
        } else if (op == 2) { /* abort */
            const int s = ARG() % SLOTS;
            const qwen_status st = qwen_seq_abort(multi, s); /* OK for a running or an ended sequence */
            if ((st == QWEN_OK) != rec[s].used) abort();
            rec[s].live = 0;
        } else if (op == 3) { /* the logits and timings of a slot */
            const int s = ARG() % SLOTS;
            int nv = 0;
            const float *l = qwen_seq_logits(multi, s, &nv);
            if (l && nv != vocab) abort();
            for (int k = 0; l && k < nv; k++) (void)(l[k] == 0.0f);
            (void)qwen_seq_timing(multi, s, "prefill");
        } else { /* info */
            if (qwen_get_info(multi, "active") < 0 || qwen_get_info(multi, "kv_reserved") < 0) abort();
        }
    }
    for (int guard = 0; guard < 4000 && qwen_step(multi, ev, &ne) == QWEN_OK; guard++)
        take_events(ev, ne, rec, ended, &n_ended);
    if (qwen_get_info(multi, "active") != 0 || qwen_get_info(multi, "kv_reserved") != 0 ||
        qwen_get_info(multi, "free_slots") != SLOTS)
        abort(); /* every sequence ended and gave its slot and KV back */
    for (int k = 0; k < n_ended; k++) { /* the contract: the tokens it gets alone */
        int32_t alone[MAX_NEW + 1];
        const int n = run_alone(&ended[k], alone);
        if (n != ended[k].n_tokens || memcmp(alone, ended[k].tokens, (size_t)n * sizeof(int32_t))) {
            fprintf(stderr, "fuzz_batch: a sequence's tokens in the batch differ from its tokens alone\n");
            abort();
        }
        free(ended[k].pcm);
    }
    for (int s = 0; s < SLOTS; s++) free(rec[s].pcm);
    if (getenv("QWEN_FUZZ_VERBOSE")) /* what the replay test counts: the oracle was not vacuous */
        printf("batch: %d sequences compared with their runs alone, encoder cache hits %lld, prefix cache hits %lld, "
               "log-probabilities %d\n",
               n_ended, (long long)qwen_get_info(multi, "encoder_cache_hits"),
               (long long)qwen_get_info(multi, "prefix_cache_hits"), n_logprobs);
    return 0;
}
