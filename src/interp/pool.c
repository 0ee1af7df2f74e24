/* pool.c — a fixed pthread pool for data-parallel loops (sdc_ipool_for). The caller takes part in
   the work. Between loops a worker watches for the next one for SPIN_SECONDS, then sleeps on a
   condition variable; the caller watches for its loop's last chunk as long before it sleeps.
   Waking a sleeping thread costs tens of microseconds (more in a VM, whose idle vCPU must be
   woken by its host), and a text encoder runs one loop every ~0.2 ms: with sleeps only, its 72
   products ran at 262 GFLOP/s on 2 threads, with the watching at 290. OpenBLAS's own threads do
   not compete: each BLAS call runs on one pool thread, and they are stopped
   (sdc_igemm_set_threads). With more threads than cores (--threads), the watching costs at
   most SPIN_SECONDS a loop. */
#include "interp/interp.h"

#include <pthread.h>
#include <stdatomic.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

/* How long a thread watches before it sleeps: long enough to span one op's serial work
   between two loops, short enough that an idle pool gives its core back at once. */
#define SPIN_SECONDS 100e-6

struct ipool {
    int n; /* threads including the caller */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    _Atomic uint64_t generation; /* written under mu; read without it while watching */
    bool quit;
    /* the current loop */
    void (*fn)(void *, size_t, size_t);
    void *ctx;
    size_t total, chunk;
    int n_chunks;
    atomic_int next;
    _Atomic int finished; /* chunks done, written under mu */
    _Atomic int active;   /* workers inside run_chunks, written under mu: the loop's state is only
                             reset when none is, so no worker ever sees a half-written loop */
};

static int run_chunks(ipool *p) {
    int done = 0;
    for (;;) {
        int c = atomic_fetch_add(&p->next, 1);
        if (c >= p->n_chunks) break;
        size_t b = (size_t)c * p->chunk, e = b + p->chunk;
        if (e > p->total) e = p->total;
        p->fn(p->ctx, b, e);
        done++;
    }
    return done;
}

/* Watches (without the lock) until done(p) holds or SPIN_SECONDS pass; the caller then checks
   again under the lock, so this only saves a sleep, never decides. */
static void watch(const ipool *p, bool (*done)(const ipool *, uint64_t), uint64_t arg) {
    double t0 = sdc_now_seconds();
    for (unsigned i = 1; !done(p, arg); i++) {
        cpu_relax();
        if (i % 64 == 0 && sdc_now_seconds() - t0 > SPIN_SECONDS) return;
    }
}

static bool new_loop(const ipool *p, uint64_t seen) { return atomic_load(&p->generation) != seen; }

/* all of the loop's chunks done once the caller adds its own `mine` */
static bool loop_done(const ipool *p, uint64_t mine) {
    return (uint64_t)atomic_load(&p->finished) + mine >= (uint64_t)p->n_chunks && atomic_load(&p->active) == 0;
}

static void *worker(void *arg) {
    ipool *p = arg;
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        if (!p->quit && p->generation == seen) {
            pthread_mutex_unlock(&p->mu);
            watch(p, new_loop, seen);
            pthread_mutex_lock(&p->mu);
        }
        while (!p->quit && p->generation == seen) pthread_cond_wait(&p->wake, &p->mu);
        if (p->quit) break;
        seen = p->generation;
        p->active++;
        pthread_mutex_unlock(&p->mu);
        int done = run_chunks(p);
        pthread_mutex_lock(&p->mu);
        p->finished += done;
        p->active--;
        if (p->finished == p->n_chunks && p->active == 0) pthread_cond_broadcast(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

ipool *sdc_ipool_new(int n_threads) {
    ipool *p = sdc_calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = n_threads < 1 ? 1 : n_threads > 256 ? 256 : n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    if (p->n > 1) {
        p->threads = sdc_calloc((size_t)p->n - 1, sizeof *p->threads);
        if (!p->threads) {
            p->n = 1;
            return p;
        }
        for (int i = 0; i < p->n - 1; i++) {
            if (pthread_create(&p->threads[i], NULL, worker, p) != 0) {
                p->n = i + 1; /* run with the threads we got */
                break;
            }
        }
    }
    return p;
}

void sdc_ipool_free(ipool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = true;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n - 1; i++) pthread_join(p->threads[i], NULL);
    sdc_free(p->threads);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    sdc_free(p);
}

int sdc_ipool_size(const ipool *p) { return p ? p->n : 1; }

void sdc_ipool_for(ipool *p, size_t n, size_t grain, void (*fn)(void *ctx, size_t begin, size_t end), void *ctx) {
    if (n == 0) return;
    if (grain < 1) grain = 1;
    size_t max_chunks = n / grain;
    if (!p || p->n <= 1 || max_chunks <= 1) {
        fn(ctx, 0, n);
        return;
    }
    /* a few chunks per thread for balance */
    size_t want = (size_t)p->n * 4;
    if (want > max_chunks) want = max_chunks;
    size_t chunk = (n + want - 1) / want;
    pthread_mutex_lock(&p->mu);
    while (p->active > 0) pthread_cond_wait(&p->done, &p->mu); /* a late worker of the last loop */
    p->fn = fn;
    p->ctx = ctx;
    p->total = n;
    p->chunk = chunk;
    p->n_chunks = (int)((n + chunk - 1) / chunk);
    atomic_store(&p->next, 0);
    p->finished = 0;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    int done = run_chunks(p);
    watch(p, loop_done, (uint64_t)done);
    pthread_mutex_lock(&p->mu);
    p->finished += done;
    while (p->finished < p->n_chunks || p->active > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
