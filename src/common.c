/* common.c — errors, allocation and dtype tables shared by the whole library. */
#include "common.h"

/* Messages quote names and text from untrusted files (a .npy dict key, a protobuf string, a
   manifest path); blanking control characters keeps every message on one line. */
static void blank_controls(char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) *s = ' ';
}

sdc_status sdc_fail(sdc_err *e, sdc_status code, const char *fmt, ...) {
    if (e && e->code == SDC_OK) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        blank_controls(e->msg);
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
    blank_controls(e->msg);
}

_Noreturn void sdc_assert_fail(const char *file, int line, const char *expr) {
    fprintf(stderr, "sdcoreml: internal error: %s:%d: assertion failed: %s\n", file, line, expr);
    abort();
}

void *sdc_malloc(size_t n) { return malloc(n ? n : 1); }
void *sdc_calloc(size_t count, size_t size) { return calloc(count ? count : 1, size ? size : 1); }
void *sdc_realloc(void *p, size_t n) { return realloc(p, n ? n : 1); }
void sdc_free(void *p) { free(p); }
char *sdc_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = sdc_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

bool sdc_fmt(char *buf, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n >= 0 && (size_t)n < size;
}

size_t sdc_dtype_size(sdc_dtype t) {
    switch (t) {
    case SDC_DT_F64: case SDC_DT_I64: case SDC_DT_U64: return 8;
    case SDC_DT_F32: case SDC_DT_I32: case SDC_DT_U32: return 4;
    case SDC_DT_F16: case SDC_DT_BF16: case SDC_DT_I16: case SDC_DT_U16: return 2;
    case SDC_DT_I8: case SDC_DT_U8: case SDC_DT_BOOL: return 1;
    default: return 0;
    }
}

const char *sdc_dtype_name(sdc_dtype t) {
    switch (t) {
    case SDC_DT_F32: return "F32";
    case SDC_DT_F16: return "F16";
    case SDC_DT_BF16: return "BF16";
    case SDC_DT_F64: return "F64";
    case SDC_DT_I64: return "I64";
    case SDC_DT_I32: return "I32";
    case SDC_DT_I16: return "I16";
    case SDC_DT_I8: return "I8";
    case SDC_DT_U8: return "U8";
    case SDC_DT_BOOL: return "BOOL";
    case SDC_DT_U16: return "U16";
    case SDC_DT_U32: return "U32";
    case SDC_DT_U64: return "U64";
    case SDC_DT_STRING: return "STRING";
    default: return "INVALID";
    }
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
