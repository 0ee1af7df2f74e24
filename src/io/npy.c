/* npy.c — NumPy .npy reader and writer (see npy.h). */
#include "io/npy.h"
#include "io/fp16.h"
#include "io/outdir.h"

#include <errno.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

enum { NPY_MAX_HEADER = 1 << 20 };

static const char MAGIC[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

/* The dtype table's row of a public ndarray dtype; NULL for values outside the enum. */
static const sdc_dtype_info *nd_info(sdc_nd_dtype t) { return sdc_dtype_info_of(sdc_dtype_from_nd(t)); }

const char *sdc_nd_dtype_name(sdc_nd_dtype t) {
    const sdc_dtype_info *d = nd_info(t);
    return d ? d->numpy : "invalid";
}

static size_t nd_itemsize(sdc_nd_dtype t) { return sdc_dtype_size(sdc_dtype_from_nd(t)); }

size_t sdc_ndarray_numel(const sdc_ndarray *a) {
    size_t n = 1;
    for (int i = 0; i < a->rank; i++) n *= a->shape[i] > 0 ? (size_t)a->shape[i] : 0;
    return n;
}

size_t sdc_ndarray_count_nonfinite(const sdc_ndarray *a) {
    size_t n = sdc_ndarray_numel(a), bad = 0;
    if (a->dtype == SDC_ND_F16)
        for (size_t i = 0; i < n; i++) bad += sdc_f16_is_nonfinite(((const uint16_t *)a->data)[i]);
    else if (a->dtype == SDC_ND_F32)
        for (size_t i = 0; i < n; i++) bad += !isfinite(((const float *)a->data)[i]);
    return bad;
}

/* ---------------------------------------------------------------- header dict parser */

typedef struct hparse {
    const char *p, *end;
} hparse;

static void skip_ws(hparse *h) {
    while (h->p < h->end && (*h->p == ' ' || *h->p == '\t' || *h->p == '\n' || *h->p == '\r')) h->p++;
}

static bool eat(hparse *h, char c) {
    skip_ws(h);
    if (h->p < h->end && *h->p == c) {
        h->p++;
        return true;
    }
    return false;
}

/* A quoted string (no escapes in what numpy writes) into buf. */
static bool parse_str(hparse *h, char *buf, size_t size) {
    skip_ws(h);
    if (h->p >= h->end || (*h->p != '\'' && *h->p != '"')) return false;
    char q = *h->p++;
    size_t n = 0;
    while (h->p < h->end && *h->p != q) {
        if (*h->p == '\\' || n + 1 >= size) return false;
        buf[n++] = *h->p++;
    }
    if (h->p >= h->end) return false;
    h->p++;
    buf[n] = 0;
    return true;
}

static bool parse_word(hparse *h, const char *w) {
    skip_ws(h);
    size_t n = strlen(w);
    if ((size_t)(h->end - h->p) < n || memcmp(h->p, w, n)) return false;
    h->p += n;
    return true;
}

static bool parse_shape(hparse *h, int *rank, int64_t *shape) {
    if (!eat(h, '(')) return false;
    *rank = 0;
    for (;;) {
        if (eat(h, ')')) return true;
        skip_ws(h);
        if (h->p >= h->end || *h->p < '0' || *h->p > '9') return false;
        int64_t v = 0;
        while (h->p < h->end && *h->p >= '0' && *h->p <= '9') {
            if (v > (INT64_MAX - 9) / 10) return false;
            v = v * 10 + (*h->p++ - '0');
        }
        skip_ws(h);
        if (h->p < h->end && *h->p == 'L') h->p++; /* Python 2 longs */
        if (*rank >= SDC_ND_MAX_RANK) return false;
        shape[(*rank)++] = v;
        if (!eat(h, ',')) {
            if (!eat(h, ')')) return false;
            /* "(5)" is not a tuple: numpy always writes "(5,)" */
            return *rank != 1;
        }
    }
}

static sdc_status parse_header(const char *path, const char *text, size_t len, sdc_ndarray *a, bool *f64, sdc_err *err) {
    hparse h = {text, text + len};
    bool seen_descr = false, seen_fortran = false, seen_shape = false, fortran = false;
    char descr[32];
    if (!eat(&h, '{')) return sdc_fail(err, SDC_E_FORMAT, "%s: .npy header is not a dict", path);
    for (;;) {
        if (eat(&h, '}')) break;
        char key[32];
        if (!parse_str(&h, key, sizeof key) || !eat(&h, ':'))
            return sdc_fail(err, SDC_E_FORMAT, "%s: malformed .npy header", path);
        if (!strcmp(key, "descr") && !seen_descr) {
            if (!parse_str(&h, descr, sizeof descr))
                return sdc_fail(err, SDC_E_FORMAT, "%s: .npy 'descr' is not a simple dtype string", path);
            seen_descr = true;
        } else if (!strcmp(key, "fortran_order") && !seen_fortran) {
            if (parse_word(&h, "True")) fortran = true;
            else if (!parse_word(&h, "False")) return sdc_fail(err, SDC_E_FORMAT, "%s: malformed .npy 'fortran_order'", path);
            seen_fortran = true;
        } else if (!strcmp(key, "shape") && !seen_shape) {
            if (!parse_shape(&h, &a->rank, a->shape))
                return sdc_fail(err, SDC_E_FORMAT, "%s: malformed .npy 'shape' (or rank above %d)", path, SDC_ND_MAX_RANK);
            seen_shape = true;
        } else {
            return sdc_fail(err, SDC_E_FORMAT, "%s: unexpected or repeated key '%s' in the .npy header", path, key);
        }
        if (!eat(&h, ',')) {
            if (!eat(&h, '}')) return sdc_fail(err, SDC_E_FORMAT, "%s: malformed .npy header", path);
            break;
        }
    }
    skip_ws(&h);
    if (h.p != h.end) return sdc_fail(err, SDC_E_FORMAT, "%s: trailing bytes after the .npy header dict", path);
    if (!seen_descr || !seen_fortran || !seen_shape)
        return sdc_fail(err, SDC_E_FORMAT, "%s: .npy header lacks descr, fortran_order or shape", path);
    const sdc_dtype_info *d = sdc_dtype_by_npy_descr(descr);
    int nd = d ? sdc_dtype_to_nd(d->code) : -1;
    *f64 = d && d->code == SDC_DT_F64; /* NumPy's default: read as float32 */
    if (*f64) nd = SDC_ND_F32;
    if (nd >= 0)
        a->dtype = (sdc_nd_dtype)nd;
    else
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: .npy dtype '%s' is not supported (use float32 '<f4', float64 '<f8', float16 '<f2' or int32 '<i4')",
                        path, descr);
    if (fortran)
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: .npy array is in Fortran order; save it in C order (np.ascontiguousarray)", path);
    return SDC_OK;
}

