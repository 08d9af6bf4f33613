/*
 * Thread pool — one per context. qw_pool_run(pool, n, fn, arg) calls
 * fn(arg, i) for every i in [0, n) on the pool's threads and the caller's,
 * and returns when all are done.
 */
#ifndef QWEN_THREADPOOL_H
#define QWEN_THREADPOOL_H

typedef struct qw_pool qw_pool;
typedef void (*qw_task_fn)(void *arg, int i);

qw_pool *qw_pool_create(int n_threads);
void qw_pool_free(qw_pool *p);
void qw_pool_run(qw_pool *p, int n_tasks, qw_task_fn fn, void *arg);
int qw_pool_threads(const qw_pool *p);

#endif
