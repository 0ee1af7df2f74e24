/* mapfile.h — mapping a whole file read-only (weights: safetensors, weight.bin). */
#ifndef SDC_MAPFILE_H
#define SDC_MAPFILE_H

#include "common.h"

typedef struct sdc_mapped_file {
    const uint8_t *data; /* the whole file; NULL when empty or not mapped */
    size_t size;
} sdc_mapped_file;

/* Maps `path` read-only, refusing what is not a regular file. A file shorter than `min_size`
   is not mapped (SDC_E_FORMAT, the message says which header it is too short for). With
   `populate`, every page is read in now (for data that will all be read anyway). Errors name
   the file; a missing file is SDC_E_NOTFOUND (a dangling link, as an unfinished Hub download
   leaves, is said to be one). */
sdc_status sdc_map_file(const char *path, size_t min_size, const char *header, bool populate, sdc_mapped_file *out,
                        sdc_err *err);
void sdc_unmap_file(sdc_mapped_file *f);
/* Drops the resident pages touching [p, p + len) of a mapping made here: every page, however
   little of it the range covers. A hint: a page read again comes back from the file, and the
   mapping is private and read-only, so no value changes. */
void sdc_map_drop(const void *p, size_t len);

/* Page drops gathered so that one madvise covers the pages of many reads. Dropping each
   weight's pages on its own splits the page cache's 2 MiB mappings at the weight's ends, so the
   next weight on the same 2 MiB maps 4 kB at a time; and each drop flushes the TLB of every
   thread of the process. */
typedef struct sdc_drop_batch {
    struct sdc_page_span { uintptr_t begin, end; } *spans;
    int n, cap;
    size_t resident; /* a bound on what the spans keep mapped: each rounded out to SDC_MAP_FOLIO */
} sdc_drop_batch;
/* The largest page a file mapping uses with 4 kB pages (x86-64, most arm64 Linux): a 2 MiB
   folio of the page cache, mapped whole. */
#define SDC_MAP_FOLIO ((uintptr_t)2 << 20)
/* Adds [p, p + len) to the batch (dropped now if the batch cannot grow: still a hint). */
void sdc_drop_batch_add(sdc_drop_batch *b, const void *p, size_t len);
/* Drops every span of the batch, neighbours merged into one call, and empties it. */
void sdc_drop_batch_flush(sdc_drop_batch *b);
/* Flushes and frees the batch's memory. */
void sdc_drop_batch_free(sdc_drop_batch *b);

#endif
