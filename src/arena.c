/* arena.c — blocks of at least 1 MiB, each allocation rounded up to 16 bytes. */
#include "arena.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

struct sdc_arena_block {
    sdc_arena_block *next;
    size_t size, used;
    _Alignas(16) unsigned char data[];
};

enum { ARENA_MIN_BLOCK = 1 << 20 };

void sdc_arena_init(sdc_arena *a) { memset(a, 0, sizeof *a); }

void sdc_arena_free(sdc_arena *a) {
    sdc_arena_block *b = a->head;
    while (b) {
        sdc_arena_block *next = b->next;
        sdc_free(b);
        b = next;
    }
    a->head = NULL;
}

void *sdc_arena_alloc(sdc_arena *a, size_t n) {
    if (sdc_alloc_injected_failure()) return NULL; /* as when this one needed a block and got none */
    n = (n + 15) & ~(size_t)15;
    sdc_arena_block *b = a->head;
    if (!b || b->size - b->used < n) {
        size_t size = n > ARENA_MIN_BLOCK ? n : ARENA_MIN_BLOCK;
        b = sdc_malloc(sizeof *b + size);
        if (!b) return NULL;
        b->size = size;
        b->used = 0;
        b->next = a->head;
        a->head = b;
    }
    void *p = b->data + b->used;
    b->used += n;
    a->used_total += n;
    memset(p, 0, n);
    return p;
}

char *sdc_arena_strdup(sdc_arena *a, const char *s) {
    size_t n = strlen(s) + 1;
    char *d = sdc_arena_alloc(a, n);
    if (d) memcpy(d, s, n);
    return d;
}

char *sdc_arena_printf(sdc_arena *a, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return NULL;
    char *d = sdc_arena_alloc(a, (size_t)n + 1);
    if (!d) return NULL;
    va_start(ap, fmt);
    vsnprintf(d, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return d;
}
