/*
 * common.h — what every translation unit of the library shares: errors, allocation,
 * asserts, small helpers. Internal; not installed.
 */
#ifndef SDC_COMMON_H
#define SDC_COMMON_H

#include "sdcoreml.h"

#include "dtype.h" /* sdc_dtype and the table of element types */

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An error being built: a status plus one line naming the file and the tensor or field. */
typedef struct sdc_err {
    sdc_status code;
    char msg[1024];
} sdc_err;

/* Records the first error (later ones keep the first message) and returns its code. The
   message is kept on one line: control characters from names in it become spaces. */
sdc_status sdc_fail(sdc_err *e, sdc_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prefixes an existing message, e.g. with the component being converted. */
void sdc_err_prefix(sdc_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Formats one log line and hands it to `log` (nothing when log is NULL): the library's one
   way out for words, since it never prints. */
void sdc_logv(sdc_log_fn log, void *user, sdc_log_level level, const char *fmt, va_list ap);

/* Asserts are for our own bugs only, never for file contents. */
#define SDC_ASSERT(x)                                                                      \
    do {                                                                                   \
        if (!(x)) sdc_assert_fail(__FILE__, __LINE__, #x);                                 \
    } while (0)
_Noreturn void sdc_assert_fail(const char *file, int line, const char *expr);

/* One allocation path so tests can count and fail allocations. */
void *sdc_malloc(size_t n);
void *sdc_calloc(size_t count, size_t size);
void *sdc_realloc(void *p, size_t n);
void sdc_free(void *p);
char *sdc_strdup(const char *s);

/* Test-only fault injection (tests/unit/test_faults.c): the nth allocation through the
   functions above from now on returns NULL (n = 1: the next one); n <= 0 disarms. Only that
   one fails — the failure is one-shot, so what runs after it (cleanup, messages) allocates
   normally. sdc_alloc_count gives how many allocations (arena ones included) were made since the
   last call of sdc_alloc_fail_at while armed (arm with a huge n to count a whole run). */
void sdc_alloc_fail_at(long n);
long sdc_alloc_count(void);
/* The injection point itself, for allocators built on sdc_malloc (the arena: its every
   allocation can be the one that needs a new block). Counts one allocation. */
bool sdc_alloc_injected_failure(void);

/* Overflow-checked arithmetic for sizes computed from untrusted files. */
static inline bool sdc_mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool sdc_add_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

/* The little-endian unsigned integer of nbytes (<= 8) bytes at p, assembled byte by byte: safe
   on unaligned data and independent of the host's byte order (file formats are little-endian). */
static inline uint64_t sdc_load_le(const uint8_t *p, size_t nbytes) {
    uint64_t v = 0;
    for (size_t i = nbytes; i-- > 0;) v = (v << 8) | p[i];
    return v;
}

#define SDC_MAX_RANK 8
#define SDC_COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))


/* A shape for messages, "[1, 77, 768]"; truncated quietly when it does not fit. Returns buf. */
const char *sdc_shape_str(const int64_t *shape, int rank, char *buf, size_t size);

/* Seconds on the monotonic clock: the library's one clock, for the stage times it reports.
   Not public: the CLI, a separate link unit, has its own (sdc_cli_now in cli/progress.c). */
double sdc_now_seconds(void);

/* Whether anything (file, folder, link target) exists at `path`. */
bool sdc_path_exists(const char *path);
/* write(2) until all n bytes of p are written, again after EINTR and after a short write; false
   on an error (errno says which) or when nothing could be written (errno 0 then unless set). */
bool sdc_write_all(int fd, const void *p, size_t n);

/* snprintf into a fixed buffer; returns false when it did not fit. */
bool sdc_fmt(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