/* float64 data (read in place) narrowed to float32 by round-to-nearest, as Core ML casts a
   Double input; the buffer shrinks to the float32 size. */
static void doubles_to_floats(sdc_ndarray *a, size_t n) {
    const double *d = a->data;
    float *f = a->data;
    for (size_t i = 0; i < n; i++) {
        double v;
        memcpy(&v, d + i, sizeof v); /* little-endian files on little-endian hosts, as the rest */
        f[i] = (float)v;
    }
    void *shrunk = sdc_realloc(a->data, n * sizeof(float));
    if (shrunk) a->data = shrunk;
}

sdc_status sdc_npy_read_file(const char *path, sdc_ndarray *out, bool *was_f64, sdc_err *err) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return sdc_fail(err, SDC_E_IO, "%s: cannot open: %s", path, strerror(errno));
    sdc_status s = SDC_OK;
    char *header = NULL;
    uint8_t pre[12];
    struct stat st;
    uint64_t hlen = 0, start = 0;
    if (fstat(fileno(f), &st) != 0 || st.st_size < 10 || fread(pre, 1, 10, f) != 10 || memcmp(pre, MAGIC, 6)) {
        s = sdc_fail(err, SDC_E_FORMAT, "%s: not a .npy file (bad magic)", path);
        goto done;
    }
    if (pre[6] == 1) {
        hlen = (uint64_t)pre[8] | (uint64_t)pre[9] << 8;
        start = 10;
    } else if (pre[6] == 2 || pre[6] == 3) {
        if (fread(pre + 10, 1, 2, f) != 2) {
            s = sdc_fail(err, SDC_E_FORMAT, "%s: truncated .npy header", path);
            goto done;
        }
        hlen = (uint64_t)pre[8] | (uint64_t)pre[9] << 8 | (uint64_t)pre[10] << 16 | (uint64_t)pre[11] << 24;
        start = 12;
    } else {
        s = sdc_fail(err, SDC_E_UNSUPPORTED, "%s: .npy format version %u.%u is not supported", path, pre[6], pre[7]);
        goto done;
    }
    if (hlen == 0 || hlen > NPY_MAX_HEADER || start + hlen > (uint64_t)st.st_size) {
        s = sdc_fail(err, SDC_E_FORMAT, "%s: .npy header length %llu is invalid", path, (unsigned long long)hlen);
        goto done;
    }
    header = sdc_malloc(hlen);
    if (!header) {
        s = sdc_fail(err, SDC_E_NOMEM, "out of memory");
        goto done;
    }
    if (fread(header, 1, hlen, f) != hlen) {
        s = sdc_fail(err, SDC_E_IO, "%s: short read", path);
        goto done;
    }
    bool f64 = false;
    if ((s = parse_header(path, header, hlen, out, &f64, err))) goto done;
    if (was_f64) *was_f64 = f64;
    uint64_t n = 1, nbytes;
    for (int i = 0; i < out->rank; i++)
        if (!sdc_mul_u64(n, (uint64_t)out->shape[i], &n)) n = UINT64_MAX;
    if (n == UINT64_MAX || !sdc_mul_u64(n, f64 ? 8 : nd_itemsize(out->dtype), &nbytes) ||
        nbytes != (uint64_t)st.st_size - start - hlen) {
        s = sdc_fail(err, SDC_E_FORMAT, "%s: .npy data size %llu does not match its shape and dtype", path,
                     (unsigned long long)((uint64_t)st.st_size - start - hlen));
        goto done;
    }
    out->data = sdc_malloc((size_t)nbytes);
    if (!out->data) {
        s = sdc_fail(err, SDC_E_NOMEM, "%s: out of memory for %llu bytes", path, (unsigned long long)nbytes);
        goto done;
    }
    if (nbytes && fread(out->data, 1, (size_t)nbytes, f) != nbytes) {
        s = sdc_fail(err, SDC_E_IO, "%s: short read", path);
        goto done;
    }
    if (f64) doubles_to_floats(out, (size_t)n); /* f[i] overwrites only doubles already read */
