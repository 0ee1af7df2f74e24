/* png.c — PNG writing and reading through libpng (see png.h). */
#include "generate/png.h"

#ifndef SDC_HAVE_PNG

sdc_status sdc_png_write(const char *path, int w, int h, const uint8_t *rgb, sdc_err *err) {
    return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: cannot write PNG: sdcoreml was built without PNG support (libpng)", path);
}

sdc_status sdc_png_read(const char *path, int *w, int *h, uint8_t **rgb, sdc_err *err) {
    return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: cannot read PNG: sdcoreml was built without PNG support (libpng)", path);
}

#else

#include "io/outdir.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <sys/stat.h>
#include <unistd.h>

/* libpng reports through these; the message goes into the error of the call in progress and
   control returns to its setjmp. */
typedef struct png_ctx {
    jmp_buf jmp;
    char msg[256];
    bool oom; /* the failure was an allocation of ours */
} png_ctx;

static void on_error(png_structp png, png_const_charp msg) {
    png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    longjmp(c->jmp, 1);
}

static void on_warning(png_structp png, png_const_charp msg) { (void)png, (void)msg; }

static bool side_ok(long v) { return v >= 1 && v <= SDC_PNG_MAX_SIDE; }

/* ------------------------------------------------------------------------------------ write */

/* The encoding itself, into an open stream. Returns false with c->msg set on failure. */
static bool encode(FILE *f, int w, int h, const uint8_t *rgb, png_ctx *c) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, c, on_error, on_warning);
    if (!png) {
        snprintf(c->msg, sizeof c->msg, "out of memory");
        return false;
    }
    png_infop info = png_create_info_struct(png);
    /* volatile: read after longjmp */
    volatile bool ok = false;
    if (info && !setjmp(c->jmp)) {
        png_init_io(png, f);
        png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                     PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
        png_write_info(png, info);
        for (int y = 0; y < h; y++) png_write_row(png, rgb + (size_t)y * (size_t)w * 3);
        png_write_end(png, NULL);
        ok = true;
    } else if (!info) {
        snprintf(c->msg, sizeof c->msg, "out of memory");
    }
    png_destroy_write_struct(&png, info ? &info : NULL);
    return ok;
}

sdc_status sdc_png_write(const char *path, int w, int h, const uint8_t *rgb, sdc_err *err) {
    if (!side_ok(w) || !side_ok(h))
        return sdc_fail(err, SDC_E_ARG, "%s: cannot write a %dx%d image (sides 1..%d)", path, w, h, SDC_PNG_MAX_SIDE);
    /* ".<name>.partial-<pid>" beside the target, as outdir.h names temporaries */
    const char *slash = strrchr(path, '/');
    int dir_len = slash ? (int)(slash - path + 1) : 0;
    char tmp[4200];
    if (!sdc_fmt(tmp, sizeof tmp, "%.*s.%s.partial-%ld", dir_len, path, path + dir_len, (long)getpid()))
        return sdc_fail(err, SDC_E_ARG, "%s: path too long", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return sdc_fail(err, SDC_E_IO, "%s: cannot create: %s", tmp, strerror(errno));
    png_ctx c = {.msg = ""};
    bool ok = encode(f, w, h, rgb, &c);
    int e = errno;
    ok = (fflush(f) == 0) && ok;
    ok = (fclose(f) == 0) && ok;
    if (!ok) {
        unlink(tmp);
        return sdc_fail(err, SDC_E_IO, "%s: cannot write PNG: %s", path, c.msg[0] ? c.msg : strerror(e));
    }
    bool lost_race;
    sdc_status s = sdc_outdir_commit(tmp, path, &lost_race, err);
    if (s) unlink(tmp);
    return s;
}

/* ------------------------------------------------------------------------------------- read */

/* Every PNG colour type and depth to 8-bit RGB: palette expanded, gray copied into three
   channels, 16 bits stripped to their high byte, alpha dropped, low depths unpacked. */
static void request_rgb8(png_structp png, png_infop info) {
    int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
    if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
    if (depth == 16) png_set_strip_16(png);
    if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
    png_set_strip_alpha(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
}

typedef struct png_read_state {
    png_structp png;
    png_infop info;
    uint8_t *pixels;
    png_bytep *rows;
} png_read_state;

/* Decodes the open stream into st->pixels. Returns false with c->msg set. */
static bool decode(FILE *f, png_read_state *st, int *w, int *h, png_ctx *c) {
    if (setjmp(c->jmp)) return false;
    png_init_io(st->png, f);
    png_set_user_limits(st->png, SDC_PNG_MAX_SIDE, SDC_PNG_MAX_SIDE);
    png_set_chunk_malloc_max(st->png, 8u << 20); /* text and ICC chunks: no image needs more */
    png_read_info(st->png, st->info);
    png_uint_32 pw = png_get_image_width(st->png, st->info), ph = png_get_image_height(st->png, st->info);
    if (!side_ok((long)pw) || !side_ok((long)ph) || (uint64_t)pw * ph > SDC_PNG_MAX_PIXELS) {
        snprintf(c->msg, sizeof c->msg, "image of %ux%u pixels is over the limit (%d per side, %u in all)", (unsigned)pw,
                 (unsigned)ph, SDC_PNG_MAX_SIDE, SDC_PNG_MAX_PIXELS);
        return false;
    }
    request_rgb8(st->png, st->info);
    if (png_get_rowbytes(st->png, st->info) != (size_t)pw * 3) {
        snprintf(c->msg, sizeof c->msg, "unexpected row layout after conversion to RGB");
        return false;
    }
    st->pixels = sdc_malloc((size_t)pw * ph * 3);
    st->rows = sdc_malloc(sizeof(png_bytep) * ph);
    if (!st->pixels || !st->rows) {
        snprintf(c->msg, sizeof c->msg, "out of memory for %ux%u pixels", (unsigned)pw, (unsigned)ph);
        c->oom = true;
        return false;
    }
    for (png_uint_32 y = 0; y < ph; y++) st->rows[y] = st->pixels + (size_t)y * pw * 3;
    png_read_image(st->png, st->rows);
    png_read_end(st->png, NULL);
    *w = (int)pw;
    *h = (int)ph;
    return true;
}

sdc_status sdc_png_read(const char *path, int *w, int *h, uint8_t **rgb, sdc_err *err) {
    *rgb = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return sdc_fail(err, errno == ENOENT ? SDC_E_NOTFOUND : SDC_E_IO, "%s: cannot open: %s", path, strerror(errno));
    uint8_t sig[8];
    if (fread(sig, 1, 8, f) != 8 || png_sig_cmp(sig, 0, 8)) {
        fclose(f);
        return sdc_fail(err, SDC_E_FORMAT, "%s: not a PNG file (bad signature)", path);
    }
    rewind(f);
    png_ctx c = {.msg = ""};
    png_read_state st = {0};
    st.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &c, on_error, on_warning);
    st.info = st.png ? png_create_info_struct(st.png) : NULL;
    bool ok = st.info && decode(f, &st, w, h, &c);
    if (!st.info) snprintf(c.msg, sizeof c.msg, "out of memory"), c.oom = true;
    png_destroy_read_struct(st.png ? &st.png : NULL, st.info ? &st.info : NULL, NULL);
    fclose(f);
    sdc_free(st.rows);
    if (!ok) {
        sdc_free(st.pixels);
        return c.oom ? sdc_fail(err, SDC_E_NOMEM, "%s: %s", path, c.msg)
                     : sdc_fail(err, SDC_E_FORMAT, "%s: bad PNG: %s", path, c.msg);
    }
    *rgb = st.pixels;
    return SDC_OK;
}

#endif
