/* common.c — errors, allocation, whole writes and the monotonic clock shared by the whole library (dtypes: dtype.c). */
#include "common.h"

#include <sys/stat.h>
#include <errno.h>
#include <unistd.h>

#include <stdatomic.h>
#include <time.h>

/* Control characters (from file names, tensor names, JSON tokens) become spaces, so that a
   message stays one line whatever the input held. */
static void one_line(char *msg) {
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = ' ';
}

sdc_status sdc_fail(sdc_err *e, sdc_status code, const char *fmt, ...) {
    if (e && e->code == SDC_OK) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        one_line(e->msg);
        e->code = code;
    }
    return code;
}

void sdc_err_prefix(sdc_err *e, const char *fmt, ...) {
    if (!e || e->code == SDC_OK) return;
    char prefix[512], old[sizeof e->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    snprintf(e->msg, sizeof e->msg, "%s%s", prefix, old);
    one_line(e->msg);
}

void sdc_logv(sdc_log_fn log, void *user, sdc_log_level level, const char *fmt, va_list ap) {
    if (!log) return;
    char line[1200];
    vsnprintf(line, sizeof line, fmt, ap);
    one_line(line);
    log(user, level, line);
}

_Noreturn void sdc_assert_fail(const char *file, int line, const char *expr) {
    fprintf(stderr, "sdcoreml: internal error: %s:%d: assertion failed: %s\n", file, line, expr);
    abort();
}

/* Fault injection: allocations left before the one that fails (0: disarmed), and how many were
   made while armed. Atomic because the interpreter's worker threads allocate too; a disarmed
   allocation costs one relaxed load and one branch. */
static atomic_long alloc_fail_left, alloc_counted;

void sdc_alloc_fail_at(long n) {
    atomic_store(&alloc_counted, 0);
    atomic_store(&alloc_fail_left, n > 0 ? n : 0);
}

long sdc_alloc_count(void) { return atomic_load(&alloc_counted); }

/* Counts one allocation; true for the one chosen to fail, which disarms the countdown. */
static bool armed_allocation_fails(void) {
    long left = atomic_load_explicit(&alloc_fail_left, memory_order_relaxed);
    while (left > 0) {
        if (atomic_compare_exchange_weak(&alloc_fail_left, &left, left - 1)) {
            atomic_fetch_add(&alloc_counted, 1);
            return left == 1;
        }
    }
    return false;
}

bool sdc_alloc_injected_failure(void) {
    return atomic_load_explicit(&alloc_fail_left, memory_order_relaxed) && armed_allocation_fails();
}

void *sdc_malloc(size_t n) { return sdc_alloc_injected_failure() ? NULL : malloc(n ? n : 1); }
void *sdc_calloc(size_t count, size_t size) {
    return sdc_alloc_injected_failure() ? NULL : calloc(count ? count : 1, size ? size : 1);
}
void *sdc_realloc(void *p, size_t n) { return sdc_alloc_injected_failure() ? NULL : realloc(p, n ? n : 1); }
void sdc_free(void *p) { free(p); }
char *sdc_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = sdc_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

bool sdc_path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

bool sdc_write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        c += w;
        n -= (size_t)w;
    }
    return true;
}

bool sdc_fmt(char *buf, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n >= 0 && (size_t)n < size;
}

const char *sdc_shape_str(const int64_t *shape, int rank, char *buf, size_t size) {
    size_t used = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < rank && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (used < size) snprintf(buf + used, size - used, "]");
    return buf;
}

const char *sdc_status_str(sdc_status s) {
    switch (s) {
    case SDC_OK: return "ok";
    case SDC_E_IO: return "I/O error";
    case SDC_E_FORMAT: return "malformed input";
    case SDC_E_NOMEM: return "out of memory";
    case SDC_E_UNSUPPORTED: return "not supported";
    case SDC_E_NOTFOUND: return "not found";
    case SDC_E_ARG: return "invalid argument";
    case SDC_E_CHECK: return "correctness check failed";
    case SDC_E_INTERNAL: return "internal error";
    }
    return "unknown status";
}

const char *sdc_version(void) { return SDC_VERSION_STRING; }

double sdc_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
