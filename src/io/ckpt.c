/*
 * ckpt.c — PyTorch checkpoints without running their pickles (see ckpt.h). The layouts are
 * those torch/serialization.py writes (_save for the zip format, _legacy_save for the legacy
 * one) and reads back (_load, _legacy_load).
 */
#include "io/ckpt.h"

#include "arena.h"
#include "io/mapfile.h"
#include "io/pickle.h"
#include "io/zip.h"
#include "strmap.h"

#include <strings.h>

/* One storage a persistent id names: in the zip format an entry data/<key>; in the legacy
   format a block after the pickles, or a view of another storage. */
typedef struct storage_rec {
    const char *key;
    sdc_dtype dtype;
    uint64_t numel;       /* elements, as the persistent id says */
    const uint8_t *data;  /* NULL until found */
    uint64_t nbytes;
    bool is_view;         /* legacy storage view: a slice of `root` */
    size_t root;
    uint64_t view_offset; /* elements */
} storage_rec;

/* A tensor found while walking the dicts, checked once its storage has data. */
typedef struct found_tensor {
    char *name;
    const sdc_pk_tensor *t;
} found_tensor;

typedef struct ckpt {
    const char *path;
    char where[1024]; /* "path: entry" for the VM's messages */
    sdc_mapped_file map;
    sdc_zip *zip;
    char prefix[512]; /* "<archive>/" */
    bool legacy, in_main_pickle;
    sdc_arena arena;
    storage_rec *st;
    size_t nst, st_cap;
    sdc_strmap by_key;
    found_tensor *found;
    size_t nfound, found_cap;
    size_t visits, name_bytes;
} ckpt;

/* The legacy format's first pickle: torch/serialization.py's MAGIC_NUMBER, little-endian. */
static const uint8_t LEGACY_MAGIC[] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
#define LEGACY_PROTOCOL_VERSION 1001

static void set_where(ckpt *c, sdc_pk_vm *vm, const char *what) {
    snprintf(c->where, sizeof c->where, "%s: %s", c->path, what);
    sdc_pk_vm_set_where(vm, c->where);
}

/* ---- storages: persistent ids ------------------------------------------------------------ */

static const char *text_of(const sdc_pk_obj *o) {
    return o && (o->kind == SDC_PK_STR || o->kind == SDC_PK_BYTES) && strlen(o->u.str.s) == o->u.str.len ? o->u.str.s
                                                                                                       : NULL;
}

static sdc_status add_storage(ckpt *c, const char *key, sdc_dtype dtype, uint64_t numel, size_t *index,
                              sdc_err *err) {
    if (c->nst == c->st_cap) {
        size_t cap = c->st_cap ? c->st_cap * 2 : 64;
        storage_rec *s = sdc_realloc(c->st, cap * sizeof *s);
        if (!s) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", c->path);
        c->st = s;
        c->st_cap = cap;
    }
    char *k = sdc_arena_strdup(&c->arena, key);
    if (!k || !sdc_strmap_put(&c->by_key, k, (int)c->nst)) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", c->path);
    c->st[c->nst] = (storage_rec){.key = k, .dtype = dtype, .numel = numel};
    *index = c->nst++;
    return SDC_OK;
}

/* The zip format keeps storage <key> in <archive>/data/<key>, numel elements of its dtype. */
static sdc_status find_zip_storage(ckpt *c, storage_rec *s, sdc_err *err) {
    char name[1024];
    if (!sdc_fmt(name, sizeof name, "%sdata/%s", c->prefix, s->key))
        return sdc_fail(err, SDC_E_FORMAT, "%s: storage key '%.64s...' is too long", c->path, s->key);
    const sdc_zip_entry *e = sdc_zip_find(c->zip, name);
    if (!e) return sdc_fail(err, SDC_E_FORMAT, "%s: storage '%s': no entry '%s' in the archive", c->path, s->key, name);
    if (e->size != s->nbytes)
        return sdc_fail(err, SDC_E_FORMAT, "%s: storage '%s': entry '%s' has %llu bytes but %llu elements of %s need %llu",
                        c->path, s->key, name, (unsigned long long)e->size, (unsigned long long)s->numel,
                        sdc_dtype_name(s->dtype), (unsigned long long)s->nbytes);
    s->data = e->data;
    return SDC_OK;
}

