/*
 * zip.c — a minimal, strict reader of stored ZIP archives (see zip.h). The record layouts are
 * those of PKWARE's APPNOTE.TXT (§4.3: local header, central directory header, ZIP64 end of
 * central directory record and locator, end of central directory record; §4.5.3: the ZIP64
 * extended information extra field).
 */
#include "io/zip.h"

enum {
    SIG_LOCAL = 0x04034b50,
    SIG_CENTRAL = 0x02014b50,
    SIG_EOCD = 0x06054b50,
    SIG_EOCD64 = 0x06064b50,
    SIG_EOCD64_LOCATOR = 0x07064b50,
    LOCAL_SIZE = 30,
    CENTRAL_SIZE = 46,
    EOCD_SIZE = 22,
    EOCD64_SIZE = 56,
    LOCATOR_SIZE = 20,
    EXTRA_ZIP64 = 0x0001,
    FLAG_ENCRYPTED = 0x0001,
    METHOD_STORED = 0,
};

/* Where an entry's data are, before the views are made. */
typedef struct entry_pos {
    uint64_t local;      /* offset of the local header */
    uint64_t data_begin; /* offset of the data */
    size_t index;        /* in directory order */
} entry_pos;

struct sdc_zip {
    const char *path;
    const uint8_t *map;
    uint64_t size;
    size_t count;
    sdc_zip_entry *entries;       /* directory order */
    const sdc_zip_entry **by_name; /* for sdc_zip_find */
};

/* Whether [off, off + len) lies inside [0, limit). */
static bool within(uint64_t off, uint64_t len, uint64_t limit) {
    return off <= limit && len <= limit - off;
}

/* ---- end of central directory --------------------------------------------------------- */

typedef struct directory {
    uint64_t entries, offset, size;
    uint64_t end; /* where the directory must end: the first end record */
} directory;

/* The end record is the last thing in the file, followed only by its comment: searched from the
   end back over at most a maximal comment. */
static sdc_status find_eocd(const sdc_zip *z, uint64_t *at, sdc_err *err) {
    if (z->size < EOCD_SIZE) return sdc_fail(err, SDC_E_FORMAT, "%s: too short for a ZIP archive", z->path);
    uint64_t last = z->size - EOCD_SIZE, first = last > 0xFFFF ? last - 0xFFFF : 0;
    for (uint64_t p = last + 1; p-- > first;) {
        if (sdc_load_le(z->map + p, 4) == SIG_EOCD && sdc_load_le(z->map + p + 20, 2) == z->size - p - EOCD_SIZE) {
            *at = p;
            return SDC_OK;
        }
    }
    return sdc_fail(err, SDC_E_FORMAT, "%s: no ZIP end of central directory record (truncated?)", z->path);
}

static sdc_status read_eocd64(const sdc_zip *z, uint64_t eocd, directory *d, sdc_err *err) {
    const uint8_t *loc = z->map + eocd - LOCATOR_SIZE;
    uint64_t off = sdc_load_le(loc + 8, 8);
    if (sdc_load_le(loc + 4, 4) != 0 || sdc_load_le(loc + 16, 4) > 1)
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: multi-disk ZIP archives are not supported", z->path);
    if (!within(off, EOCD64_SIZE, eocd - LOCATOR_SIZE) || sdc_load_le(z->map + off, 4) != SIG_EOCD64)
        return sdc_fail(err, SDC_E_FORMAT, "%s: ZIP64 end of central directory record offset %llu is invalid",
                        z->path, (unsigned long long)off);
    const uint8_t *r = z->map + off;
    if (sdc_load_le(r + 16, 4) != 0 || sdc_load_le(r + 20, 4) != 0 || sdc_load_le(r + 24, 8) != sdc_load_le(r + 32, 8))
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: multi-disk ZIP archives are not supported", z->path);
    d->entries = sdc_load_le(r + 32, 8);
    d->size = sdc_load_le(r + 40, 8);
    d->offset = sdc_load_le(r + 48, 8);
    d->end = off;
    return SDC_OK;
}

