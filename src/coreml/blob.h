/*
 * blob.h — MIL blob storage v2 (weights/weight.bin): written as a stream, read through a
 * mapping (the interpreter and `inspect`).
 *
 * Layout: a 64-byte header {u32 count, u32 version = 2, 7 × u64 reserved}; then per blob a
 * 64-byte record {u32 0xDEADBEEF, u32 dtype code, u64 size in bytes, u64 data offset,
 * u64 padding bits, 4 × u64 reserved} immediately followed by the data. Every record starts
 * at a multiple of 64; the gap before it is zeros; the file ends right after the last data.
 * A BlobFileValue's offset is the offset of the record, not of the data.
 */
#ifndef SDC_BLOB_H
#define SDC_BLOB_H

#include "common.h"
#include "io/mapfile.h"

/* The dtype codes (SDC_BLOB_F16, ...) are in dtype.h, beside the dtypes they store. */
enum {
    SDC_BLOB_HEADER = 64,
    SDC_BLOB_ALIGN = 64,
    SDC_BLOB_SENTINEL = 0xDEADBEEF,
};

/* Offset of the record that follows a blob whose record is at `record` with `nbytes` data. */
uint64_t sdc_blob_next_record(uint64_t record, uint64_t nbytes);

/* The writer hands the file system whole chunks of this size at offsets that are multiples of
   it: Linux then keeps the file in its page cache as 2 MiB folios, which a reader maps with one
   entry each instead of 512 (the interpreter maps and drops every weight once per run). */
#define SDC_BLOB_WRITE_CHUNK ((size_t)4 << 20)

typedef struct sdc_blob_writer {
    int fd; /* -1 when closed */
    const char *path;
    uint8_t *buf;     /* SDC_BLOB_WRITE_CHUNK bytes, the file's bytes from its last chunk boundary */
    size_t fill;      /* bytes in buf */
    uint64_t pos;     /* bytes written so far */
    uint64_t pending; /* data bytes still expected for the current blob */
    uint32_t count;
} sdc_blob_writer;

sdc_status sdc_blob_open(sdc_blob_writer *w, const char *path, sdc_err *err);
/* Starts a blob of `nbytes`; *record receives the offset to put in the BlobFileValue. */
sdc_status sdc_blob_begin(sdc_blob_writer *w, uint32_t code, uint64_t nbytes, uint64_t *record, sdc_err *err);
/* The same for sub-byte data: `padding_bits` (< 8) are unused high bits of the last byte. */
sdc_status sdc_blob_begin_bits(sdc_blob_writer *w, uint32_t code, uint64_t nbytes, uint32_t padding_bits,
                               uint64_t *record, sdc_err *err);
sdc_status sdc_blob_write(sdc_blob_writer *w, const void *data, size_t n, sdc_err *err);
/* Writes the final header and closes; fails if a blob is incomplete. */
sdc_status sdc_blob_close(sdc_blob_writer *w, sdc_err *err);
/* Closes without finishing (the caller removes the file); a no-op on a zeroed writer. */
void sdc_blob_abort(sdc_blob_writer *w);

/* ---- reading: every byte is untrusted */

typedef struct sdc_blob_file {
    sdc_mapped_file map;
    uint32_t count; /* blobs the header declares */
} sdc_blob_file;

/* Maps a weight file and checks its header (at least 64 bytes, version 2); `populate` reads
   every page in now (see sdc_map_file). Errors name the file. */
sdc_status sdc_blob_file_open(const char *path, bool populate, sdc_blob_file *f, sdc_err *err);
void sdc_blob_file_close(sdc_blob_file *f);

/* One metadata record as stored. The sentinel is reported, not checked, so that a caller can
   name what is wrong. */
typedef struct sdc_blob_record {
    bool sentinel_ok;      /* the record starts with SDC_BLOB_SENTINEL */
    uint32_t code;         /* dtype code (SDC_BLOB_F16, ...) */
    uint64_t size;         /* data bytes (packed, for sub-byte types) */
    uint64_t data;         /* file offset of the data */
    uint64_t padding_bits; /* unused high bits of the last byte (sub-byte types) */
} sdc_blob_record;

/* Decodes the record at `offset`; false when its 64 bytes do not lie in the file after the
   header. */
bool sdc_blob_record_at(const sdc_blob_file *f, uint64_t offset, sdc_blob_record *r);
/* True when the record's data lies inside the file. */
bool sdc_blob_data_inside(const sdc_blob_file *f, const sdc_blob_record *r);

#endif
