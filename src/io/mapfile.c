/* mapfile.c — one read-only file mapping for every weight reader (see mapfile.h). */
#include "io/mapfile.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static sdc_status open_failure(const char *path, int e, sdc_err *err) {
    struct stat lsb;
    if (e == ENOENT && lstat(path, &lsb) == 0) /* a Hub cache link to a missing blob */
        return sdc_fail(err, SDC_E_NOTFOUND, "%s: cannot open: dangling symbolic link (incomplete download?)", path);
    return sdc_fail(err, e == ENOENT ? SDC_E_NOTFOUND : SDC_E_IO, "%s: cannot open: %s", path, strerror(e));
}

/* The size of an open descriptor's file, after checking that it can be mapped. */
static sdc_status mappable_size(int fd, const char *path, size_t min_size, const char *header, size_t *size,
                                sdc_err *err) {
    struct stat sb;
    if (fstat(fd, &sb) != 0) return sdc_fail(err, SDC_E_IO, "%s: cannot stat: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode)) return sdc_fail(err, SDC_E_IO, "%s: not a regular file", path);
    if ((uint64_t)sb.st_size < min_size)
        return sdc_fail(err, SDC_E_FORMAT, "%s: file is %lld bytes, too short for the %s", path, (long long)sb.st_size,
                        header);
    if ((uint64_t)sb.st_size > SIZE_MAX) return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: file too large to map", path);
    *size = (size_t)sb.st_size;
    return SDC_OK;
}

/* Linux can fault a whole mapping in at mmap time (a weight file read once, start to end);
   elsewhere (macOS) the pages come in on first touch, which is only slower. */
#ifdef MAP_POPULATE
#define PREFAULT MAP_POPULATE
#else
#define PREFAULT 0
#endif

sdc_status sdc_map_file(const char *path, size_t min_size, const char *header, bool populate, sdc_mapped_file *out,
                        sdc_err *err) {
    memset(out, 0, sizeof *out);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return open_failure(path, errno, err);
    size_t size = 0;
    sdc_status st = mappable_size(fd, path, min_size, header, &size, err);
    if (!st && size) { /* mmap refuses a zero length; an empty file maps to nothing */
        void *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE | (populate ? PREFAULT : 0), fd, 0);
        if (m == MAP_FAILED) {
            st = sdc_fail(err, SDC_E_IO, "%s: cannot mmap: %s", path, strerror(errno));
        } else {
#ifdef MADV_HUGEPAGE
            /* what this mapping reads from disk comes into the page cache in 2 MiB folios where
               the file system can hold them, each later mapped with one entry, not 512 (the
               interpreter maps and drops every weight once per run); a hint, failure is fine */
            madvise(m, size, MADV_HUGEPAGE);
#endif
            out->data = m;
            out->size = size;
        }
    }
    close(fd); /* the mapping stays valid without the descriptor */
    return st;
}

/* The whole pages touching [p, p + len). */
static struct sdc_page_span touched_pages(const void *p, size_t len) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    return (struct sdc_page_span){(uintptr_t)p & ~(page - 1), ((uintptr_t)p + len + page - 1) & ~(page - 1)};
}

void sdc_map_drop(const void *p, size_t len) {
    if (!p || !len) return;
    struct sdc_page_span s = touched_pages(p, len);
    madvise((void *)s.begin, s.end - s.begin, MADV_DONTNEED);
}

void sdc_drop_batch_add(sdc_drop_batch *b, const void *p, size_t len) {
    if (!p || !len) return;
    if (b->n == b->cap) {
        int cap = b->cap ? 2 * b->cap : 256;
        void *grown = b->cap < INT_MAX / 2 ? sdc_realloc(b->spans, (size_t)cap * sizeof *b->spans) : NULL;
        if (!grown) {
            sdc_map_drop(p, len);
            return;
        }
        b->spans = grown;
        b->cap = cap;
    }
    struct sdc_page_span s = touched_pages(p, len);
    b->spans[b->n++] = s;
    b->resident += ((s.end + SDC_MAP_FOLIO - 1) & ~(SDC_MAP_FOLIO - 1)) - (s.begin & ~(SDC_MAP_FOLIO - 1));
}

static int by_begin(const void *a, const void *b) {
    uintptr_t x = ((const struct sdc_page_span *)a)->begin, y = ((const struct sdc_page_span *)b)->begin;
    return (x > y) - (x < y);
}

void sdc_drop_batch_flush(sdc_drop_batch *b) {
    if (b->n > 1) qsort(b->spans, (size_t)b->n, sizeof *b->spans, by_begin);
    for (int i = 0; i < b->n;) {
        struct sdc_page_span run = b->spans[i++];
        /* only spans that overlap or touch: a gap between them may be another mapping (the heap) */
        while (i < b->n && b->spans[i].begin <= run.end) {
            if (b->spans[i].end > run.end) run.end = b->spans[i].end;
            i++;
        }
        madvise((void *)run.begin, run.end - run.begin, MADV_DONTNEED);
    }
    b->n = 0;
    b->resident = 0;
}

void sdc_drop_batch_free(sdc_drop_batch *b) {
    sdc_drop_batch_flush(b);
    sdc_free(b->spans);
    *b = (sdc_drop_batch){0};
}

void sdc_unmap_file(sdc_mapped_file *f) {
    if (f->data) munmap((void *)f->data, f->size);
    f->data = NULL;
    f->size = 0;
}