static sdc_status read_directory_end(const sdc_zip *z, directory *d, sdc_err *err) {
    uint64_t eocd = 0;
    sdc_status st = find_eocd(z, &eocd, err);
    if (st) return st;
    const uint8_t *r = z->map + eocd;
    if (eocd >= LOCATOR_SIZE && sdc_load_le(z->map + eocd - LOCATOR_SIZE, 4) == SIG_EOCD64_LOCATOR)
        return read_eocd64(z, eocd, d, err);
    if (sdc_load_le(r + 4, 2) != 0 || sdc_load_le(r + 6, 2) != 0 || sdc_load_le(r + 8, 2) != sdc_load_le(r + 10, 2))
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: multi-disk ZIP archives are not supported", z->path);
    d->entries = sdc_load_le(r + 10, 2);
    d->size = sdc_load_le(r + 12, 4);
    d->offset = sdc_load_le(r + 16, 4);
    d->end = eocd;
    return SDC_OK;
}

/* ---- central directory ---------------------------------------------------------------- */

/* Replaces the 32-bit fields saturated at 0xFFFFFFFF by their ZIP64 extra values, in the
   order APPNOTE §4.5.3 gives (uncompressed, compressed, local header offset). */
static sdc_status apply_zip64_extra(const sdc_zip *z, const char *name, const uint8_t *extra, size_t len,
                                    uint64_t *usize, uint64_t *csize, uint64_t *local, sdc_err *err) {
    for (size_t at = 0; at + 4 <= len;) {
        uint64_t id = sdc_load_le(extra + at, 2), n = sdc_load_le(extra + at + 2, 2);
        if (n > len - at - 4) break; /* checked below */
        if (id == EXTRA_ZIP64) {
            uint64_t *fields[] = {usize, csize, local};
            size_t used = 0;
            for (size_t i = 0; i < SDC_COUNT_OF(fields); i++) {
                if (*fields[i] != 0xFFFFFFFFu) continue;
                if (used + 8 > n)
                    return sdc_fail(err, SDC_E_FORMAT, "%s: ZIP entry '%s': ZIP64 extra field too short", z->path,
                                    name);
                *fields[i] = sdc_load_le(extra + at + 4 + used, 8);
                used += 8;
            }
        }
        at += 4 + n;
        if (at > len)
            return sdc_fail(err, SDC_E_FORMAT, "%s: ZIP entry '%s': extra field runs past its end", z->path, name);
    }
    return SDC_OK;
}

/* Checks the local header of an entry and finds its data. */
static sdc_status read_local(const sdc_zip *z, const sdc_zip_entry *e, uint64_t local, uint64_t cd_offset,
                             uint64_t method, uint64_t *data_begin, sdc_err *err) {
    if (!within(local, LOCAL_SIZE, cd_offset) || sdc_load_le(z->map + local, 4) != SIG_LOCAL)
        return sdc_fail(err, SDC_E_FORMAT, "%s: ZIP entry '%s': no local header at offset %llu", z->path, e->name,
                        (unsigned long long)local);
    const uint8_t *h = z->map + local;
    uint64_t nlen = sdc_load_le(h + 26, 2), elen = sdc_load_le(h + 28, 2), name_len = strlen(e->name);
    if (nlen != name_len || !within(local + LOCAL_SIZE, nlen + elen, cd_offset) ||
        memcmp(h + LOCAL_SIZE, e->name, name_len) != 0)
        return sdc_fail(err, SDC_E_FORMAT, "%s: ZIP entry '%s': local header disagrees with the central directory",
                        z->path, e->name);
    if (sdc_load_le(h + 8, 2) != method)
        return sdc_fail(err, SDC_E_FORMAT, "%s: ZIP entry '%s': local header method disagrees with the central "
                        "directory", z->path, e->name);
    *data_begin = local + LOCAL_SIZE + nlen + elen;
    if (!within(*data_begin, e->size, cd_offset))
        return sdc_fail(err, SDC_E_FORMAT,
                        "%s: ZIP entry '%s': %llu bytes at offset %llu run past the central directory (truncated?)",
                        z->path, e->name, (unsigned long long)e->size, (unsigned long long)*data_begin);
    return SDC_OK;
}