/* A legacy view (view_key, offset, size) of a root storage, all in elements. */
static sdc_status add_legacy_view(ckpt *c, size_t root, const sdc_pk_obj *view, size_t *index, sdc_err *err) {
    sdc_pk_obj *const *v = view->u.seq.items;
    const char *key = view->u.seq.n == 3 ? text_of(v[0]) : NULL;
    if (!key || v[1]->kind != SDC_PK_INT || v[2]->kind != SDC_PK_INT || v[1]->u.i < 0 || v[2]->u.i < 0)
        return sdc_fail(err, SDC_E_FORMAT, "%s: storage '%s': view metadata is not (key, offset, size)", c->path,
                        c->st[root].key);
    int known = sdc_strmap_get(&c->by_key, key);
    if (known >= 0) {
        *index = (size_t)known;
        return SDC_OK;
    }
    sdc_status st = add_storage(c, key, c->st[root].dtype, (uint64_t)v[2]->u.i, index, err);
    if (st) return st;
    c->st[*index].is_view = true;
    c->st[*index].root = root;
    c->st[*index].view_offset = (uint64_t)v[1]->u.i;
    return SDC_OK;
}

/* ('storage', storage_type, key, location, numel) — and a sixth item, view metadata or None,
   in the legacy format. */
static sdc_status persistent_load(void *user, sdc_pk_vm *vm, const sdc_pk_obj *pid, sdc_pk_obj **out, sdc_err *err) {
    ckpt *c = user;
    size_t want = c->legacy ? 6 : 5;
    const sdc_pk_obj *const *a = pid->kind == SDC_PK_TUPLE ? (const sdc_pk_obj *const *)pid->u.seq.items : NULL;
    const char *tag = a && pid->u.seq.n ? text_of(a[0]) : NULL;
    if (c->legacy && tag && strcmp(tag, "module") == 0) /* an nn.Module class saved with its source */
        return (*out = sdc_pk_new(vm, SDC_PK_OPAQUE, err)) ? ((*out)->u.opaque = "module", SDC_OK) : err->code;
    if (!c->in_main_pickle || !tag || strcmp(tag, "storage") || pid->u.seq.n != want)
        return sdc_fail(err, SDC_E_FORMAT, "%s: persistent id is not a ('storage', type, key, location, numel%s) tuple",
                        c->where, c->legacy ? ", view" : "");
    const char *key = text_of(a[2]);
    if (a[1]->kind != SDC_PK_GLOBAL || a[1]->u.global.fn != SDC_PK_FN_STORAGE_TYPE || !key || a[4]->kind != SDC_PK_INT ||
        a[4]->u.i < 0)
        return sdc_fail(err, SDC_E_FORMAT, "%s: persistent id is not a ('storage', type, key, location, numel) tuple",
                        c->where);
    sdc_dtype dtype = a[1]->u.global.dtype;
    if (dtype == SDC_DT_INVALID)
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: storage '%s': unsupported storage type torch.%s", c->path, key,
                        a[1]->u.global.name);
    int known = sdc_strmap_get(&c->by_key, key);
    size_t index = (size_t)known;
    sdc_status st = SDC_OK;
    if (known >= 0 && (c->st[index].dtype != dtype || c->st[index].numel != (uint64_t)a[4]->u.i))
        return sdc_fail(err, SDC_E_FORMAT, "%s: storage '%s' is named twice with different types or sizes", c->path,
                        key);
    if (known < 0) {
        if ((st = add_storage(c, key, dtype, (uint64_t)a[4]->u.i, &index, err))) return st;
        storage_rec *s = &c->st[index];
        if (!sdc_mul_u64(s->numel, sdc_dtype_size(dtype), &s->nbytes))
            return sdc_fail(err, SDC_E_FORMAT, "%s: storage '%s': size overflows 64 bits", c->path, key);
        if (!c->legacy && (st = find_zip_storage(c, s, err))) return st;
    }
    if (c->legacy && a[5]->kind == SDC_PK_TUPLE && (st = add_legacy_view(c, index, a[5], &index, err))) return st;
    if (c->legacy && a[5]->kind != SDC_PK_TUPLE && a[5]->kind != SDC_PK_NONE)
        return sdc_fail(err, SDC_E_FORMAT, "%s: storage '%s': view metadata is a %s", c->path, key,
                        sdc_pk_kind_name(a[5]->kind));
    sdc_pk_obj *o = sdc_pk_new(vm, SDC_PK_STORAGE, err);
    if (!o) return err->code;
    o->u.storage.index = index;
    o->u.storage.dtype = c->st[index].dtype;
    *out = o;
    return SDC_OK;
}

/* ---- names: walking the dicts ------------------------------------------------------------ */