done:
    if (s) {
        sdc_free(out->data);
        out->data = NULL;
    }
    sdc_free(header);
    fclose(f);
    return s;
}

sdc_status sdc_npy_write_file(const char *path, const sdc_ndarray *a, sdc_err *err) {
    if (a->rank < 0 || a->rank > SDC_ND_MAX_RANK || !nd_info(a->dtype))
        return sdc_fail(err, SDC_E_ARG, "%s: cannot write an array of this rank or dtype", path);
    char dict[512];
    int len = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                       nd_info(a->dtype)->npy_descr);
    for (int i = 0; i < a->rank; i++) {
        if (a->shape[i] < 0) return sdc_fail(err, SDC_E_ARG, "%s: negative dimension", path);
        len += snprintf(dict + len, sizeof dict - (size_t)len, "%lld,%s", (long long)a->shape[i], i + 1 < a->rank ? " " : "");
    }
    len += snprintf(dict + len, sizeof dict - (size_t)len, "), }");
    /* magic(6) + version(2) + u16 length + dict + padding + '\n' = multiple of 64 */
    size_t total = 10 + (size_t)len + 1;
    size_t padded = (total + 63) / 64 * 64;
    uint8_t head[640];
    memcpy(head, MAGIC, 6);
    head[6] = 1;
    head[7] = 0;
    size_t hl = padded - 10;
    head[8] = (uint8_t)(hl & 0xff);
    head[9] = (uint8_t)(hl >> 8);
    memcpy(head + 10, dict, (size_t)len);
    memset(head + 10 + len, ' ', padded - 10 - (size_t)len - 1);
    head[padded - 1] = '\n';

    char tmp[4200];
    if (!sdc_fmt(tmp, sizeof tmp, "%s.tmp.XXXXXX", path)) return sdc_fail(err, SDC_E_ARG, "%s: path too long", path);
    int fd = mkstemp(tmp);
    if (fd < 0) return sdc_fail(err, SDC_E_IO, "%s: cannot create: %s", tmp, strerror(errno));
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        close(fd);
        unlink(tmp);
        return sdc_fail(err, SDC_E_IO, "%s: cannot open: %s", tmp, strerror(errno));
    }
    size_t nbytes = sdc_ndarray_numel(a) * nd_itemsize(a->dtype);
    bool ok = fwrite(head, 1, padded, f) == padded && (nbytes == 0 || fwrite(a->data, 1, nbytes, f) == nbytes);
    ok = (fflush(f) == 0) && ok;
    ok = (fclose(f) == 0) && ok;
    if (ok) (void)chmod(tmp, 0644); /* mkstemp made it 0600 */
    if (!ok) {
        int e = errno;
        unlink(tmp);
        return sdc_fail(err, SDC_E_IO, "%s: cannot write: %s", path, strerror(e));
    }
    bool lost_race; /* a file is replaced by rename, never "lost" */
    sdc_status s = sdc_outdir_commit(tmp, path, &lost_race, err);
    if (s) unlink(tmp);
    return s;
}

sdc_status sdc_npy_read(const char *path, sdc_ndarray *out, char *errbuf, size_t err_size) {
    sdc_err err = {0};
    bool f64 = false;
    sdc_status s = sdc_npy_read_file(path, out, &f64, &err);
    if (errbuf && err_size)
        snprintf(errbuf, err_size, "%s", s ? err.msg : f64 ? "float64 values read as float32 (as Core ML casts a Double input)" : "");
    return s;
}

sdc_status sdc_npy_write(const char *path, const sdc_ndarray *a, char *errbuf, size_t err_size) {
    sdc_err err = {0};
    sdc_status s = sdc_npy_write_file(path, a, &err);
    if (errbuf && err_size) snprintf(errbuf, err_size, "%s", s ? err.msg : "");
    return s;
}
