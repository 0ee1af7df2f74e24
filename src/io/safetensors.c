/*
 * safetensors.c — strict, mmap-based reader of .safetensors files.
 *
 * The checks follow the reference reader (huggingface/safetensors, see
 * reference/sd-architectures.md §1.1): bounded header length, a JSON object without duplicate
 * keys, whitelisted dtypes, byte counts that match the shapes, and offsets that tile the data
 * buffer exactly up to the end of the file. Every error is one line that starts with the
 * file's path and names the tensor where there is one.
 */
#include "io/safetensors.h"

#include "io/fp16.h"
#include "io/mapfile.h"

#include <jansson.h>
#include <sys/mman.h>
#include <unistd.h>

struct sdc_st_file {
    char *path;
    const uint8_t *map; /* the whole file, read-only */
    size_t map_size;
    size_t count;
    sdc_tensor *tensors;       /* sorted by data offset */
    const sdc_tensor **by_name; /* sorted by name, for sdc_st_find */
};

/* ---- errors ------------------------------------------------------------------------- */

/* A JSON value as compact text for messages, e.g. a malformed shape. Caller frees. */
static char *json_text(const json_t *v) {
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (s && strlen(s) > 80) strcpy(s + 77, "...");
    return s;
}

/* ---- dtypes ------------------------------------------------------------------------- */

/* dtypes the format defines that this reader does not (8-bit floats, sub-byte, complex). */
static const char *const known_unsupported_dtypes[] = {
    "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F4", "F6_E2M3", "F6_E3M2",
    "C64",
};

/* The dtypes this reader supports are those of the dtype table with a converter name, which
   is safetensors' spelling; STRING is MIL's only. */
static sdc_dtype dtype_from_name(const char *name) {
    const sdc_dtype_info *d = sdc_dtype_by_name(name);
    return d && d->enc != SDC_ENC_STRING ? d->code : SDC_DT_INVALID;
}

static bool dtype_is_known_unsupported(const char *name) {
    for (size_t i = 0; i < SDC_COUNT_OF(known_unsupported_dtypes); i++)
        if (strcmp(name, known_unsupported_dtypes[i]) == 0) return true;
    return false;
}

/* ---- header entries ----------------------------------------------------------------- */

static sdc_status check_metadata(const char *path, const json_t *meta, sdc_err *err) {
    if (!json_is_object(meta))
        return sdc_fail(err, SDC_E_FORMAT, "%s: '__metadata__' is not a JSON object", path);
    const char *key;
    const json_t *value;
    json_object_foreach((json_t *)meta, key, value) {
        if (!json_is_string(value))
            return sdc_fail(err, SDC_E_FORMAT,
                           "%s: '__metadata__' value of key '%s' is not a string", path, key);
    }
    return SDC_OK;
}

static sdc_status parse_dtype(const char *path, const char *name, const json_t *v,
                              sdc_dtype *out, sdc_err *err) {
    if (!json_is_string(v))
        return sdc_fail(err, SDC_E_FORMAT, "%s: tensor '%s': dtype is not a string", path, name);
    const char *s = json_string_value(v);
    *out = dtype_from_name(s);
    if (*out != SDC_DT_INVALID) return SDC_OK;
    if (dtype_is_known_unsupported(s))
        return sdc_fail(err, SDC_E_UNSUPPORTED,
                       "%s: tensor '%s': unsupported dtype '%s' (sdcoreml reads F64, F32, F16, "
                       "BF16 and integer/bool tensors)",
                       path, name, s);
    return sdc_fail(err, SDC_E_FORMAT, "%s: tensor '%s': unsupported dtype '%s' (not a "
                   "safetensors dtype)", path, name, s);
}

