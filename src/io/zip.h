/*
 * zip.h — a minimal, strict reader of ZIP archives of stored (uncompressed) entries, as
 * torch.save writes them (the PyTorch checkpoint format, io/ckpt.c).
 *
 * It reads an archive already mapped by the caller: the end-of-central-directory record (ZIP64
 * when the archive is over 4 GB or has over 65535 entries), then every central-directory entry
 * and its local header. Every offset and length is checked against the mapping: an entry's
 * local header and data lie before the central directory, entries do not overlap, names are
 * unique and agree with their local headers, and sizes agree. Compressed or encrypted entries,
 * multi-disk archives and data descriptors that contradict the directory are refused by name.
 * Entry data are views into the mapping (no copies); CRCs are not verified (that would read
 * gigabytes of weights at open).
 */
#ifndef SDC_ZIP_H
#define SDC_ZIP_H

#include "common.h"

#define SDC_ZIP_MAX_ENTRIES (1u << 20)

typedef struct sdc_zip_entry {
    const char *name;    /* NUL-terminated copy, owned by the archive */
    const uint8_t *data; /* into the caller's mapping */
    uint64_t size;
} sdc_zip_entry;

typedef struct sdc_zip sdc_zip;

/* Reads the directory of the archive at map[0, size); `path` only names it in messages. The
   mapping must outlive the archive. */
sdc_status sdc_zip_open(const char *path, const uint8_t *map, size_t size, sdc_zip **out, sdc_err *err);
void sdc_zip_close(sdc_zip *z); /* NULL is a no-op */

size_t sdc_zip_count(const sdc_zip *z);
const sdc_zip_entry *sdc_zip_at(const sdc_zip *z, size_t i);            /* in directory order */
const sdc_zip_entry *sdc_zip_find(const sdc_zip *z, const char *name); /* NULL if absent */

#endif
