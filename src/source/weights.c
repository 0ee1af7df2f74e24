/*
 * weights.c — the weights of one component: every tensor of its file(s), found by name.
 *
 * A component folder's weight file is chosen as diffusers does with variant="fp16" (§2.1 of
 * reference/sd-architectures.md): the variant when present, else the default name; single
 * files before shard indexes; .safetensors only. A single-file checkpoint hands in its views
 * (sdc_weights_from_views). What the views point into (a checkpoint, a LoRA's merged
 * tensors) is kept alive by the table through release callbacks, so this floor knows
 * neither single files nor LoRAs.
 */
#include "source/source.h"
#include "source/files.h"

#include <dirent.h>
#include <string.h>

#define SDC_WEIGHTS_MAX_KEPT 4

struct sdc_weights {
    char describe[4200];
    size_t n_files;
    sdc_st_file **files;
    size_t count;
    const sdc_tensor **by_name; /* every tensor of every shard, sorted by name */
    uint64_t total_bytes;
    struct {
        void *obj;
        void (*release)(void *obj);
    } kept[SDC_WEIGHTS_MAX_KEPT]; /* what views of by_name point into: released with the table */
    size_t n_kept;
};

static int cmp_tensor_name(const void *a, const void *b) {
    const sdc_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

static void weights_free(sdc_weights *w) {
    if (!w) return;
    for (size_t i = w->n_kept; i-- > 0;) w->kept[i].release(w->kept[i].obj); /* last kept, first released */
    for (size_t i = 0; i < w->n_files; i++) sdc_st_close(w->files[i]);
    sdc_free(w->files);
    sdc_free(w->by_name);
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

sdc_status sdc_weights_from_views(const char *describe, const sdc_tensor *views, size_t n, sdc_weights **out,
                                  sdc_err *err) {
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
        if (!shard || !sdc_is_plain_file_name(shard)) {
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
        if (!(st = sdc_path_join(path, sizeof path, dir, shards[i], err)) &&
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
    sdc_status st = sdc_json_load_object(index, &doc, err);
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
sdc_status sdc_weights_open_folder(const char *dir, sdc_weights **out, sdc_err *err) {
    char tried[1024] = "", name[128], path[4300];
    bool is_index;
    *out = NULL;
    for (size_t i = 0; sdc_source_weight_name(i, name, sizeof name, &is_index); i++) {
        sdc_status st = sdc_path_join(path, sizeof path, dir, name, err);
        if (st) return st;
        if (!sdc_entry_exists(path)) {
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

void sdc_weights_keep(sdc_weights *w, void *obj, void (*release)(void *obj)) {
    SDC_ASSERT(w->n_kept < SDC_WEIGHTS_MAX_KEPT);
    w->kept[w->n_kept].obj = obj;
    w->kept[w->n_kept++].release = release;
}

void sdc_weights_substitute(sdc_weights *w, const sdc_tensor *t) {
    const sdc_tensor **slot = bsearch(&t, w->by_name, w->count, sizeof *w->by_name, cmp_tensor_name);
    SDC_ASSERT(slot);
    *slot = t;
}

void sdc_component_close(sdc_component *c) {
    if (!c) return;
    json_decref(c->config);
    c->config = NULL;
    sdc_weights_free(c->weights);
    c->weights = NULL;
}