static sdc_status parse_shape(const char *path, const char *name, const json_t *v,
                              sdc_tensor *t, sdc_err *err) {
    bool ok = json_is_array(v);
    for (size_t i = 0; ok && i < json_array_size(v); i++) {
        const json_t *d = json_array_get(v, i);
        ok = json_is_integer(d) && json_integer_value(d) >= 0;
    }
    if (!ok) {
        char *text = json_text(v);
        sdc_fail(err, SDC_E_FORMAT,
                "%s: tensor '%s': shape %s is not an array of non-negative integers", path, name,
                text ? text : "?");
        free(text);
        return SDC_E_FORMAT;
    }
    if (json_array_size(v) > SDC_MAX_RANK)
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: tensor '%s': rank %zu exceeds the maximum %d",
                       path, name, json_array_size(v), SDC_MAX_RANK);
    t->rank = (int)json_array_size(v);
    t->numel = 1; /* shape [] is a scalar */
    for (int i = 0; i < t->rank; i++) {
        t->shape[i] = (int64_t)json_integer_value(json_array_get(v, (size_t)i));
        if (!sdc_mul_u64(t->numel, (uint64_t)t->shape[i], &t->numel)) {
            char sbuf[256];
            return sdc_fail(err, SDC_E_FORMAT,
                           "%s: tensor '%s': element count of shape %s overflows 64 bits", path,
                           name, sdc_shape_str(t->shape, t->rank, sbuf, sizeof sbuf));
        }
    }
    return SDC_OK;
}

static sdc_status parse_offsets(const char *path, const char *name, const json_t *v,
                                uint64_t *begin, uint64_t *end, sdc_err *err) {
    const json_t *b = json_array_get(v, 0), *e = json_array_get(v, 1);
    if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_integer(b) ||
        !json_is_integer(e) || json_integer_value(b) < 0 || json_integer_value(e) < 0) {
        char *text = json_text(v);
        sdc_fail(err, SDC_E_FORMAT,
                "%s: tensor '%s': data_offsets %s is not [begin, end] of non-negative integers",
                path, name, text ? text : "?");
        free(text);
        return SDC_E_FORMAT;
    }
    *begin = (uint64_t)json_integer_value(b);
    *end = (uint64_t)json_integer_value(e);
    if (*end < *begin)
        return sdc_fail(err, SDC_E_FORMAT,
                       "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin", path,
                       name, (unsigned long long)*begin, (unsigned long long)*end);
    return SDC_OK;
}

/* Checks one tensor entry: exactly dtype, shape and data_offsets, consistent with each
   other. The begin offset is returned apart: it becomes a pointer only once the tiling
   check has proved it in range. */
static sdc_status parse_tensor(const char *path, const char *name, const json_t *entry,
                               sdc_tensor *t, uint64_t *begin, sdc_err *err) {
    if (!json_is_object(entry))
        return sdc_fail(err, SDC_E_FORMAT, "%s: tensor '%s': entry is not a JSON object", path,
                       name);
    const char *key;
    const json_t *value;
    json_object_foreach((json_t *)entry, key, value) {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            return sdc_fail(err, SDC_E_FORMAT, "%s: tensor '%s': unexpected field '%s'", path,
                           name, key);
    }
    static const char *const required[] = {"dtype", "shape", "data_offsets"};
    for (size_t i = 0; i < SDC_COUNT_OF(required); i++)
        if (!json_object_get(entry, required[i]))
            return sdc_fail(err, SDC_E_FORMAT, "%s: tensor '%s': missing field '%s'", path, name,
                           required[i]);

    uint64_t end, need;
    sdc_status st;
    if ((st = parse_dtype(path, name, json_object_get(entry, "dtype"), &t->dtype, err)) ||
        (st = parse_shape(path, name, json_object_get(entry, "shape"), t, err)) ||
        (st = parse_offsets(path, name, json_object_get(entry, "data_offsets"), begin, &end,
                            err)))
        return st;

    char sbuf[256];
    if (!sdc_mul_u64(t->numel, sdc_dtype_size(t->dtype), &need))
        return sdc_fail(err, SDC_E_FORMAT,
                       "%s: tensor '%s': byte size of shape %s of %s overflows 64 bits", path,
                       name, sdc_shape_str(t->shape, t->rank, sbuf, sizeof sbuf),
                       sdc_dtype_name(t->dtype));
    t->nbytes = end - *begin;
    if (t->nbytes != need)
        return sdc_fail(err, SDC_E_FORMAT,
                       "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes but shape %s of "
                       "%s needs %llu",
                       path, name, (unsigned long long)*begin, (unsigned long long)end,
                       (unsigned long long)t->nbytes,
                       sdc_shape_str(t->shape, t->rank, sbuf, sizeof sbuf), sdc_dtype_name(t->dtype),
                       (unsigned long long)need);
    return SDC_OK;
}

