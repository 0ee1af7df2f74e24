/* config_keys.c — see config_keys.h. */
#include "source/config_keys.h"

#include <math.h>
#include <stdlib.h>

/* 1 and 1.0 are the same value to Python, which reads these configs. */
static bool same_value(const json_t *a, const json_t *b) {
    if (json_is_number(a) && json_is_number(b)) return json_number_value(a) == json_number_value(b);
    if (json_is_boolean(a) || json_is_boolean(b)) return json_typeof(a) == json_typeof(b);
    return json_equal(a, b);
}

static bool one_type(const char *word, size_t len, const json_t *v) {
#define IS(w) (len == sizeof(w) - 1 && !strncmp(word, w, len))
    if (IS("any")) return true;
    if (IS("int")) return json_is_integer(v);
    if (IS("number")) return json_is_number(v);
    if (IS("bool")) return json_is_boolean(v);
    if (IS("string")) return json_is_string(v);
    if (IS("list")) return json_is_array(v);
    if (IS("object")) return json_is_object(v);
#undef IS
    return false; /* a typo in a table refuses, never accepts */
}

static bool type_accepts(const char *accept, const json_t *v) {
    size_t n = strlen(accept);
    bool nullable = n && accept[n - 1] == '?';
    if (json_is_null(v)) return nullable;
    if (nullable) n--;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && accept[j] != '|') j++;
        if (one_type(accept + i, j - i, v)) return true;
        i = j + 1;
    }
    return false;
}

static bool literal_accepts(const char *accept, const json_t *v) {
    json_t *list = json_loads(accept, JSON_DECODE_ANY, NULL);
    bool ok = false;
    for (size_t i = 0; json_is_array(list) && i < json_array_size(list) && !ok; i++)
        ok = same_value(json_array_get(list, i), v);
    json_decref(list);
    return ok;
}

static bool matches(const char *spec, const json_t *v) {
    if (!spec) return false;
    return spec[0] == '[' ? literal_accepts(spec, v) : type_accepts(spec, v);
}

static bool accepts(const sdc_config_key *k, const json_t *v) {
    return k->status == SDC_KEY_NO_EFFECT || matches(k->accept ? k->accept : "any", v);
}

/* The value as compact JSON, shortened for a one-line message. */
static void describe_value(const json_t *v, char *buf, size_t size) {
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s) {
        snprintf(buf, size, "(a value)");
        return;
    }
    if (strlen(s) > 60)
        snprintf(buf, size, "%.57s...", s);
    else
        snprintf(buf, size, "%s", s);
    free(s);
}

const sdc_config_key *sdc_config_find(const sdc_config_table *const *tables, size_t n_tables,
                                      const char *key, const sdc_config_table **table) {
    for (size_t t = 0; t < n_tables; t++)
        for (size_t i = 0; i < tables[t]->n; i++)
            if (!strcmp(tables[t]->keys[i].name, key)) {
                if (table) *table = tables[t];
                return &tables[t]->keys[i];
            }
    return NULL;
}

static void add_note(sdc_config_notes *notes, const char *fmt, const char *where, const char *key,
                     const char *value, const char *why) {
    if (!notes || notes->n < 0 || notes->n >= SDC_CONFIG_MAX_NOTES) return;
    snprintf(notes->line[notes->n++], sizeof notes->line[0], fmt, where, key, value, why);
}

sdc_status sdc_config_check(const sdc_component *c, const json_t *obj, const char *where,
                            const sdc_config_table *const *tables, size_t n_tables,
                            sdc_config_notes *notes, sdc_err *err) {
    char at[4200];
    if (where && *where)
        snprintf(at, sizeof at, "%s: %s", c->config_path, where);
    else
        snprintf(at, sizeof at, "%s", c->config_path);
    const char *key;
    const json_t *v;
    char value[80];
    json_object_foreach((json_t *)obj, key, v) {
        if (key[0] == '_') continue;
        const sdc_config_table *t = NULL;
        const sdc_config_key *k = sdc_config_find(tables, n_tables, key, &t);
        describe_value(v, value, sizeof value);
        if (!k)
            return sdc_fail(err, SDC_E_UNSUPPORTED,
                            "%s: '%s' = %s is not supported (not a key of %s this converter knows)", at,
                            key, value, n_tables ? tables[0]->name : "this model");
        if (t->ignored_here || accepts(k, v)) continue;
        if (k->status == SDC_KEY_DROPPED && matches(k->dropped, v)) {
            add_note(notes, "%s: '%s' = %s: %s", at, key, value, k->why);
            continue;
        }
        if (k->accept && k->accept[0] != '[') /* a typed key holding another type */
            return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: '%s' = %s is not supported (must be %s)", at, key,
                            value, k->accept);
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: '%s' = %s is not supported (%s; accepted: %s)", at, key,
                        value, k->why, k->accept);
    }
    return SDC_OK;
}
