/*
 * source.c — resolving a model name to a folder, and a component to its config and weights.
 *
 * Resolution follows diffusers' from_pretrained: an existing local folder wins, else the id is
 * looked up in the Hugging Face cache (reference/sd-architectures.md §2.2). Weight files are
 * chosen as diffusers does with variant="fp16" (§2.1): the variant when present, else the
 * default name; single files before shard indexes; .safetensors only.
 */
#include "source/source.h"

#include "hub/hub.h"
#include "source/single_file.h"
#include "source/lora.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define JSON_MAX_BYTES (64u * 1024u * 1024u) /* configs and indexes are kilobytes */
#define REF_MAX_BYTES 256u

struct sdc_weights {
    char describe[4200];
    sdc_single_file *owner; /* views of a single file: kept alive by this set */
    size_t n_files;
    sdc_st_file **files;
    size_t count;
    const sdc_tensor **by_name; /* every tensor of every shard, sorted by name */
    uint64_t total_bytes;
    sdc_lora_merge *lora; /* the merged views that replace tensors of by_name, or NULL */
};

/* ---- errors and paths --------------------------------------------------------------- */

static sdc_status join_path(char *buf, size_t size, const char *dir, const char *name,
                            sdc_err *err) {
    if (!sdc_fmt(buf, size, "%s/%s", dir, name))
        return sdc_fail(err, SDC_E_ARG, "path too long: '%s/%s'", dir, name);
    return SDC_OK;
}

static bool is_dir(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static bool is_file(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Present in the folder listing, even as a dangling symlink (an incomplete download), so
   that opening it reports the real problem instead of silently falling back. */
static bool entry_exists(const char *path) {
    struct stat sb;
    return lstat(path, &sb) == 0;
}

/* A relative path shown as "./x" so a reader sees where it was looked for. */
static const char *display_path(const char *path, char *buf, size_t size) {
    if (path[0] == '/' || strncmp(path, "./", 2) == 0 || strncmp(path, "../", 3) == 0)
        return path;
    snprintf(buf, size, "./%s", path);
    return buf;
}

/* A single file name inside a folder: not empty, no separators, no parent references. */
static bool is_plain_file_name(const char *name) {
    return name[0] && !strchr(name, '/') && !strstr(name, "..");
}

/* ---- strict JSON -------------------------------------------------------------------- */

sdc_status sdc_read_small_file(const char *path, size_t limit, char **out, size_t *len, sdc_err *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sdc_fail(err, errno == ENOENT ? SDC_E_NOTFOUND : SDC_E_IO, "%s: cannot open: %s",
                        path, strerror(errno));
    struct stat sb;
    sdc_status st = SDC_OK;
    char *buf = NULL;
    size_t got = 0;
    if (fstat(fd, &sb) != 0)
        st = sdc_fail(err, SDC_E_IO, "%s: cannot stat: %s", path, strerror(errno));
    else if (!S_ISREG(sb.st_mode))
        st = sdc_fail(err, SDC_E_IO, "%s: not a regular file", path);
    else if ((uint64_t)sb.st_size > limit)
        st = sdc_fail(err, SDC_E_FORMAT, "%s: %lld bytes exceeds the limit of %zu bytes", path,
                      (long long)sb.st_size, limit);
    else if (!(buf = sdc_malloc((size_t)sb.st_size + 1)))
        st = sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", path);
    while (!st && got < (size_t)sb.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)sb.st_size - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) st = sdc_fail(err, SDC_E_IO, "%s: read failed: %s", path, strerror(errno));
        if (n <= 0) break; /* a file that shrank while read: parse what is there */
        got += (size_t)n;
    }
    close(fd);
    if (st) {
        sdc_free(buf);
        return st;
    }
    buf[got] = '\0';
    *out = buf;
    *len = got;
    return SDC_OK;
}

/* Integers longer than 18 digits, which JSON allows and jansson cannot hold in 64 bits
   (transformers writes model_max_length = 1000000000000000019884624838656 for "no limit"),
   rewritten as reals ("….0") so they parse; nothing that reads such a key wants an exact
   integer from it. Returns a new text (caller frees), or NULL when out of memory. */