/* ---- layout ------------------------------------------------------------------------- */

/* While parsing, a tensor's offset into the data buffer is kept beside it, then turned into a
   pointer once the layout is proved valid. */
typedef struct pending {
    const sdc_tensor *t;
    uint64_t begin;
} pending;

static int cmp_by_offset(const void *a, const void *b) {
    const pending *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    /* Empty tensors can share a begin with the next one; the empty one must come first. */
    if (x->t->nbytes != y->t->nbytes) return x->t->nbytes < y->t->nbytes ? -1 : 1;
    return strcmp(x->t->name, y->t->name);
}

static int cmp_by_name(const void *a, const void *b) {
    const sdc_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* The offsets, sorted, must tile [0, data_size) exactly. */
static sdc_status check_tiling(const char *path, const pending *p, size_t n, uint64_t data_size,
                               sdc_err *err) {
    uint64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned long long b = p[i].begin, e = p[i].begin + p[i].t->nbytes;
        const char *name = p[i].t->name;
        if (i == 0 && b != 0)
            return sdc_fail(err, SDC_E_FORMAT,
                           "%s: tensor '%s': data_offsets [%llu, %llu] leave a hole: the first "
                           "tensor must begin at 0",
                           path, name, b, e);
        if (b > at)
            return sdc_fail(err, SDC_E_FORMAT,
                           "%s: tensor '%s': data_offsets [%llu, %llu] leave a hole of %llu bytes "
                           "after tensor '%s'",
                           path, name, b, e, b - (unsigned long long)at, p[i - 1].t->name);
        if (b < at)
            return sdc_fail(err, SDC_E_FORMAT,
                           "%s: tensor '%s': data_offsets [%llu, %llu] overlap tensor '%s', which "
                           "ends at %llu",
                           path, name, b, e, p[i - 1].t->name, (unsigned long long)at);
        at = e;
    }
    if (at > data_size)
        return sdc_fail(err, SDC_E_FORMAT,
                       "%s: tensor '%s': data_offsets end at %llu, past the end of the file (data "
                       "buffer is %llu bytes; truncated?)",
                       path, p[n - 1].t->name, (unsigned long long)at,
                       (unsigned long long)data_size);
    if (at < data_size)
        return sdc_fail(err, SDC_E_FORMAT,
                       "%s: %llu trailing bytes after the last tensor's data (data buffer is %llu "
                       "bytes, tensors use %llu)",
                       path, (unsigned long long)(data_size - at), (unsigned long long)data_size,
                       (unsigned long long)at);
    return SDC_OK;
}

/* ---- header ------------------------------------------------------------------------- */

static sdc_status parse_header_json(const char *path, const uint8_t *text, size_t len,
                                    json_t **out, sdc_err *err) {
    json_error_t jerr;
    *out = json_loadb((const char *)text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!*out) {
        if (json_error_code(&jerr) == json_error_duplicate_key)
            return sdc_fail(err, SDC_E_FORMAT,
                           "%s: JSON header has a duplicate key (line %d, column %d)", path,
                           jerr.line, jerr.column);
        return sdc_fail(err, SDC_E_FORMAT, "%s: invalid JSON header: %s (line %d, column %d)",
                       path, jerr.text, jerr.line, jerr.column);
    }
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return sdc_fail(err, SDC_E_FORMAT, "%s: JSON header is not an object", path);
    }
    return SDC_OK;
}

/* Parses every tensor entry into f->tensors (in JSON order) and its offset into order[]. */
static sdc_status parse_entries(sdc_st_file *f, json_t *header, pending *order, sdc_err *err) {
    const char *key;
    json_t *value;
    json_object_foreach(header, key, value) {
        if (strcmp(key, "__metadata__") == 0) {
            sdc_status st = check_metadata(f->path, value, err);
            if (st) return st;
            continue;
        }
        sdc_tensor *t = &f->tensors[f->count];
        if (!(t->name = sdc_strdup(key)))
            return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", f->path);
        t->file = f;
        order[f->count].t = t;
        f->count++; /* from here on, close frees the name */
        sdc_status st = parse_tensor(f->path, key, value, t, &order[f->count - 1].begin, err);
        if (st) return st;
    }
    return SDC_OK;
}

