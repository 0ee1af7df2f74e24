/*
 * arena.h — bump allocator, the library's one. A graph and everything it names (vars, ops,
 * shapes, strings, small constant values) live in one arena and are freed together, as in
 * ggml's context; so does a loaded interpreter program (slots, ops, parameters, names).
 */
#ifndef SDC_ARENA_H
#define SDC_ARENA_H

#include <stddef.h>

typedef struct sdc_arena_block sdc_arena_block;
typedef struct sdc_arena {
    sdc_arena_block *head;
    size_t used_total; /* bytes handed out, for statistics */
} sdc_arena;

void sdc_arena_init(sdc_arena *a);
void sdc_arena_free(sdc_arena *a);
/* Zeroed, 16-byte aligned memory; NULL when out of memory. */
void *sdc_arena_alloc(sdc_arena *a, size_t n);
char *sdc_arena_strdup(sdc_arena *a, const char *s);
char *sdc_arena_printf(sdc_arena *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