/* Reads one central-directory header at *at, advancing it. */
static sdc_status read_central(sdc_zip *z, const directory *d, uint64_t *at, sdc_zip_entry *e, entry_pos *pos,
                               sdc_err *err) {
    uint64_t end = d->offset + d->size;
    if (!within(*at, CENTRAL_SIZE, end) || sdc_load_le(z->map + *at, 4) != SIG_CENTRAL)
        return sdc_fail(err, SDC_E_FORMAT, "%s: ZIP central directory header %zu is invalid", z->path, pos->index);
    const uint8_t *h = z->map + *at;
    uint64_t flags = sdc_load_le(h + 8, 2), method = sdc_load_le(h + 10, 2);
    uint64_t csize = sdc_load_le(h + 20, 4), usize = sdc_load_le(h + 24, 4);
    uint64_t nlen = sdc_load_le(h + 28, 2), elen = sdc_load_le(h + 30, 2), clen = sdc_load_le(h + 32, 2);
    uint64_t local = sdc_load_le(h + 42, 4);
    if (!within(*at + CENTRAL_SIZE, nlen + elen + clen, end))
        return sdc_fail(err, SDC_E_FORMAT, "%s: ZIP central directory header %zu runs past the directory", z->path,
                        pos->index);
    const uint8_t *name = h + CENTRAL_SIZE;
    if (nlen == 0 || memchr(name, 0, nlen))
        return sdc_fail(err, SDC_E_FORMAT, "%s: ZIP entry %zu has an empty or invalid name", z->path, pos->index);
    char *copy = sdc_malloc(nlen + 1);
    if (!copy) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", z->path);
    memcpy(copy, name, nlen);
    copy[nlen] = 0;
    e->name = copy;
    z->count++; /* from here on, close frees the name */
    sdc_status st = apply_zip64_extra(z, copy, name + nlen, elen, &usize, &csize, &local, err);
    if (st) return st;
    if (sdc_load_le(h + 34, 2) != 0 && sdc_load_le(h + 34, 2) != 0xFFFF)
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: multi-disk ZIP archives are not supported", z->path);
    if (flags & FLAG_ENCRYPTED)
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: ZIP entry '%s' is encrypted", z->path, copy);
    if (method != METHOD_STORED)
        return sdc_fail(err, SDC_E_UNSUPPORTED,
                        "%s: ZIP entry '%s' is compressed (method %llu); checkpoints written by torch.save store "
                        "their entries uncompressed",
                        z->path, copy, (unsigned long long)method);
    if (csize != usize)
        return sdc_fail(err, SDC_E_FORMAT, "%s: ZIP entry '%s' is stored but its sizes differ (%llu, %llu)", z->path,
                        copy, (unsigned long long)csize, (unsigned long long)usize);
    e->size = usize;
    pos->local = local;
    if ((st = read_local(z, e, local, d->offset, method, &pos->data_begin, err))) return st;
    *at += CENTRAL_SIZE + nlen + elen + clen;
    return SDC_OK;
}

static int cmp_by_local(const void *a, const void *b) {
    const entry_pos *x = a, *y = b;
    return x->local < y->local ? -1 : x->local > y->local;
}