/* Rebuilds f->tensors in data-offset order with data pointers, and the by-name index. */
static sdc_status finish_layout(sdc_st_file *f, const pending *order, const uint8_t *data,
                                sdc_err *err) {
    sdc_tensor *sorted = sdc_calloc(f->count, sizeof *sorted);
    f->by_name = sdc_calloc(f->count, sizeof *f->by_name);
    if (!sorted || !f->by_name) {
        sdc_free(sorted);
        return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", f->path);
    }
    for (size_t i = 0; i < f->count; i++) {
        sorted[i] = *order[i].t;
        sorted[i].data = data + order[i].begin;
        f->by_name[i] = &sorted[i];
    }
    sdc_free(f->tensors);
    f->tensors = sorted;
    qsort(f->by_name, f->count, sizeof *f->by_name, cmp_by_name);
    return SDC_OK;
}

/* Fills f->tensors from the header object and proves the layout valid. */
static sdc_status load_tensors(sdc_st_file *f, json_t *header, const uint8_t *data,
                               uint64_t data_size, sdc_err *err) {
    size_t n = json_object_size(header);
    f->tensors = sdc_calloc(n, sizeof *f->tensors);
    pending *order = sdc_calloc(n, sizeof *order);
    sdc_status st;
    if (!f->tensors || !order)
        st = sdc_fail(err, SDC_E_NOMEM, "%s: out of memory for %zu header entries", f->path, n);
    else if (!(st = parse_entries(f, header, order, err))) {
        qsort(order, f->count, sizeof *order, cmp_by_offset);
        if (!(st = check_tiling(f->path, order, f->count, data_size, err)))
            st = finish_layout(f, order, data, err);
    }
    sdc_free(order);
    return st;
}

/* ---- open / close ------------------------------------------------------------------- */

/* Maps the file read-only (io/mapfile.c); its message goes through st_fail to stay on one line. */
static sdc_status map_file(sdc_st_file *f, sdc_err *err) {
    sdc_err e = {0};
    sdc_mapped_file mf;
    if (sdc_map_file(f->path, 8, "8-byte header length", false, &mf, &e)) return sdc_fail(err, e.code, "%s", e.msg);
    f->map = mf.data;
    f->map_size = mf.size;
    return SDC_OK;
}

sdc_status sdc_st_open(const char *path, sdc_st_file **out, sdc_err *err) {
    *out = NULL;
    sdc_st_file *f = sdc_calloc(1, sizeof *f);
    if (!f || !(f->path = sdc_strdup(path))) {
        sdc_free(f);
        return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", path);
    }
    sdc_status st = map_file(f, err);
    json_t *header = NULL;
    if (!st) {
        uint64_t n = sdc_load_le(f->map, 8), size = f->map_size;
        if (n > SDC_ST_MAX_HEADER)
            st = sdc_fail(err, SDC_E_FORMAT,
                         "%s: header length %llu exceeds the limit of %u bytes (not a "
                         "safetensors file?)",
                         path, (unsigned long long)n, SDC_ST_MAX_HEADER);
        else if (8 + n > size)
            st = sdc_fail(err, SDC_E_FORMAT,
                         "%s: header length %llu runs past the end of the file (%llu bytes; "
                         "truncated?)",
                         path, (unsigned long long)n, (unsigned long long)size);
        else if (!(st = parse_header_json(path, f->map + 8, (size_t)n, &header, err)))
            st = load_tensors(f, header, f->map + 8 + n, size - 8 - n, err);
    }
    json_decref(header);
    if (st) {
        sdc_st_close(f);
        return st;
    }
    *out = f;
    return SDC_OK;
}

void sdc_st_close(sdc_st_file *f) {
    if (!f) return;
    for (size_t i = 0; i < f->count; i++) sdc_free((char *)f->tensors[i].name);
    sdc_free(f->tensors);
    sdc_free(f->by_name);
    sdc_unmap_file(&(sdc_mapped_file){.data = f->map, .size = f->map_size});
    sdc_free(f->path);
    sdc_free(f);
}