static sdc_status add_found(ckpt *c, const char *name, const sdc_pk_tensor *t, sdc_err *err) {
    /* a shared dict is listed once per path to it, so a small file can name exponentially many
       tensors: bound their number and the bytes of their names */
    if (c->nfound >= SDC_CKPT_MAX_TENSORS)
        return sdc_fail(err, SDC_E_FORMAT, "%s: dicts list more than %u tensors", c->path, SDC_CKPT_MAX_TENSORS);
    c->name_bytes += strlen(name) + 1;
    if (c->name_bytes > SDC_CKPT_MAX_NAME_BYTES)
        return sdc_fail(err, SDC_E_FORMAT, "%s: tensor names take more than %u MiB", c->path,
                        SDC_CKPT_MAX_NAME_BYTES >> 20);
    if (c->nfound == c->found_cap) {
        size_t cap = c->found_cap ? c->found_cap * 2 : 256;
        found_tensor *f = sdc_realloc(c->found, cap * sizeof *f);
        if (!f) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", c->path);
        c->found = f;
        c->found_cap = cap;
    }
    char *copy = sdc_strdup(name);
    if (!copy) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", c->path);
    c->found[c->nfound++] = (found_tensor){copy, t};
    return SDC_OK;
}

/* Lists the tensors of a dict under prefix + key, recursing into dicts (see ckpt.h). Shared
   dicts are walked once per path to them, so the number of visits is bounded too. */
static sdc_status walk(ckpt *c, const sdc_pk_obj *d, char *name, size_t len, int depth, sdc_err *err) {
    if (depth > SDC_CKPT_MAX_DEPTH)
        return sdc_fail(err, SDC_E_FORMAT, "%s: dicts nest deeper than %d levels at '%.200s'", c->path,
                        SDC_CKPT_MAX_DEPTH, name);
    for (size_t i = 0; i < d->u.dict.n; i++) {
        const sdc_pk_obj *k = d->u.dict.keys[i], *v = d->u.dict.vals[i];
        if (++c->visits > SDC_PK_MAX_OBJECTS)
            return sdc_fail(err, SDC_E_FORMAT, "%s: dicts refer to each other more than %u times", c->path,
                            SDC_PK_MAX_OBJECTS);
        if (k->kind != SDC_PK_STR || (v->kind != SDC_PK_TENSOR && v->kind != SDC_PK_DICT)) continue;
        if (strlen(k->u.str.s) != k->u.str.len)
            return sdc_fail(err, SDC_E_FORMAT, "%s: key '%.200s' holds a NUL byte", c->path, k->u.str.s);
        size_t n = len + k->u.str.len + (v->kind == SDC_PK_DICT);
        if (n >= SDC_CKPT_MAX_NAME)
            return sdc_fail(err, SDC_E_FORMAT, "%s: tensor name '%.200s...' is longer than %d bytes", c->path, name,
                            SDC_CKPT_MAX_NAME);
        memcpy(name + len, k->u.str.s, k->u.str.len + 1);
        sdc_status st;
        if (v->kind == SDC_PK_TENSOR) {
            st = add_found(c, name, v->u.tensor, err);
        } else {
            name[n - 1] = '.';
            name[n] = 0;
            st = walk(c, v, name, n, depth + 1, err);
        }
        name[len] = 0;
        if (st) return st;
    }
    return SDC_OK;
}

static sdc_status list_tensors(ckpt *c, const sdc_pk_obj *root, sdc_err *err) {
    if (root->kind != SDC_PK_DICT)
        return sdc_fail(err, SDC_E_FORMAT, "%s: the checkpoint holds a %s, not a dict of tensors", c->path,
                        root->kind == SDC_PK_OPAQUE ? root->u.opaque : sdc_pk_kind_name(root->kind));
    /* unwrap nested state_dict entries (bounded: each step goes one dict deeper) */
    for (int i = 0; i <= SDC_CKPT_MAX_DEPTH; i++) {
        const sdc_pk_obj *inner = sdc_pk_dict_get(root, "state_dict");
        if (!inner || inner->kind != SDC_PK_DICT || inner == root) break;
        root = inner;
    }
    char name[SDC_CKPT_MAX_NAME] = "";
    return walk(c, root, name, 0, 0, err);
}

/* ---- tensors: the checks of a safetensors header, against the storage ----------------------- */

