/* blob.c — blob storage v2: the streaming writer and the checked reader; see blob.h for the layout. */
#include "coreml/blob.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static uint64_t align_up(uint64_t x) { return (x + SDC_BLOB_ALIGN - 1) & ~(uint64_t)(SDC_BLOB_ALIGN - 1); }

uint64_t sdc_blob_next_record(uint64_t record, uint64_t nbytes) {
    return align_up(record + SDC_BLOB_HEADER + nbytes);
}

static sdc_status write_failed(const sdc_blob_writer *w, sdc_err *err) {
    return sdc_fail(err, SDC_E_IO, "%s: write failed: %s", w->path, errno ? strerror(errno) : "no space written");
}

/* Appends [p, p + n): through buf, except whole chunks that start at a chunk boundary with buf
   empty, which go straight to the file; so every write(2) but the last starts at a multiple of
   SDC_BLOB_WRITE_CHUNK and is a multiple of it long. */
static sdc_status write_bytes(sdc_blob_writer *w, const void *data, size_t n, sdc_err *err) {
    const uint8_t *p = data;
    while (n) {
        size_t k;
        errno = 0;
        if (w->fill == 0 && n >= SDC_BLOB_WRITE_CHUNK) {
            k = n / SDC_BLOB_WRITE_CHUNK * SDC_BLOB_WRITE_CHUNK;
            if (!sdc_write_all(w->fd, p, k)) return write_failed(w, err);
        } else {
            k = SDC_BLOB_WRITE_CHUNK - w->fill < n ? SDC_BLOB_WRITE_CHUNK - w->fill : n;
            memcpy(w->buf + w->fill, p, k);
            w->fill += k;
            if (w->fill == SDC_BLOB_WRITE_CHUNK) {
                if (!sdc_write_all(w->fd, w->buf, w->fill)) return write_failed(w, err);
                w->fill = 0;
            }
        }
        p += k;
        n -= k;
        w->pos += k;
    }
    return SDC_OK;
}

sdc_status sdc_blob_open(sdc_blob_writer *w, const char *path, sdc_err *err) {
    memset(w, 0, sizeof *w);
    w->path = path;
    w->buf = sdc_malloc(SDC_BLOB_WRITE_CHUNK);
    if (!w->buf) {
        w->fd = -1;
        return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory for the write buffer", path);
    }
    w->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (w->fd < 0) {
        sdc_blob_abort(w);
        return sdc_fail(err, SDC_E_IO, "%s: cannot create: %s", path, strerror(errno));
    }
    uint8_t header[SDC_BLOB_HEADER] = {0}; /* count is patched in sdc_blob_close */
    put_u32(header + 4, 2);
    return write_bytes(w, header, sizeof header, err);
}

sdc_status sdc_blob_begin(sdc_blob_writer *w, uint32_t code, uint64_t nbytes, uint64_t *record,
                          sdc_err *err) {
    return sdc_blob_begin_bits(w, code, nbytes, 0, record, err);
}

sdc_status sdc_blob_begin_bits(sdc_blob_writer *w, uint32_t code, uint64_t nbytes, uint32_t padding_bits,
                               uint64_t *record, sdc_err *err) {
    SDC_ASSERT(w->pending == 0 && code != 0 && padding_bits < 8);
    static const uint8_t zeros[SDC_BLOB_ALIGN];
    sdc_status s = write_bytes(w, zeros, (size_t)(align_up(w->pos) - w->pos), err);
    if (s) return s;
    uint8_t rec[SDC_BLOB_HEADER] = {0};
    put_u32(rec, SDC_BLOB_SENTINEL);
    put_u32(rec + 4, code);
    put_u64(rec + 8, nbytes);
    put_u64(rec + 16, w->pos + SDC_BLOB_HEADER);
    put_u64(rec + 24, padding_bits);
    *record = w->pos;
    if ((s = write_bytes(w, rec, sizeof rec, err))) return s;
    w->pending = nbytes;
    w->count++;
    return SDC_OK;
}

sdc_status sdc_blob_write(sdc_blob_writer *w, const void *data, size_t n, sdc_err *err) {
    SDC_ASSERT(n <= w->pending);
    w->pending -= n;
    return write_bytes(w, data, n, err);
}

sdc_status sdc_blob_close(sdc_blob_writer *w, sdc_err *err) {
    SDC_ASSERT(w->pending == 0);
    uint8_t count[4];
    put_u32(count, w->count);
    sdc_status s = SDC_OK;
    errno = 0;
    if (w->fill && !sdc_write_all(w->fd, w->buf, w->fill)) s = write_failed(w, err);
    if (!s && pwrite(w->fd, count, 4, 0) != 4)
        s = sdc_fail(err, SDC_E_IO, "%s: cannot write header: %s", w->path, errno ? strerror(errno) : "short write");
    if (close(w->fd) != 0 && !s) s = sdc_fail(err, SDC_E_IO, "%s: close failed: %s", w->path, strerror(errno));
    w->fd = -1;
    sdc_free(w->buf);
    w->buf = NULL;
    return s;
}

void sdc_blob_abort(sdc_blob_writer *w) {
    if (w->buf && w->fd >= 0) close(w->fd); /* buf: a writer that was opened, not one zeroed */
    w->fd = -1;
    sdc_free(w->buf);
    w->buf = NULL;
}

/* ---------------------------------------------------------------- reading */

sdc_status sdc_blob_file_open(const char *path, bool populate, sdc_blob_file *f, sdc_err *err) {
    memset(f, 0, sizeof *f);
    sdc_status s = sdc_map_file(path, SDC_BLOB_HEADER, "64-byte blob storage header", populate, &f->map, err);
    if (s) return s;
    uint32_t version = get_u32(f->map.data + 4);
    if (version != 2) {
        sdc_blob_file_close(f);
        return sdc_fail(err, SDC_E_FORMAT, "%s: blob storage version %u (expected 2)", path, version);
    }
    f->count = get_u32(f->map.data);
    return SDC_OK;
}

void sdc_blob_file_close(sdc_blob_file *f) { sdc_unmap_file(&f->map); }

bool sdc_blob_record_at(const sdc_blob_file *f, uint64_t offset, sdc_blob_record *r) {
    if (offset < SDC_BLOB_HEADER || offset > f->map.size - SDC_BLOB_HEADER) return false;
    const uint8_t *rec = f->map.data + offset; /* record layout: blob.h */
    r->sentinel_ok = get_u32(rec) == SDC_BLOB_SENTINEL;
    r->code = get_u32(rec + 4);
    r->size = get_u64(rec + 8);
    r->data = get_u64(rec + 16);
    r->padding_bits = get_u64(rec + 24);
    return true;
}

bool sdc_blob_data_inside(const sdc_blob_file *f, const sdc_blob_record *r) {
    return r->data <= f->map.size && r->size <= f->map.size - r->data;
}