sdc_status sdc_st_adopt(const char *path, const uint8_t *map, size_t map_size, sdc_tensor *tensors, size_t count,
                        sdc_st_file **out, sdc_err *err) {
    *out = NULL;
    sdc_st_file *f = sdc_calloc(1, sizeof *f);
    if (f) *f = (sdc_st_file){.path = sdc_strdup(path), .map = map, .map_size = map_size, .count = count,
                              .tensors = tensors, .by_name = sdc_calloc(count ? count : 1, sizeof *f->by_name)};
    if (!f || !f->path || !f->by_name) {
        if (!f) { /* close would have freed these */
            for (size_t i = 0; i < count; i++) sdc_free((char *)tensors[i].name);
            sdc_free(tensors);
            sdc_unmap_file(&(sdc_mapped_file){.data = map, .size = map_size});
        }
        sdc_st_close(f);
        return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", path);
    }
    for (size_t i = 0; i < count; i++) {
        tensors[i].file = f;
        f->by_name[i] = &tensors[i];
    }
    qsort(f->by_name, count, sizeof *f->by_name, cmp_by_name);
    for (size_t i = 1; i < count; i++)
        if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0) {
            sdc_fail(err, SDC_E_FORMAT, "%s: tensor '%s' appears twice", path, f->by_name[i]->name);
            sdc_st_close(f);
            return SDC_E_FORMAT;
        }
    *out = f;
    return SDC_OK;
}

/* ---- queries ------------------------------------------------------------------------ */

const char *sdc_st_path(const sdc_st_file *f) { return f->path; }
size_t sdc_st_count(const sdc_st_file *f) { return f->count; }

const sdc_tensor *sdc_st_at(const sdc_st_file *f, size_t i) {
    return i < f->count ? &f->tensors[i] : NULL;
}

const sdc_tensor *sdc_st_find(const sdc_st_file *f, const char *name) {
    sdc_tensor key = {.name = name};
    const sdc_tensor *kp = &key;
    const sdc_tensor **hit = bsearch(&kp, f->by_name, f->count, sizeof *f->by_name, cmp_by_name);
    return hit ? *hit : NULL;
}

float sdc_tensor_get_f32(const sdc_tensor *t, uint64_t i) {
    SDC_ASSERT(i < t->numel);
    size_t size = sdc_dtype_size(t->dtype);
    uint64_t bits = sdc_load_le(t->data + i * size, size);
    switch (t->dtype) {
    case SDC_DT_F32: {
        uint32_t u = (uint32_t)bits;
        float v;
        memcpy(&v, &u, sizeof v);
        return v;
    }
    case SDC_DT_F64: {
        double v;
        memcpy(&v, &bits, sizeof v);
        return (float)v;
    }
    case SDC_DT_F16: return sdc_f16_to_f32((uint16_t)bits);
    case SDC_DT_BF16: return sdc_bf16_to_f32((uint16_t)bits);
    default: SDC_ASSERT(!"sdc_tensor_get_f32 on a non-float tensor"); return 0.0f;
    }
}

/* Streaming a model touches every page of its mapping once; without this, those file pages
   would stay in the process's resident set and peak RSS would grow to the model size. */
void sdc_tensor_release(const sdc_tensor *t) {
    if (!t || !t->nbytes) return;
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t begin = (uintptr_t)t->data & ~(uintptr_t)(page - 1);
    uintptr_t end = ((uintptr_t)t->data + t->nbytes + (uintptr_t)page - 1) & ~(uintptr_t)(page - 1);
    uintptr_t map_end = (uintptr_t)t->file->map + t->file->map_size;
    /* a view derived from the file into memory of its own (single_file.c's transposed copy) is
       not the file's to drop */
    if ((uintptr_t)t->data < (uintptr_t)t->file->map || (uintptr_t)t->data >= map_end) return;
    if (end > map_end) end = map_end; /* the mapping's last page may be partial */
    if (end > begin) madvise((void *)begin, end - begin, MADV_DONTNEED);
}