static sdc_status check_tensor(ckpt *c, const found_tensor *f, sdc_tensor *out, sdc_err *err) {
    const sdc_pk_tensor *t = f->t;
    const storage_rec *s = &c->st[t->storage->u.storage.index];
    char sbuf[256], tbuf[256];
    if (!s->data)
        return sdc_fail(err, SDC_E_FORMAT, "%s: tensor '%s': storage '%s' has no data in the file", c->path, f->name,
                        s->key);
    *out = (sdc_tensor){.name = f->name, .dtype = s->dtype, .rank = t->rank, .numel = 1};
    uint64_t esize = sdc_dtype_size(s->dtype), expect = 1;
    bool contiguous = true;
    for (int i = t->rank; i-- > 0;) {
        if (t->shape[i] < 0 || t->stride[i] < 0)
            return sdc_fail(err, SDC_E_FORMAT, "%s: tensor '%s': negative size or stride", c->path, f->name);
        out->shape[i] = t->shape[i];
        if (t->shape[i] != 1 && (uint64_t)t->stride[i] != expect) contiguous = false;
        if (!sdc_mul_u64(expect, (uint64_t)t->shape[i], &expect) ||
            !sdc_mul_u64(out->numel, (uint64_t)t->shape[i], &out->numel))
            return sdc_fail(err, SDC_E_FORMAT, "%s: tensor '%s': element count of shape %s overflows 64 bits", c->path,
                            f->name, sdc_shape_str(t->shape, t->rank, sbuf, sizeof sbuf));
    }
    if (out->numel && !contiguous)
        return sdc_fail(err, SDC_E_UNSUPPORTED,
                        "%s: tensor '%s': strides %s of shape %s are not contiguous (a transposed or sliced view); "
                        "save it with .contiguous()",
                        c->path, f->name, sdc_shape_str(t->stride, t->rank, tbuf, sizeof tbuf),
                        sdc_shape_str(t->shape, t->rank, sbuf, sizeof sbuf));
    uint64_t begin, end;
    if (t->offset < 0 || !sdc_mul_u64((uint64_t)t->offset, esize, &begin) ||
        !sdc_mul_u64(out->numel, esize, &out->nbytes) || !sdc_add_u64(begin, out->nbytes, &end) || end > s->nbytes)
        return sdc_fail(err, SDC_E_FORMAT,
                        "%s: tensor '%s': shape %s at storage offset %lld runs past the end of storage '%s' (%llu "
                        "elements of %s)",
                        c->path, f->name, sdc_shape_str(t->shape, t->rank, sbuf, sizeof sbuf), (long long)t->offset,
                        s->key, (unsigned long long)s->numel, sdc_dtype_name(s->dtype));
    out->data = s->data + begin;
    return SDC_OK;
}

/* ---- the zip format ----------------------------------------------------------------------- */

/* torch's reader takes the archive folder from the first entry's name. */
static sdc_status find_archive(ckpt *c, sdc_err *err) {
    const sdc_zip_entry *first = sdc_zip_at(c->zip, 0);
    const char *slash = first ? strchr(first->name, '/') : NULL;
    if (!slash || (size_t)(slash - first->name) + 2 > sizeof c->prefix)
        return sdc_fail(err, SDC_E_FORMAT, "%s: a ZIP archive but not a PyTorch checkpoint (no archive folder)", c->path);
    memcpy(c->prefix, first->name, (size_t)(slash - first->name) + 1);
    c->prefix[slash - first->name + 1] = 0;
    char name[600];
    snprintf(name, sizeof name, "%sconstants.pkl", c->prefix);
    if (sdc_zip_find(c->zip, name))
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: a TorchScript archive (torch.jit.save), not a checkpoint", c->path);
    snprintf(name, sizeof name, "%sbyteorder", c->prefix);
    const sdc_zip_entry *bo = sdc_zip_find(c->zip, name);
    if (bo && !(bo->size == 6 && memcmp(bo->data, "little", 6) == 0)) {
        bool big = bo->size == 3 && memcmp(bo->data, "big", 3) == 0;
        return sdc_fail(err, big ? SDC_E_UNSUPPORTED : SDC_E_FORMAT, "%s: %s: %s", c->path, name,
                        big ? "big-endian checkpoints are not supported" : "neither 'little' nor 'big'");
    }
    return SDC_OK;
}

