/* strmap.c — FNV-1a hashing, linear probing, grown at half full. */
#include "strmap.h"

#include "common.h"

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* The slot holding `key`, or SIZE_MAX when it is absent. */
static size_t find(const sdc_strmap *m, const char *key) {
    if (!m->cap) return SIZE_MAX;
    for (size_t i = hash_str(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (!m->keys[i]) return SIZE_MAX;
        if (!strcmp(m->keys[i], key)) return i;
    }
}

int sdc_strmap_get(const sdc_strmap *m, const char *key) {
    size_t i = find(m, key);
    return i == SIZE_MAX ? -1 : m->vals[i];
}

static void insert(const char **keys, int *vals, size_t cap, const char *key, int val) {
    size_t i = hash_str(key) & (cap - 1);
    while (keys[i]) i = (i + 1) & (cap - 1);
    keys[i] = key;
    vals[i] = val;
}

static bool grow(sdc_strmap *m) {
    size_t cap = m->cap ? m->cap * 2 : 256;
    const char **keys = sdc_calloc(cap, sizeof *keys);
    int *vals = sdc_calloc(cap, sizeof *vals);
    if (!keys || !vals) {
        sdc_free(keys);
        sdc_free(vals);
        return false;
    }
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i]) insert(keys, vals, cap, m->keys[i], m->vals[i]);
    sdc_free(m->keys);
    sdc_free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    return true;
}

bool sdc_strmap_put(sdc_strmap *m, const char *key, int val) {
    if ((m->count + 1) * 2 > m->cap && !grow(m)) return false;
    insert(m->keys, m->vals, m->cap, key, val);
    m->count++;
    return true;
}

bool sdc_strmap_set(sdc_strmap *m, const char *key, int val) {
    size_t i = find(m, key);
    if (i == SIZE_MAX) return sdc_strmap_put(m, key, val);
    m->vals[i] = val;
    return true;
}

void sdc_strmap_clear(sdc_strmap *m) {
    sdc_free(m->keys);
    sdc_free(m->vals);
    m->keys = NULL;
    m->vals = NULL;
    m->cap = m->count = 0;
}