static char *big_ints_as_reals(const char *text, size_t len, size_t *out_len) {
    char *out = sdc_malloc(len + len / 2 + 2); /* each rewrite adds 2 bytes to >= 19 digits */
    if (!out) return NULL;
    size_t n = 0;
    bool in_string = false;
    for (size_t i = 0; i < len;) {
        char ch = text[i];
        if (in_string) {
            out[n++] = text[i++];
            if (ch == '\\' && i < len) out[n++] = text[i++];
            else if (ch == '"') in_string = false;
            continue;
        }
        if (ch == '"') in_string = true;
        if (ch != '-' && !(ch >= '0' && ch <= '9')) {
            out[n++] = text[i++];
            continue;
        }
        size_t start = i, digits = 0;
        bool integral = true;
        for (; i < len && strchr("-+0123456789.eE", text[i]); i++) {
            digits += text[i] >= '0' && text[i] <= '9';
            integral = integral && (text[i] == '-' || (text[i] >= '0' && text[i] <= '9'));
        }
        memcpy(out + n, text + start, i - start);
        n += i - start;
        if (integral && digits > 18) {
            memcpy(out + n, ".0", 2);
            n += 2;
        }
    }
    *out_len = n;
    return out;
}

/* jansson's parser nests at most JSON_PARSER_MAX_DEPTH (2048) levels deep: a deeper file is
   refused with jansson's message, as malformed. */
sdc_status sdc_json_load(const char *path, json_t **out, sdc_err *err) {
    *out = NULL;
    char *text;
    size_t len;
    sdc_status st = sdc_read_small_file(path, JSON_MAX_BYTES, &text, &len, err);
    if (st) return st;
    json_error_t jerr;
    *out = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!*out && json_error_code(&jerr) == json_error_numeric_overflow) {
        size_t n;
        char *relaxed = big_ints_as_reals(text, len, &n);
        if (relaxed) *out = json_loadb(relaxed, n, JSON_REJECT_DUPLICATES, &jerr);
        sdc_free(relaxed);
    }
    sdc_free(text);
    if (*out) return SDC_OK;
    /* jansson says "duplicate object key"; say what the rule is. */
    bool dup = json_error_code(&jerr) == json_error_duplicate_key;
    return sdc_fail(err, SDC_E_FORMAT, "%s: invalid JSON at line %d, column %d: %s", path,
                    jerr.line, jerr.column, dup ? "duplicate key" : jerr.text);
}

static sdc_status load_json_object(const char *path, json_t **out, sdc_err *err) {
    sdc_status st = sdc_json_load(path, out, err);
    if (st) return st;
    if (json_is_object(*out)) return SDC_OK;
    json_decref(*out);
    *out = NULL;
    return sdc_fail(err, SDC_E_FORMAT, "%s: not a JSON object", path);
}

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
    if (!is_dir(entry)) {
        snprintf(tried, tried_size, "no cache entry '%s' (%s)", entry, why);
        return SDC_OK;
    }
    if (!sdc_fmt(ref_path, sizeof ref_path, "%s/refs/%s", entry, id.revision))
        return sdc_fail(err, SDC_E_ARG, "cache path too long for model '%s'", spec);
    if (is_file(ref_path)) {
        if ((st = read_ref(ref_path, rev, sizeof rev, err))) return st;
    } else if (is_commit_hash(id.revision)) {
        snprintf(rev, sizeof rev, "%s", id.revision); /* huggingface_hub writes no ref for a hash */
    } else {
        snprintf(tried, tried_size, "cache entry '%s' has no refs/%s (%s)", entry, id.revision, why);
        return SDC_OK;
    }
    if (!sdc_fmt(snapshot, size, "%s/snapshots/%s", entry, rev))
        return sdc_fail(err, SDC_E_ARG, "cache path too long for model '%s'", spec);
    if (!is_dir(snapshot)) {
        snprintf(tried, tried_size, "no snapshot folder '%s' for the commit in refs/%s (%s)",
                 snapshot, id.revision, why);
        snapshot[0] = '\0';
    }
    return SDC_OK;
}