static sdc_status read_zip(ckpt *c, sdc_pk_vm *vm, sdc_pk_obj **root, sdc_err *err) {
    sdc_status st = sdc_zip_open(c->path, c->map.data, c->map.size, &c->zip, err);
    if (st || (st = find_archive(c, err))) return st;
    char name[600];
    snprintf(name, sizeof name, "%sdata.pkl", c->prefix);
    const sdc_zip_entry *pkl = sdc_zip_find(c->zip, name);
    if (!pkl) return sdc_fail(err, SDC_E_FORMAT, "%s: no '%s' in the archive", c->path, name);
    set_where(c, vm, name);
    c->in_main_pickle = true;
    return sdc_pk_load(vm, pkl->data, pkl->size, NULL, root, err);
}

/* ---- the legacy format -------------------------------------------------------------------- */

/* One of the pickles before the main one. */
static sdc_status legacy_header_pickle(ckpt *c, sdc_pk_vm *vm, size_t *at, const char *what, sdc_pk_obj **out,
                                       sdc_err *err) {
    size_t used;
    set_where(c, vm, what);
    sdc_status st = sdc_pk_load(vm, c->map.data + *at, c->map.size - *at, &used, out, err);
    *at += used * !st;
    return st;
}

static sdc_status read_legacy_header(ckpt *c, sdc_pk_vm *vm, size_t *at, sdc_err *err) {
    sdc_pk_obj *magic, *version, *info;
    sdc_err e = {0};
    sdc_status st = legacy_header_pickle(c, vm, at, "magic number", &magic, &e);
    if (st == SDC_E_NOMEM) return sdc_fail(err, st, "%s", e.msg);
    if (st || magic->kind != SDC_PK_BIGINT || magic->u.str.len != sizeof LEGACY_MAGIC ||
        memcmp(magic->u.str.s, LEGACY_MAGIC, sizeof LEGACY_MAGIC))
        return sdc_fail(err, SDC_E_FORMAT, "%s: not a PyTorch checkpoint (neither a zip archive nor the legacy "
                        "format's magic number)", c->path);
    if ((st = legacy_header_pickle(c, vm, at, "protocol version", &version, err))) return st;
    if (version->kind != SDC_PK_INT || version->u.i != LEGACY_PROTOCOL_VERSION)
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: legacy checkpoint protocol version is not %d", c->path,
                        LEGACY_PROTOCOL_VERSION);
    if ((st = legacy_header_pickle(c, vm, at, "sys info", &info, err))) return st;
    const sdc_pk_obj *little = sdc_pk_dict_get(info, "little_endian");
    if (info->kind != SDC_PK_DICT || (little && !(little->kind == SDC_PK_BOOL && little->u.b)))
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: big-endian checkpoints are not supported", c->path);
    return SDC_OK;
}

/* After the main pickle: the list of storage keys, then each storage as an 8-byte element count
   and its bytes, in that order. Views get their bytes from their roots. */
static sdc_status read_legacy_storages(ckpt *c, sdc_pk_vm *vm, size_t at, sdc_err *err) {
    sdc_pk_obj *keys;
    sdc_status st = legacy_header_pickle(c, vm, &at, "storage key list", &keys, err);
    if (st) return st;
    if (keys->kind != SDC_PK_LIST) return sdc_fail(err, SDC_E_FORMAT, "%s: storage key list is a %s", c->path,
                                                   sdc_pk_kind_name(keys->kind));
    for (size_t i = 0; i < keys->u.seq.n; i++) {
        const char *key = text_of(keys->u.seq.items[i]);
        int idx = key ? sdc_strmap_get(&c->by_key, key) : -1;
        storage_rec *s = idx >= 0 ? &c->st[idx] : NULL;
        if (!s || s->is_view || s->data)
            return sdc_fail(err, SDC_E_FORMAT, "%s: storage key list: entry %zu is not a storage of the pickle, or "
                            "is listed twice", c->path, i);
        if (c->map.size - at < 8 || sdc_load_le(c->map.data + at, 8) != s->numel || c->map.size - at - 8 < s->nbytes)
            return sdc_fail(err, SDC_E_FORMAT, "%s: storage '%s': %llu elements of %s do not follow at offset %zu "
                            "(truncated?)", c->path, key, (unsigned long long)s->numel, sdc_dtype_name(s->dtype), at);
        s->data = c->map.data + at + 8;
        at += 8 + (size_t)s->nbytes;
    }
    if (at != c->map.size)
        return sdc_fail(err, SDC_E_FORMAT, "%s: %zu bytes after the last storage", c->path, c->map.size - at);
    for (size_t i = 0; i < c->nst; i++) {
        storage_rec *v = &c->st[i];
        const storage_rec *root = v->is_view ? &c->st[v->root] : NULL;
        uint64_t begin, end;
        if (!root || !root->data) continue;
        if (!sdc_mul_u64(v->view_offset, sdc_dtype_size(v->dtype), &begin) ||
            !sdc_mul_u64(v->numel, sdc_dtype_size(v->dtype), &v->nbytes) || !sdc_add_u64(begin, v->nbytes, &end) ||
            end > root->nbytes)
            return sdc_fail(err, SDC_E_FORMAT, "%s: storage view '%s' runs past the end of storage '%s'", c->path,
                            v->key, root->key);
        v->data = root->data + begin;
    }
    return SDC_OK;
}

