/*
 * Thread pool — persistent workers per context. A decode step launches a
 * few hundred small jobs, so workers spin briefly on the job counter before
 * they sleep, and the caller spins for completion. Tasks are handed out
 * through an atomic counter so uneven tasks balance; the caller works too.
 */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#define SPIN_ITERS 2048 /* ~20-60 us: long spins starve other replicas' threads on a busy machine */

struct qw_pool {
    int n_threads; /* including the caller */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    /* current job, published by bumping generation */
    qw_task_fn fn;
    void *arg;
    int n_tasks;
    atomic_int next;
    atomic_int active; /* workers still inside the current job */
    atomic_ulong generation;
    atomic_int quit;
};

static void work(qw_pool *p) {
    for (;;) {
        int i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= p->n_tasks) break;
        p->fn(p->arg, i);
    }
}

static void *worker(void *arg) {
    qw_pool *p = arg;
    unsigned long seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&p->generation, memory_order_acquire) == seen &&
               !atomic_load(&p->quit)) {
            if (++spins < SPIN_ITERS) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            while (atomic_load(&p->generation) == seen && !atomic_load(&p->quit))
                pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->quit)) break;
        seen = atomic_load_explicit(&p->generation, memory_order_acquire);
        work(p);
        atomic_fetch_sub_explicit(&p->active, 1, memory_order_release);
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

void qw_pool_run(qw_pool *p, int n_tasks, qw_task_fn fn, void *arg) {
    if (n_tasks <= 0) return;
    if (p->n_threads == 1 || n_tasks == 1) {
        for (int i = 0; i < n_tasks; i++) fn(arg, i);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->active, p->n_threads - 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    work(p);
    int spins = 0;
    while (atomic_load_explicit(&p->active, memory_order_acquire) > 0) {
        if (++spins < SPIN_ITERS) cpu_relax();
        else sched_yield();
    }
}

int qw_pool_threads(const qw_pool *p) { return p->n_threads; }
