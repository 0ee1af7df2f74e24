/*
 * source.c — resolving a model name to a folder, and a component to its config and weights.
 *
 * Resolution follows diffusers' from_pretrained: an existing local folder wins, else the id is
 * looked up in the Hugging Face cache (reference/sd-architectures.md §2.2). A component's
 * weights are opened by weights.c, its small files read by files.c; a single-file checkpoint
 * (single_file.c) and --lora (lora.c) plug in here, above both.
 */
#include "source/source.h"
#include "source/files.h"

#include "hub/hub.h"
#include "source/single_file.h"
#include "source/lora.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define REF_MAX_BYTES 256u

/* ---- model resolution --------------------------------------------------------------- */

/* Reads refs/<revision>: one commit hash, used as a folder name, so it must not escape. */
static sdc_status read_ref(const char *ref_path, char *rev, size_t size, sdc_err *err) {
    char *text;
    size_t len;
    sdc_status st = sdc_read_small_file(ref_path, REF_MAX_BYTES, &text, &len, err);
    if (st) return st;
    char *b = text, *e = text + len;
    while (b < e && (*b == ' ' || *b == '\t' || *b == '\n' || *b == '\r')) b++;
    while (e > b && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r')) e--;
    *e = '\0';
    bool ok = b < e && !strchr(b, '/') && !strstr(b, "..") && strlen(b) == (size_t)(e - b);
    for (const char *p = b; ok && *p; p++) ok = (unsigned char)*p > 0x20 && *p != 0x7f;
    if (ok) ok = sdc_fmt(rev, size, "%s", b);
    if (!ok) st = sdc_fail(err, SDC_E_FORMAT, "%s: not a commit hash: '%.80s'", ref_path, b);
    sdc_free(text);
    return st;
}

static bool is_commit_hash(const char *s) {
    if (strlen(s) != 40) return false;
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f'))) return false;
    return true;
}

/* Finds the snapshot folder of a Hub id ("org/name", or "org/name@revision" for another ref
   than main, or a commit hash) in the cache. A miss is not an error here: snapshot is left
   empty and `tried` says what was looked at, so the caller can list every place in one
   message. Errors are for what was found but is broken (an unreadable ref). */
static sdc_status find_in_hub_cache(const char *spec, char *snapshot, size_t size, char *tried,
                                    size_t tried_size, sdc_err *err) {
    char cache[4096], why[128], entry[4096], ref_path[4400], rev[REF_MAX_BYTES];
    sdc_hub_id id;
    snapshot[0] = '\0';
    sdc_status st = sdc_hub_parse_id(spec, &id, err);
    if (st) return st;
    if (!sdc_hub_cache_root(cache, sizeof cache, why, sizeof why)) {
        snprintf(tried, tried_size, "no Hugging Face cache folder (%s)", why);
        return SDC_OK;
    }
    if (!sdc_fmt(entry, sizeof entry, "%s/%s", cache, id.folder))
        return sdc_fail(err, SDC_E_ARG, "cache path too long for model '%s'", spec);
    if (!sdc_is_dir(entry)) {
        snprintf(tried, tried_size, "no cache entry '%s' (%s)", entry, why);
        return SDC_OK;
    }
    if (!sdc_fmt(ref_path, sizeof ref_path, "%s/refs/%s", entry, id.revision))
        return sdc_fail(err, SDC_E_ARG, "cache path too long for model '%s'", spec);
    if (sdc_is_file(ref_path)) {
        if ((st = read_ref(ref_path, rev, sizeof rev, err))) return st;
    } else if (is_commit_hash(id.revision)) {
        snprintf(rev, sizeof rev, "%s", id.revision); /* huggingface_hub writes no ref for a hash */
    } else {
        snprintf(tried, tried_size, "cache entry '%s' has no refs/%s (%s)", entry, id.revision, why);
        return SDC_OK;
    }
    if (!sdc_fmt(snapshot, size, "%s/snapshots/%s", entry, rev))
        return sdc_fail(err, SDC_E_ARG, "cache path too long for model '%s'", spec);
    if (!sdc_is_dir(snapshot)) {
        snprintf(tried, tried_size, "no snapshot folder '%s' for the commit in refs/%s (%s)",
                 snapshot, id.revision, why);
        snapshot[0] = '\0';
    }
    return SDC_OK;
}

/* True when some immediate subfolder (or the folder itself) holds a config.json. */
static bool has_component_folder(const char *root) {
    char path[4200];
    if (sdc_fmt(path, sizeof path, "%s/config.json", root) && sdc_is_file(path)) return true;
    DIR *d = opendir(root);
    if (!d) return false;
    bool found = false;
    struct dirent *de;
    while (!found && (de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        found = sdc_fmt(path, sizeof path, "%s/%s/config.json", root, de->d_name) &&
                sdc_is_file(path);
    }
    closedir(d);
    return found;
}

/* With s->root set: reads model_index.json, or accepts a folder of components. */
static sdc_status open_root(sdc_source *s, sdc_err *err) {
    size_t n = strlen(s->root);
    while (n > 1 && s->root[n - 1] == '/') s->root[--n] = '\0';
    memcpy(s->config_root, s->root, n + 1);
    char index[4200];
    sdc_status st = sdc_path_join(index, sizeof index, s->root, "model_index.json", err);
    if (st) return st;
    if (sdc_entry_exists(index)) return sdc_json_load_object(index, &s->model_index, err);
    if (has_component_folder(s->root)) return SDC_OK;
    return sdc_fail(err, SDC_E_NOTFOUND,
                    "model '%s': folder '%s' holds neither model_index.json nor a component "
                    "folder with config.json",
                    s->id, s->root);
}

/* A checkpoint file: its components come from the file, the pipeline's other files (and, with
   --config, the configs) from the config folder. */
static sdc_status open_single_file(sdc_source *s, const char *config, sdc_err *err) {
    sdc_source cfg = {0};
    sdc_status st = SDC_OK;
    if (!sdc_fmt(s->root, sizeof s->root, "%s", s->id))
        return sdc_fail(err, SDC_E_ARG, "model path too long: '%.80s...'", s->id);
    if (config && (st = sdc_source_open(config, &cfg, err))) {
        sdc_err_prefix(err, "--config: ");
        return st;
    }
    if (config && cfg.single)
        st = sdc_fail(err, SDC_E_ARG, "--config %s: a folder or Hub id with the model's diffusers configs, not a file", config);
    if (!st) st = sdc_single_file_open(s->id, config ? cfg.root : NULL, &s->single, err);
    if (!st && config) {
        snprintf(s->config_root, sizeof s->config_root, "%s", cfg.root);
        s->model_index = json_incref(cfg.model_index);
    }
    if (!st && !s->model_index) s->model_index = json_deep_copy(sdc_single_file_model_index(s->single));
    sdc_source_close(&cfg);
    return st;
}

bool sdc_source_output_name(const char *model_version, char *out, size_t size) {
    if (sdc_single_file_is(model_version)) return sdc_single_file_stem(model_version, out, size);
    size_t n = strlen(model_version);
    while (n > 1 && model_version[n - 1] == '/') n--; /* "tiny/" names the same as "tiny" */
    if (!sdc_fmt(out, size, "%.*s", (int)n, model_version)) return false;
    for (char *p = out; *p; p++)
        if (*p == '/') *p = '_';
    return true;
}

sdc_status sdc_source_open(const char *model_version, sdc_source *out, sdc_err *err) {
    return sdc_source_open_config(model_version, NULL, out, err);
}

sdc_status sdc_source_open_config(const char *model_version, const char *config, sdc_source *out, sdc_err *err) {
    memset(out, 0, sizeof *out);
    if (!model_version || !model_version[0])
        return sdc_fail(err, SDC_E_ARG, "no model given (--model-version is empty)");
    if (!sdc_fmt(out->id, sizeof out->id, "%s", model_version))
        return sdc_fail(err, SDC_E_ARG, "model name too long: '%.80s...'", model_version);
    if (sdc_single_file_is(model_version)) {
        sdc_status st = open_single_file(out, config, err);
        if (st) sdc_source_close(out);
        return st;
    }
    if (config)
        return sdc_fail(err, SDC_E_ARG, "--config %s describes a single-file --model-version; %s is not one (a .safetensors, "
                        ".ckpt, .pt or .pth file)", config, model_version);
    if (sdc_is_dir(model_version)) {
        if (!sdc_fmt(out->root, sizeof out->root, "%s", model_version))
            return sdc_fail(err, SDC_E_ARG, "model path too long: '%.80s...'", model_version);
        return open_root(out, err);
    }
    char shown[sizeof out->id + 2];
    const char *folder = sdc_display_path(model_version, shown, sizeof shown);
    if (sdc_single_file_named(model_version) && !sdc_is_dir(model_version))
        return sdc_fail(err, SDC_E_NOTFOUND, "model file '%s' not found (%s)", folder,
                        sdc_entry_exists(model_version) ? "not a regular file" : strerror(ENOENT));
    if (sdc_is_file(model_version))
        return sdc_fail(err, SDC_E_UNSUPPORTED,
                        "model '%s': a file, but not a checkpoint sdcoreml reads (.safetensors, .ckpt, .pt, .pth)",
                        model_version);
    if (!sdc_hub_is_id(model_version))
        return sdc_fail(err, SDC_E_NOTFOUND,
                        "model '%s' not found: not a folder '%s'; not a Hub id of the form "
                        "org/name",
                        model_version, folder);
    char tried[sizeof err->msg];
    sdc_status st = find_in_hub_cache(model_version, out->root, sizeof out->root, tried,
                                      sizeof tried, err);
    if (st) return st;
    if (!out->root[0])
        return sdc_fail(err, SDC_E_NOTFOUND, "model '%s' not found: not a folder '%s'; %s%s",
                        model_version, folder, tried, sdc_hub_missing_hint());
    return open_root(out, err);
}

void sdc_source_close(sdc_source *s) {
    if (!s) return;
    json_decref(s->model_index);
    s->model_index = NULL;
    sdc_single_file_release(s->single);
    s->single = NULL;
}

/* A component is a plain subfolder name; "" names the model folder itself (a ControlNet or
   other single-model repository keeps config.json at its root). */
static bool is_component_name(const char *name) {
    return name && strlen(name) < SDC_COUNT_OF(((sdc_component *)0)->name) &&
           (!name[0] || (sdc_is_plain_file_name(name) && strcmp(name, ".") != 0));
}

static bool component_dir(const sdc_source *s, const char *component, char *buf, size_t size) {
    if (!component[0]) return sdc_fmt(buf, size, "%s", s->root);
    return sdc_fmt(buf, size, "%s/%s", s->root, component);
}

/* What no single checkpoint holds and diffusers' from_single_file(config=…) takes from the
   config folder: the safety checker. */
static bool from_config_folder(const sdc_source *s, const char *component) {
    return s->single && s->config_root[0] && component && !strcmp(component, "safety_checker");
}

/* The --config folder as a source of its own (borrowing the model index). */
static void config_folder_view(const sdc_source *s, sdc_source *v) {
    memset(v, 0, sizeof *v);
    memcpy(v->id, s->id, sizeof v->id);
    memcpy(v->root, s->config_root, sizeof v->root);
    memcpy(v->config_root, s->config_root, sizeof v->config_root);
    v->model_index = s->model_index;
    v->lora = s->lora; /* a component the single file lacks still takes the LoRAs */
}

bool sdc_source_has(const sdc_source *s, const char *component) {
    char dir[4200], config[4300];
    if (from_config_folder(s, component)) {
        sdc_source v;
        config_folder_view(s, &v);
        return sdc_source_has(&v, component);
    }
    if (s->single) return component && sdc_single_file_has(s->single, component);
    if (!is_component_name(component) || !component_dir(s, component, dir, sizeof dir))
        return false;
    if (!component[0])
        return sdc_fmt(config, sizeof config, "%s/config.json", dir) && sdc_is_file(config);
    if (s->model_index) {
        if (component[0] == '_') return false; /* _class_name, _diffusers_version */
        const json_t *entry = json_object_get(s->model_index, component);
        return json_is_array(entry) && json_array_size(entry) == 2 &&
               json_is_string(json_array_get(entry, 1));
    }
    return sdc_is_dir(dir);
}

/* ---- components --------------------------------------------------------------------- */

/* --lora: the LoRAs' merged views take the place of the tensors they update, so every lookup
   of the component hands them out (lora.h says why this is the seam). */
static void release_lora_merge(void *m) { sdc_lora_merge_close(m); }

static sdc_status merge_loras(const sdc_lora_set *set, const char *component, sdc_weights *w, sdc_err *err) {
    sdc_lora_merge *m = NULL;
    sdc_status st = sdc_lora_merge_open(set, component, w, &m, err);
    if (st || !m) return st;
    sdc_weights_keep(w, m, release_lora_merge);
    for (size_t i = 0; i < sdc_lora_merge_count(m); i++) sdc_weights_substitute(w, sdc_lora_merge_tensor(m, i));
    return SDC_OK;
}

sdc_status sdc_component_open(const sdc_source *s, const char *component, sdc_component *out,
                              sdc_err *err) {
    memset(out, 0, sizeof *out);
    if (!is_component_name(component))
        return sdc_fail(err, SDC_E_ARG, "model '%s': invalid component name '%.80s'", s->id,
                        component ? component : "(null)");
    if (from_config_folder(s, component)) {
        sdc_source v;
        config_folder_view(s, &v);
        return sdc_component_open(&v, component, out, err);
    }
    if (s->single) {
        sdc_status st = sdc_single_file_component(s->single, component, out, err);
        if (!st && s->lora) st = merge_loras(s->lora, component, out->weights, err);
        if (st) sdc_component_close(out);
        return st;
    }
    snprintf(out->name, sizeof out->name, "%s", component);
    if (!component_dir(s, component, out->dir, sizeof out->dir))
        return sdc_fail(err, SDC_E_ARG, "path too long: '%s/%s'", s->root, component);
    if (!sdc_is_dir(out->dir))
        return sdc_fail(err, SDC_E_NOTFOUND, "model '%s' has no component folder '%s'", s->id,
                        out->dir);
    sdc_status st = sdc_path_join(out->config_path, sizeof out->config_path, out->dir, "config.json",
                              err);
    if (!st && !sdc_entry_exists(out->config_path))
        st = sdc_fail(err, SDC_E_NOTFOUND, "%s: missing (every component folder needs one)",
                      out->config_path);
    if (!st) st = sdc_json_load_object(out->config_path, &out->config, err);
    if (!st) st = sdc_weights_open_folder(out->dir, &out->weights, err);
    if (!st && s->lora) st = merge_loras(s->lora, component, out->weights, err);
    if (st) sdc_component_close(out);
    return st;
}


/* A key that is absent or JSON null takes its default, as diffusers' config loading does. */
static const json_t *config_value(const sdc_component *c, const char *key) {
    const json_t *v = json_object_get(c->config, key);
    return json_is_null(v) ? NULL : v;
}

static const char *json_type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "unknown";
}

static sdc_status config_type_error(const sdc_component *c, const char *key, const char *want,
                                    const json_t *v, sdc_err *err) {
    return sdc_fail(err, SDC_E_FORMAT, "%s: key '%s' must be %s, not %s", c->config_path, key,
                    want, json_type_name(v));
}

sdc_status sdc_config_int(const sdc_component *c, const char *key, int64_t dflt, int64_t *out,
                          sdc_err *err) {
    const json_t *v = config_value(c, key);
    *out = dflt;
    if (!v) return SDC_OK;
    if (!json_is_integer(v)) return config_type_error(c, key, "an integer", v, err);
    *out = (int64_t)json_integer_value(v);
    return SDC_OK;
}

sdc_status sdc_config_double(const sdc_component *c, const char *key, double dflt, double *out,
                             sdc_err *err) {
    const json_t *v = config_value(c, key);
    *out = dflt;
    if (!v) return SDC_OK;
    if (!json_is_number(v)) return config_type_error(c, key, "a number", v, err);
    *out = json_number_value(v);
    return SDC_OK;
}

sdc_status sdc_config_string(const sdc_component *c, const char *key, const char *dflt,
                             const char **out, sdc_err *err) {
    const json_t *v = config_value(c, key);
    *out = dflt;
    if (!v) return SDC_OK;
    if (!json_is_string(v)) return config_type_error(c, key, "a string", v, err);
    *out = json_string_value(v);
    return SDC_OK;
}

sdc_status sdc_config_bool(const sdc_component *c, const char *key, bool dflt, bool *out,
                           sdc_err *err) {
    const json_t *v = config_value(c, key);
    *out = dflt;
    if (!v) return SDC_OK;
    if (!json_is_boolean(v)) return config_type_error(c, key, "a boolean", v, err);
    *out = json_is_true(v);
    return SDC_OK;
}

sdc_status sdc_config_int_list(const sdc_component *c, const char *key, size_t max, int64_t *out,
                               size_t *n, sdc_err *err) {
    const json_t *v = config_value(c, key);
    *n = 0;
    if (!v) return SDC_OK;
    if (!json_is_array(v)) return config_type_error(c, key, "an array of integers", v, err);
    if (json_array_size(v) > max)
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: key '%s' has %zu entries; at most %zu are "
                        "supported", c->config_path, key, json_array_size(v), max);
    for (size_t i = 0; i < json_array_size(v); i++) {
        const json_t *e = json_array_get(v, i);
        if (!json_is_integer(e))
            return sdc_fail(err, SDC_E_FORMAT, "%s: key '%s' entry %zu must be an integer, not %s",
                            c->config_path, key, i, json_type_name(e));
        out[i] = (int64_t)json_integer_value(e);
    }
    *n = json_array_size(v);
    return SDC_OK;
}