/* True when some immediate subfolder (or the folder itself) holds a config.json. */
static bool has_component_folder(const char *root) {
    char path[4200];
    if (sdc_fmt(path, sizeof path, "%s/config.json", root) && is_file(path)) return true;
    DIR *d = opendir(root);
    if (!d) return false;
    bool found = false;
    struct dirent *de;
    while (!found && (de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        found = sdc_fmt(path, sizeof path, "%s/%s/config.json", root, de->d_name) &&
                is_file(path);
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
    sdc_status st = join_path(index, sizeof index, s->root, "model_index.json", err);
    if (st) return st;
    if (entry_exists(index)) return load_json_object(index, &s->model_index, err);
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
    if (is_dir(model_version)) {
        if (!sdc_fmt(out->root, sizeof out->root, "%s", model_version))
            return sdc_fail(err, SDC_E_ARG, "model path too long: '%.80s...'", model_version);
        return open_root(out, err);
    }
    char shown[sizeof out->id + 2];
    const char *folder = display_path(model_version, shown, sizeof shown);
    if (sdc_single_file_named(model_version) && !is_dir(model_version))
        return sdc_fail(err, SDC_E_NOTFOUND, "model file '%s' not found (%s)", folder,
                        entry_exists(model_version) ? "not a regular file" : strerror(ENOENT));
    if (is_file(model_version))
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
           (!name[0] || (is_plain_file_name(name) && strcmp(name, ".") != 0));
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
        return sdc_fmt(config, sizeof config, "%s/config.json", dir) && is_file(config);
    if (s->model_index) {
        if (component[0] == '_') return false; /* _class_name, _diffusers_version */
        const json_t *entry = json_object_get(s->model_index, component);
        return json_is_array(entry) && json_array_size(entry) == 2 &&
               json_is_string(json_array_get(entry, 1));
    }
    return is_dir(dir);
}

/* ---- weights ------------------------------------------------------------------------ */

static int cmp_tensor_name(const void *a, const void *b) {
    const sdc_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

static void weights_free(sdc_weights *w) {
    if (!w) return;
    sdc_lora_merge_close(w->lora);
    for (size_t i = 0; i < w->n_files; i++) sdc_st_close(w->files[i]);
    sdc_free(w->files);
    sdc_free(w->by_name);
    sdc_single_file_release(w->owner);
    sdc_free(w);
}

void sdc_weights_free(sdc_weights *w) { weights_free(w); }

static sdc_status sort_and_check_names(sdc_weights *w, sdc_err *err);

/* Builds the name index over all files; a name in two shards is ambiguous, so an error. */
static sdc_status index_tensors(sdc_weights *w, sdc_err *err) {
    size_t n = 0;
    for (size_t i = 0; i < w->n_files; i++) n += sdc_st_count(w->files[i]);
    if (!(w->by_name = sdc_calloc(n ? n : 1, sizeof *w->by_name)))
        return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", w->describe);
    for (size_t i = 0; i < w->n_files; i++) {
        for (size_t j = 0; j < sdc_st_count(w->files[i]); j++) {
            const sdc_tensor *t = sdc_st_at(w->files[i], j);
            w->by_name[w->count++] = t;
            w->total_bytes += t->nbytes;
        }
    }
    return sort_and_check_names(w, err);
}

sdc_status sdc_weights_from_views(const char *describe, const sdc_tensor *views, size_t n, sdc_single_file *owner,
                                  sdc_weights **out, sdc_err *err) {
    *out = NULL;
    sdc_weights *w = sdc_calloc(1, sizeof *w);
    if (!w || !(w->by_name = sdc_calloc(n ? n : 1, sizeof *w->by_name))) {
        sdc_free(w);
        return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", describe);
    }
    snprintf(w->describe, sizeof w->describe, "%s", describe);
    for (size_t i = 0; i < n; i++) {
        w->by_name[w->count++] = &views[i];
        w->total_bytes += views[i].nbytes;
    }
    if (owner) sdc_single_file_retain(owner);
    w->owner = owner;
    sdc_status st = sort_and_check_names(w, err);
    if (st) weights_free(w);
    else *out = w;
    return st;
}

static sdc_status sort_and_check_names(sdc_weights *w, sdc_err *err) {
    size_t n = w->count;
    qsort(w->by_name, n, sizeof *w->by_name, cmp_tensor_name);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(w->by_name[i - 1]->name, w->by_name[i]->name) == 0)
            return sdc_fail(err, SDC_E_FORMAT, "%s: tensor '%s' is in both %s and %s",
                            w->describe, w->by_name[i]->name, sdc_st_path(w->by_name[i - 1]->file),
                            sdc_st_path(w->by_name[i]->file));
    }
    return SDC_OK;
}

static sdc_status open_single(const char *path, sdc_weights *w, sdc_err *err) {
    snprintf(w->describe, sizeof w->describe, "%s", path);
    if (!(w->files = sdc_calloc(1, sizeof *w->files)))
        return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", path);
    sdc_status st = sdc_st_open(path, &w->files[0], err);
    if (st) return st;
    w->n_files = 1;
    return index_tensors(w, err);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bool has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* The distinct shard names of a weight_map, validated and sorted. Names point into map. */
static sdc_status collect_shards(const char *index, const json_t *map, const char ***out,
                                 size_t *n_out, sdc_err *err) {
    const char **names = sdc_calloc(json_object_size(map), sizeof *names);
    if (!names) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", index);
    size_t n = 0;
    const char *key;
    const json_t *value;
    sdc_status st = SDC_OK;
    json_object_foreach((json_t *)map, key, value) {
        const char *shard = json_string_value(value);
        if (!shard || !is_plain_file_name(shard)) {
            st = sdc_fail(err, SDC_E_FORMAT,
                          "%s: weight_map entry of tensor '%s' is not a file name in the same "
                          "folder",
                          index, key);
            break;
        }
        if (!has_suffix(shard, ".safetensors")) {
            st = sdc_fail(err, SDC_E_UNSUPPORTED,
                          "%s: weight_map puts tensor '%s' in '%s'; sdcoreml reads .safetensors",
                          index, key, shard);
            break;
        }
        bool seen = false;
        for (size_t i = 0; i < n && !seen; i++) seen = strcmp(names[i], shard) == 0;
        if (!seen) names[n++] = shard;
    }
    if (!st && n == 0) st = sdc_fail(err, SDC_E_FORMAT, "%s: weight_map is empty", index);
    if (st) {
        sdc_free(names);
        return st;
    }
    qsort(names, n, sizeof *names, cmp_str);
    *out = names;
    *n_out = n;
    return SDC_OK;
}

/* Every tensor the index names must be in the shard it names. */
static sdc_status check_weight_map(const char *index, const json_t *map, const char **shards,
                                   const sdc_weights *w, sdc_err *err) {
    const char *key;
    const json_t *value;
    json_object_foreach((json_t *)map, key, value) {
        const char *shard = json_string_value(value);
        const char **hit = bsearch(&shard, shards, w->n_files, sizeof *shards, cmp_str);
        SDC_ASSERT(hit);
        if (!sdc_st_find(w->files[hit - shards], key))
            return sdc_fail(err, SDC_E_FORMAT,
                            "%s: weight_map puts tensor '%s' in '%s', but that file has no such "
                            "tensor",
                            index, key, shard);
    }
    return SDC_OK;
}

static sdc_status open_shards(const char *dir, const char *index, const json_t *map,
                              sdc_weights *w, sdc_err *err) {
    const char **shards = NULL;
    size_t n = 0;
    sdc_status st = collect_shards(index, map, &shards, &n, err);
    if (st) return st;
    snprintf(w->describe, sizeof w->describe, "%s (%zu shard%s)", index, n, n == 1 ? "" : "s");
    if (!(w->files = sdc_calloc(n, sizeof *w->files)))
        st = sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", index);
    for (size_t i = 0; !st && i < n; i++) {
        char path[4200];
        if (!(st = join_path(path, sizeof path, dir, shards[i], err)) &&
            !(st = sdc_st_open(path, &w->files[i], err)))
            w->n_files++;
    }
    if (!st) st = check_weight_map(index, map, shards, w, err);
    if (!st) st = index_tensors(w, err);
    sdc_free(shards);
    return st;
}

static sdc_status open_sharded(const char *dir, const char *index, sdc_weights *w,
                               sdc_err *err) {
    json_t *doc;
    sdc_status st = load_json_object(index, &doc, err);
    if (st) return st;
    const json_t *map = json_object_get(doc, "weight_map");
    if (!json_is_object(map))
        st = sdc_fail(err, SDC_E_FORMAT, "%s: 'weight_map' is missing or not an object", index);
    else
        st = open_shards(dir, index, map, w, err);
    json_decref(doc);
    return st;
}

/* The first PyTorch pickle file in the folder (sorted, for a stable message), if any. */
static bool find_pickle_weights(const char *dir, char *name, size_t size) {
    DIR *d = opendir(dir);
    if (!d) return false;
    bool found = false;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *n = de->d_name;
        if (!(has_suffix(n, ".bin") || has_suffix(n, ".ckpt") || has_suffix(n, ".pt") ||
              has_suffix(n, ".pth")))
            continue;
        if (!found || strcmp(n, name) < 0) found = sdc_fmt(name, size, "%s", n);
    }
    closedir(d);
    return found;
}

static sdc_status report_no_weights(const char *dir, const char *tried, sdc_err *err) {
    char pickle[256], path[4400];
    if (find_pickle_weights(dir, pickle, sizeof pickle)) {
        snprintf(path, sizeof path, "%s/%s", dir, pickle);
        return sdc_fail(err, SDC_E_UNSUPPORTED,
                        "only PyTorch pickle weights (%s) found; sdcoreml reads .safetensors",
                        path);
    }
    return sdc_fail(err, SDC_E_NOTFOUND, "%s: no weights found (tried %s)", dir, tried);
}

/* The anchor's order of preference (diffusers with variant="fp16"): the variant, then the
   default; diffusers' file stem, then transformers'; a single file, then a shard index. */
bool sdc_source_weight_name(size_t i, char *out, size_t size, bool *is_index) {
    static const char *const variants[] = {".fp16", ""};
    static const char *const stems[] = {"diffusion_pytorch_model", "model"};
    if (i >= 2 * SDC_COUNT_OF(variants) * SDC_COUNT_OF(stems)) return false;
    const char *variant = variants[i / 4], *stem = stems[i / 2 % 2];
    *is_index = i % 2 == 1;
    if (*is_index) return sdc_fmt(out, size, "%s.safetensors.index%s.json", stem, variant);
    return sdc_fmt(out, size, "%s%s.safetensors", stem, variant);
}

/* Picks the weight file(s) of a component folder in the anchor's order of preference. */
static sdc_status open_weights(const char *dir, sdc_weights **out, sdc_err *err) {
    char tried[1024] = "", name[128], path[4300];
    bool is_index;
    *out = NULL;
    for (size_t i = 0; sdc_source_weight_name(i, name, sizeof name, &is_index); i++) {
        sdc_status st = join_path(path, sizeof path, dir, name, err);
        if (st) return st;
        if (!entry_exists(path)) {
            size_t used = strlen(tried);
            snprintf(tried + used, sizeof tried - used, "%s%s", used ? ", " : "", name);
            continue;
        }
        sdc_weights *w = sdc_calloc(1, sizeof *w);
        if (!w) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", path);
        st = is_index ? open_sharded(dir, path, w, err) : open_single(path, w, err);
        if (st) {
            weights_free(w);
            return st;
        }
        *out = w;
        return SDC_OK;
    }
    return report_no_weights(dir, tried, err);
}

const sdc_tensor *sdc_weights_at(const sdc_weights *w, size_t i) { return w->by_name[i]; }

const sdc_tensor *sdc_weights_find(const sdc_weights *w, const char *name) {
    sdc_tensor key = {.name = name};
    const sdc_tensor *kp = &key;
    const sdc_tensor **hit = bsearch(&kp, w->by_name, w->count, sizeof *w->by_name,
                                     cmp_tensor_name);
    return hit ? *hit : NULL;
}

static bool same_shape(const sdc_tensor *t, int rank, const int64_t *shape) {
    if (t->rank != rank) return false;
    for (int i = 0; i < rank; i++)
        if (t->shape[i] != shape[i]) return false;
    return true;
}

sdc_status sdc_weights_get(const sdc_weights *w, const char *name, int rank, const int64_t *shape,
                           const sdc_tensor **out, sdc_err *err) {
    *out = NULL;
    const sdc_tensor *t = sdc_weights_find(w, name);
    if (!t) return sdc_fail(err, SDC_E_NOTFOUND, "tensor '%s' not found in %s", name, w->describe);
    const char *file = sdc_st_path(t->file);
    if (t->dtype != SDC_DT_F32 && t->dtype != SDC_DT_F16 && t->dtype != SDC_DT_BF16)
        return sdc_fail(err, SDC_E_UNSUPPORTED,
                        "%s: tensor '%s' has dtype %s; a weight must be F32, F16 or BF16", file,
                        name, sdc_dtype_name(t->dtype));
    if (!same_shape(t, rank, shape)) {
        char want[256], have[256];
        return sdc_fail(err, SDC_E_FORMAT, "%s: tensor '%s' has shape %s but %s is expected",
                        file, name, sdc_shape_str(t->shape, t->rank, have, sizeof have),
                        sdc_shape_str(shape, rank, want, sizeof want));
    }
    *out = t;
    return SDC_OK;
}

const char *sdc_weights_describe(const sdc_weights *w) { return w->describe; }
size_t sdc_weights_count(const sdc_weights *w) { return w->count; }
uint64_t sdc_weights_total_bytes(const sdc_weights *w) { return w->total_bytes; }

/* ---- components --------------------------------------------------------------------- */

/* --lora: the LoRAs' merged views take the place of the tensors they update, so every lookup
   of the component hands them out (lora.h says why this is the seam). */
static sdc_status merge_loras(const sdc_lora_set *set, const char *component, sdc_weights *w, sdc_err *err) {
    sdc_status st = sdc_lora_merge_open(set, component, w, &w->lora, err);
    for (size_t i = 0; !st && w->lora && i < sdc_lora_merge_count(w->lora); i++) {
        const sdc_tensor *merged = sdc_lora_merge_tensor(w->lora, i);
        const sdc_tensor **slot = bsearch(&merged, w->by_name, w->count, sizeof *w->by_name, cmp_tensor_name);
        SDC_ASSERT(slot);
        *slot = merged;
    }
    return st;
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
    if (!is_dir(out->dir))
        return sdc_fail(err, SDC_E_NOTFOUND, "model '%s' has no component folder '%s'", s->id,
                        out->dir);
    sdc_status st = join_path(out->config_path, sizeof out->config_path, out->dir, "config.json",
                              err);
    if (!st && !entry_exists(out->config_path))
        st = sdc_fail(err, SDC_E_NOTFOUND, "%s: missing (every component folder needs one)",
                      out->config_path);
    if (!st) st = load_json_object(out->config_path, &out->config, err);
    if (!st) st = open_weights(out->dir, &out->weights, err);
    if (!st && s->lora) st = merge_loras(s->lora, component, out->weights, err);
    if (st) sdc_component_close(out);
    return st;
}

void sdc_component_close(sdc_component *c) {
    if (!c) return;
    json_decref(c->config);
    c->config = NULL;
    weights_free(c->weights);
    c->weights = NULL;
}

/* ---- config helpers ----------------------------------------------------------------- */

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
