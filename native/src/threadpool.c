/*
 * Thread pool — persistent workers per context. A decode step launches a
 * few hundred small jobs, so workers spin briefly on the job counter before
 * they sleep, and the caller spins for completion. Tasks are handed out
 * through an atomic counter so uneven tasks balance; the caller works too.
 *
 * A job is done when its tasks are done, not when every worker has looked at
 * it: a worker that is off the CPU (another process took its core) or asleep
 * holds the caller up only for a task it has claimed. That matters where the
 * pool shares its cores with a busy neighbour (Ray's own processes in a
 * replica): waiting for every worker to check in made each of a step's jobs
 * wait out the neighbour's time slice.
 *
 * `next` packs the job's generation (high 32 bits) with the next task index;
 * a claim is a compare-and-swap that names the generation, so a worker late
 * from an old job can never take a task of a new one. While the caller writes
 * a new job's function and size, the index reads CLOSED (no claim succeeds).
 * The few atomics a job publishes are sequentially consistent: a worker that
 * read the new job's fields cannot then claim under the old generation.
 *
 * Waking the sleepers never waits long for the mutex (wake_sleepers): a
 * worker holding it, on its way into or out of its wait, may be off its core,
 * and no job needs a worker.
 */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#define SPIN_ITERS 2048 /* ~20-60 us: long spins starve other replicas' threads on a busy machine */
#define CLOSED 0xffffffffu /* task index while a job is being published */
#define WAKE_TRIES 64      /* tries for the mutex before a job goes without its sleepers */

struct qw_pool {
    int n_threads; /* including the caller */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    _Atomic(qw_task_fn) fn; /* the current job */
    _Atomic(void *) arg;
    atomic_int n_tasks;
    atomic_uint_fast64_t next; /* generation << 32 | next task index */
    atomic_int done;           /* tasks of the current job that have returned */
    atomic_int sleepers;       /* workers waiting on `wake` */
    atomic_int quit;
};

static uint32_t gen_of(uint64_t v) { return (uint32_t)(v >> 32); }
static uint32_t index_of(uint64_t v) { return (uint32_t)v; }

/* Runs tasks of job `gen` until none is left to claim. */
static void work(qw_pool *p, uint32_t gen, qw_task_fn fn, void *arg, int n_tasks) {
    uint64_t v = atomic_load(&p->next);
    for (;;) {
        if (gen_of(v) != gen || index_of(v) >= (uint32_t)n_tasks) return; /* CLOSED >= any n */
        if (!atomic_compare_exchange_weak(&p->next, &v, v + 1)) continue;
        fn(arg, (int)index_of(v));
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
        v = atomic_load(&p->next);
    }
}

static void *worker(void *arg) {
    qw_pool *p = arg;
    uint32_t seen = 0;
    for (;;) {
        uint64_t v;
        int spins = 0;
        while (((v = atomic_load(&p->next)), gen_of(v) == seen || index_of(v) == CLOSED) && !atomic_load(&p->quit)) {
            if (++spins < SPIN_ITERS) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1); /* then look again: the caller looks at sleepers after publishing */
            while (gen_of(atomic_load(&p->next)) == seen && !atomic_load(&p->quit))
                pthread_cond_wait(&p->wake, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
            spins = 0;
        }
        if (atomic_load(&p->quit)) break;
        seen = gen_of(v);
        work(p, seen, atomic_load(&p->fn), atomic_load(&p->arg), atomic_load(&p->n_tasks));
    }
    return NULL;
}

qw_pool *qw_pool_create(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    qw_pool *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    p->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!p->threads) { free(p); return NULL; }
    for (int t = 1; t < n_threads; t++) {
        if (pthread_create(&p->threads[t], NULL, worker, p) != 0) {
            p->n_threads = t; /* run with what started */
            break;
        }
    }
    return p;
}

void qw_pool_free(qw_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->quit, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int t = 1; t < p->n_threads; t++) pthread_join(p->threads[t], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    free(p->threads);
    free(p);
}

/* Wakes the sleeping workers for a new job. The mutex is held only by a worker between deciding to
 * sleep and waiting (or waking and leaving), but that worker may be off its core for a time slice
 * (or, in test_pool, held in a signal handler): rather than wait for it, the job goes without the
 * sleepers after WAKE_TRIES tries (the caller runs what nobody claims; a worker that misses a wake
 * sleeps until the next job's). A worker that took the mutex before this job was published looks
 * at the generation again under it, so it does not sleep through the job unless it had already
 * looked. */
static void wake_sleepers(qw_pool *p) {
    for (int tries = 0; tries < WAKE_TRIES; tries++) {
        if (pthread_mutex_trylock(&p->mu) == 0) {
            pthread_cond_broadcast(&p->wake);
            pthread_mutex_unlock(&p->mu);
            return;
        }
        cpu_relax();
    }
}

void qw_pool_run(qw_pool *p, int n_tasks, qw_task_fn fn, void *arg) {
    if (n_tasks <= 0) return;
    if (p->n_threads == 1 || n_tasks == 1) {
        for (int i = 0; i < n_tasks; i++) fn(arg, i);
        return;
    }
    const uint32_t gen = gen_of(atomic_load(&p->next)) + 1;
    atomic_store(&p->next, (uint64_t)gen << 32 | CLOSED);
    atomic_store(&p->fn, fn);
    atomic_store(&p->arg, arg);
    atomic_store(&p->n_tasks, n_tasks);
    atomic_store(&p->done, 0);
    atomic_store(&p->next, (uint64_t)gen << 32);
    if (atomic_load(&p->sleepers) > 0) wake_sleepers(p);
    work(p, gen, fn, arg, n_tasks);
    int spins = 0;
    while (atomic_load_explicit(&p->done, memory_order_acquire) < n_tasks) {
        if (++spins < SPIN_ITERS) cpu_relax();
        else sched_yield();
    }
}

int qw_pool_threads(const qw_pool *p) { return p->n_threads; }