static int cmp_by_name(const void *a, const void *b) {
    const sdc_zip_entry *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* Entries may not share bytes: sorted by local header, each one's data end before the next. */
static sdc_status check_overlaps(const sdc_zip *z, entry_pos *pos, sdc_err *err) {
    qsort(pos, z->count, sizeof *pos, cmp_by_local);
    for (size_t i = 1; i < z->count; i++) {
        const sdc_zip_entry *prev = &z->entries[pos[i - 1].index];
        if (pos[i].local < pos[i - 1].data_begin + prev->size)
            return sdc_fail(err, SDC_E_FORMAT, "%s: ZIP entries '%s' and '%s' overlap", z->path, prev->name,
                            z->entries[pos[i].index].name);
    }
    return SDC_OK;
}

static sdc_status index_names(sdc_zip *z, sdc_err *err) {
    z->by_name = sdc_calloc(z->count ? z->count : 1, sizeof *z->by_name);
    if (!z->by_name) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", z->path);
    for (size_t i = 0; i < z->count; i++) z->by_name[i] = &z->entries[i];
    qsort(z->by_name, z->count, sizeof *z->by_name, cmp_by_name);
    for (size_t i = 1; i < z->count; i++)
        if (strcmp(z->by_name[i - 1]->name, z->by_name[i]->name) == 0)
            return sdc_fail(err, SDC_E_FORMAT, "%s: ZIP entry '%s' appears twice", z->path, z->by_name[i]->name);
    return SDC_OK;
}

static sdc_status read_entries(sdc_zip *z, const directory *d, sdc_err *err) {
    if (!within(d->offset, d->size, d->end))
        return sdc_fail(err, SDC_E_FORMAT, "%s: ZIP central directory (offset %llu, %llu bytes) lies outside the file",
                        z->path, (unsigned long long)d->offset, (unsigned long long)d->size);
    if (d->entries > SDC_ZIP_MAX_ENTRIES || d->entries > d->size / CENTRAL_SIZE + 1)
        return sdc_fail(err, SDC_E_FORMAT, "%s: ZIP archive claims %llu entries", z->path,
                        (unsigned long long)d->entries);
    size_t n = (size_t)d->entries;
    z->entries = sdc_calloc(n ? n : 1, sizeof *z->entries);
    entry_pos *pos = sdc_calloc(n ? n : 1, sizeof *pos);
    sdc_status st = SDC_OK;
    if (!z->entries || !pos) st = sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", z->path);
    uint64_t at = d->offset;
    for (size_t i = 0; !st && i < n; i++) {
        pos[i].index = i;
        st = read_central(z, d, &at, &z->entries[i], &pos[i], err);
        if (!st) z->entries[i].data = z->map + pos[i].data_begin;
    }
    if (!st && at != d->offset + d->size)
        st = sdc_fail(err, SDC_E_FORMAT, "%s: ZIP central directory has %llu bytes after its %zu entries", z->path,
                      (unsigned long long)(d->offset + d->size - at), n);
    if (!st) st = check_overlaps(z, pos, err);
    sdc_free(pos);
    return st ? st : index_names(z, err);
}

/* ---- open / close / queries ------------------------------------------------------------ */

sdc_status sdc_zip_open(const char *path, const uint8_t *map, size_t size, sdc_zip **out, sdc_err *err) {
    *out = NULL;
    sdc_zip *z = sdc_calloc(1, sizeof *z);
    if (!z) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", path);
    *z = (sdc_zip){.path = path, .map = map, .size = size};
    directory d = {0};
    sdc_status st = read_directory_end(z, &d, err);
    if (!st) st = read_entries(z, &d, err);
    if (st) {
        sdc_zip_close(z);
        return st;
    }
    z->path = NULL; /* borrowed for messages during open only */
    *out = z;
    return SDC_OK;
}

void sdc_zip_close(sdc_zip *z) {
    if (!z) return;
    for (size_t i = 0; i < z->count; i++) sdc_free((char *)z->entries[i].name);
    sdc_free(z->entries);
    sdc_free(z->by_name);
    sdc_free(z);
}

size_t sdc_zip_count(const sdc_zip *z) { return z->count; }

const sdc_zip_entry *sdc_zip_at(const sdc_zip *z, size_t i) { return i < z->count ? &z->entries[i] : NULL; }

const sdc_zip_entry *sdc_zip_find(const sdc_zip *z, const char *name) {
    sdc_zip_entry key = {.name = name};
    const sdc_zip_entry *kp = &key;
    const sdc_zip_entry **hit = bsearch(&kp, z->by_name, z->count, sizeof *z->by_name, cmp_by_name);
    return hit ? *hit : NULL;
}
