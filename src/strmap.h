/*
 * strmap.h — the library's one string hash table: string → int, open addressing, keys borrowed
 * (they live in an arena that outlives the map). Graph value names (mil/graph.c: MIL wants them
 * unique) and the interpreter's name → slot lookup (interp/load.c) both use it.
 */
#ifndef SDC_STRMAP_H
#define SDC_STRMAP_H

#include <stdbool.h>
#include <stddef.h>

typedef struct sdc_strmap {
    size_t cap, count; /* cap: 0 or a power of two, at least twice count */
    const char **keys;
    int *vals;
} sdc_strmap;

/* The value of `key`, or -1 when it is absent. */
int sdc_strmap_get(const sdc_strmap *m, const char *key);
/* Adds `key` (not present yet; borrowed) with `val`; false when out of memory. */
bool sdc_strmap_put(sdc_strmap *m, const char *key, int val);
/* Adds `key` (borrowed) with `val`, or gives the key already there `val`; false when out of memory. */
bool sdc_strmap_set(sdc_strmap *m, const char *key, int val);
/* Frees the table (not the keys); the map is empty and usable again. */
void sdc_strmap_clear(sdc_strmap *m);

#endif
