/*
 * config_keys.h — fail closed on model configs: every key of a config.json is looked up in
 * its class's table (nets/config_tables.c) and is either implemented for the values the
 * builder computes, without effect on the graph, dropped as the anchor drops it (warned), or
 * refused. A key no table knows, or a value outside the accepted set, is refused with one
 * line naming the file, the key and the value. JSON null is a value like any other.
 */
#ifndef SDC_CONFIG_KEYS_H
#define SDC_CONFIG_KEYS_H

#include "source/source.h"

typedef enum sdc_key_status {
    SDC_KEY_IMPLEMENTED, /* the builder computes what the class computes, for the accepted values */
    SDC_KEY_NO_EFFECT,   /* any value: it changes nothing the package computes (why says why) */
    SDC_KEY_DROPPED,     /* accepted values compute fully; `dropped` values are accepted but the
                            package leaves that part out, as the anchor does: one warning line */
    SDC_KEY_REFUSED,     /* only the accepted values (those that switch the feature off) convert */
} sdc_key_status;

/*
 * `accept` is either a JSON array of the accepted literal values ("[null, \"silu\"]"; 1 and
 * 1.0 are equal), or types joined by '|': int, number, bool, string, list, object, any; a
 * trailing '?' also accepts null. Builders range-check the values of typed keys they read.
 */
typedef struct sdc_config_key {
    const char *name;
    sdc_key_status status;
    const char *accept;
    const char *why;
    const char *dropped; /* SDC_KEY_DROPPED only: the values accepted and left out, same syntax */
} sdc_config_key;

typedef struct sdc_config_table {
    const char *name; /* the class, for messages: "UNet2DConditionModel" */
    const sdc_config_key *keys;
    size_t n;
    /* The rows are of another class that shares the file format: the class read here ignores
       them, as diffusers ignores config keys its constructor does not take. */
    bool ignored_here;
} sdc_config_table;

/* Warning lines for dropped features, for the converter to log. */
enum { SDC_CONFIG_MAX_NOTES = 4 };
typedef struct sdc_config_notes {
    int n;
    char line[SDC_CONFIG_MAX_NOTES][400];
} sdc_config_notes;

/*
 * Checks every key of `obj` (c's config, or an object inside it named by `where`, e.g.
 * "vision_config") against `tables`, first match wins. Keys starting with '_' are metadata
 * both libraries strip before building (_class_name, _diffusers_version, _name_or_path, ...).
 * notes may be NULL when no table has dropped rows.
 */
sdc_status sdc_config_check(const sdc_component *c, const json_t *obj, const char *where,
                            const sdc_config_table *const *tables, size_t n_tables,
                            sdc_config_notes *notes, sdc_err *err);

/* The row for `key`, or NULL (tests and documentation). */
const sdc_config_key *sdc_config_find(const sdc_config_table *const *tables, size_t n_tables,
                                      const char *key, const sdc_config_table **table);

#endif