static sdc_status read_legacy(ckpt *c, sdc_pk_vm *vm, sdc_pk_obj **root, sdc_err *err) {
    c->legacy = true;
    size_t at = 0, used;
    sdc_status st = read_legacy_header(c, vm, &at, err);
    if (st) return st;
    set_where(c, vm, "main pickle");
    c->in_main_pickle = true;
    st = sdc_pk_load(vm, c->map.data + at, c->map.size - at, &used, root, err);
    c->in_main_pickle = false;
    if (st || (st = list_tensors(c, *root, err))) return st;
    return read_legacy_storages(c, vm, at + used, err);
}

/* ---- open ---------------------------------------------------------------------------------- */

static void ckpt_free(ckpt *c) {
    sdc_zip_close(c->zip);
    for (size_t i = 0; i < c->nfound; i++) sdc_free(c->found[i].name);
    sdc_free(c->found);
    sdc_free(c->st);
    sdc_strmap_clear(&c->by_key);
    sdc_arena_free(&c->arena);
    sdc_unmap_file(&c->map);
}

/* Checks every tensor and hands them, their names and the mapping to a safetensors handle. */
static sdc_status finish(ckpt *c, sdc_st_file **out, sdc_err *err) {
    sdc_tensor *tensors = sdc_calloc(c->nfound ? c->nfound : 1, sizeof *tensors);
    if (!tensors) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", c->path);
    for (size_t i = 0; i < c->nfound; i++) {
        sdc_status st = check_tensor(c, &c->found[i], &tensors[i], err);
        if (st) {
            sdc_free(tensors);
            return st;
        }
    }
    size_t n = c->nfound;
    c->nfound = 0; /* the names now belong to the tensors */
    sdc_mapped_file map = c->map;
    c->map = (sdc_mapped_file){0};
    return sdc_st_adopt(c->path, map.data, map.size, tensors, n, out, err);
}

static bool starts_with(const sdc_mapped_file *m, const char *magic, size_t at) {
    size_t n = strlen(magic);
    return m->size >= at + n && memcmp(m->data + at, magic, n) == 0;
}

sdc_status sdc_ckpt_open(const char *path, sdc_st_file **out, sdc_err *err) {
    *out = NULL;
    ckpt c = {.path = path};
    sdc_arena_init(&c.arena);
    sdc_err e = {0};
    sdc_status st = sdc_map_file(path, 4, "PyTorch checkpoint header", false, &c.map, &e);
    if (st) return sdc_fail(err, e.code, "%s", e.msg);
    sdc_pk_vm *vm = sdc_pk_vm_new(path, persistent_load, &c);
    sdc_pk_obj *root = NULL;
    if (!vm) {
        st = sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", path);
    } else if (starts_with(&c.map, "PK\x03\x04", 0)) {
        if (!(st = read_zip(&c, vm, &root, err))) st = list_tensors(&c, root, err);
    } else if (starts_with(&c.map, "ustar", 257)) {
        st = sdc_fail(err, SDC_E_UNSUPPORTED, "%s: the tar-based format of torch < 0.4 is not supported", path);
    } else if (c.map.data[0] == 0x80) { /* PROTO: the legacy format's first pickle */
        st = read_legacy(&c, vm, &root, err);
    } else {
        st = sdc_fail(err, SDC_E_FORMAT, "%s: not a PyTorch checkpoint (neither a zip archive nor a pickle)", path);
    }
    if (!st) st = finish(&c, out, err);
    sdc_pk_vm_free(vm);
    ckpt_free(&c);
    return st;
}

bool sdc_ckpt_is_ckpt_path(const char *path) {
    static const char *const EXTENSIONS[] = {".ckpt", ".pt", ".pth"};
    size_t n = strlen(path);
    for (size_t i = 0; i < SDC_COUNT_OF(EXTENSIONS); i++) {
        size_t m = strlen(EXTENSIONS[i]);
        if (n > m && strcasecmp(path + n - m, EXTENSIONS[i]) == 0) return true;
    }
    return false;
}
