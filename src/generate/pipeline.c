/*
 * pipeline.c — sdc_generate: the anchor's python_coreml_stable_diffusion/pipeline.py on the
 * interpreter. Packages are found by the anchor's names, the scheduler config and tokenizers
 * come from the model version, and every step is the anchor's: prompt embeddings (SDXL: both
 * encoders, pooled text_embeds, time_ids), NumPy RandomState latents cast to float16 and
 * scaled by the scheduler, classifier-free guidance (one batch-2 call, or two batch-1 calls),
 * ControlNet residuals summed by name, an SDXL refiner package from 0.8 of the steps on (the
 * Swift pipeline's refinerStart), the VAE decoder on latents / 0.18215 (for SDXL too, as
 * the anchor's Python pipeline does), the safety checker on CLIPImageProcessor's input, and
 * the 8-bit image as NumPy's round of x * 255.
 */
#include "generate/pipeline.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <unistd.h>

#include "generate/png.h"
#include "generate/rng.h"
#include "generate/scheduler.h"
#include "generate/tokenizer.h"
#include "io/fp16.h"
#include "io/outdir.h"
#include "source/single_file.h"
#include "source/source.h"

/* The anchor's decode_latents divides by this for every model (SD 1.x/2.x's VAE factor; SDXL's
   own is 0.13025, which the anchor's Python pipeline does not use). Image-to-image (which the
   anchor's Python pipeline lacks) encodes with the VAE config's scaling_factor, as diffusers and
   the Swift pipeline do, since that is the scale the UNet was trained on. */
#define LATENT_SCALE 0.18215
static const char DEFAULT_MODEL_VERSION[] = "CompVis/stable-diffusion-v1-4"; /* one object: compared by address */
/* diffusers' SDXL refiner defaults (aesthetic_score, negative_aesthetic_score). */
#define AESTHETIC_SCORE 6.0
#define NEGATIVE_AESTHETIC_SCORE 2.5
/* The Swift pipeline's refinerStart: the refiner takes over at this fraction of the steps. */
#define REFINER_START 0.8

enum { MAX_CONTROLNETS = 16, MAX_FEEDS = 64, NEG = 0, POS = 1 };

static void gen_log(const sdc_generate_job *job, sdc_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void gen_log(const sdc_generate_job *job, sdc_log_level level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    sdc_logv(job->log, job->user, level, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------- output name */

/* s with every character of `from` replaced by '_' into out; false when it does not fit. */
static bool underscored(const char *s, const char *from, char *out, size_t size) {
    size_t n = strlen(s);
    if (n >= size) return false;
    for (size_t i = 0; i <= n; i++) out[i] = s[i] && strchr(from, s[i]) ? '_' : s[i];
    return true;
}

sdc_status sdc_gen_image_path(const char *out_dir, const char *prompt, uint32_t seed, const char *compute_unit,
                              const char *model_version, const char *scheduler, int steps, char *folder,
                              size_t folder_size, char *path, size_t path_size, sdc_err *err) {
    char dir_name[256], mv[512], name[256], tail[160] = "";
    if (!underscored(prompt, "/ ", dir_name, sizeof dir_name))
        return sdc_fail(err, SDC_E_ARG, "--prompt: %zu bytes is too long for the output folder's name (255 at most)",
                        strlen(prompt));
    /* "." and ".." would name -o itself or its parent (the anchor writes there): one '_' per dot */
    if (!strcmp(dir_name, ".") || !strcmp(dir_name, "..")) underscored(dir_name, ".", dir_name, sizeof dir_name);
    if (!underscored(model_version, "/", mv, sizeof mv))
        return sdc_fail(err, SDC_E_ARG, "--model-version: too long for the output file's name");
    if (scheduler) snprintf(tail, sizeof tail, "_customScheduler_%s_numInferenceSteps%d", scheduler, steps);
    if (!sdc_fmt(name, sizeof name, "randomSeed_%u_computeUnit_%s_modelVersion_%s%s.png", (unsigned)seed, compute_unit,
                 mv, tail))
        return sdc_fail(err, SDC_E_ARG, "the output file's name for --model-version %s is over 255 bytes", model_version);
    /* os.path.join(o, "") is o itself */
    bool ok = dir_name[0] ? sdc_fmt(folder, folder_size, "%s/%s", out_dir, dir_name)
                          : sdc_fmt(folder, folder_size, "%s", out_dir);
    if (!ok || !sdc_fmt(path, path_size, "%s/%s", folder, name))
        return sdc_fail(err, SDC_E_ARG, "-o %s: the output path is too long", out_dir);
    return SDC_OK;
}

/* ---------------------------------------------------------------- Pillow's bicubic resize */

#define PIL_PRECISION_BITS (32 - 8 - 2)

static double bicubic(double x) {
    const double a = -0.5;
    x = fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis: per output pixel the first
   input index, the count, and ksize fixed-point weights. */
static int resize_coeffs(int in_size, int out_size, int **bounds_out, int32_t **kk_out) {
    double scale = (double)in_size / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    int *bounds = sdc_malloc(sizeof *bounds * 2 * (size_t)out_size);
    int32_t *kk = sdc_malloc(sizeof *kk * (size_t)ksize * (size_t)out_size);
    double *k = sdc_malloc(sizeof *k * (size_t)ksize);
    if (!bounds || !kk || !k) {
        sdc_free(bounds), sdc_free(kk), sdc_free(k);
        return 0;
    }
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) ww += k[x] = bicubic((x + xmin - center + 0.5) * ss);
        for (int x = 0; x < ksize; x++) {
            double w = x < xmax ? (ww != 0.0 ? k[x] / ww : k[x]) : 0.0;
            kk[xx * ksize + x] = (int32_t)(w < 0 ? -0.5 + w * (1 << PIL_PRECISION_BITS) : 0.5 + w * (1 << PIL_PRECISION_BITS));
        }
        bounds[2 * xx] = xmin;
        bounds[2 * xx + 1] = xmax;
    }
    sdc_free(k);
    *bounds_out = bounds;
    *kk_out = kk;
    return ksize;
}

static uint8_t clip8(int64_t v) {
    v >>= PIL_PRECISION_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* One pass along x (step 3: neighbouring pixels) or y (step 3 * w: neighbouring rows). */
static void resize_pass(const uint8_t *in, int iw, uint8_t *out, int ow, int oh, bool along_x, int ksize,
                        const int *bounds, const int32_t *kk) {
    for (int y = 0; y < oh; y++)
        for (int x = 0; x < ow; x++) {
            int o = along_x ? x : y, xmin = bounds[2 * o], n = bounds[2 * o + 1];
            const int32_t *k = kk + (size_t)o * ksize;
            for (int c = 0; c < 3; c++) {
                int64_t ss = 1 << (PIL_PRECISION_BITS - 1);
                for (int j = 0; j < n; j++) {
                    int sx = along_x ? xmin + j : x, sy = along_x ? y : xmin + j;
                    ss += (int64_t)in[((size_t)sy * iw + sx) * 3 + c] * k[j];
                }
                out[((size_t)y * ow + x) * 3 + c] = clip8(ss);
            }
        }
}

bool sdc_gen_resize_bicubic(const uint8_t *in, int iw, int ih, uint8_t *out, int ow, int oh) {
    int *bx = NULL, *by = NULL;
    int32_t *kx = NULL, *ky = NULL;
    int ksx = resize_coeffs(iw, ow, &bx, &kx), ksy = ksx ? resize_coeffs(ih, oh, &by, &ky) : 0;
    uint8_t *tmp = ksy ? sdc_malloc((size_t)ow * ih * 3) : NULL;
    if (tmp) {
        /* Pillow: the horizontal pass first (only when the width changes), then the vertical one */
        const uint8_t *src = in;
        if (ow != iw) {
            resize_pass(in, iw, tmp, ow, ih, true, ksx, bx, kx);
            src = tmp;
        } else {
            memcpy(tmp, in, (size_t)ow * ih * 3);
            src = tmp;
        }
        if (oh != ih)
            resize_pass(src, ow, out, ow, oh, false, ksy, by, ky);
        else
            memcpy(out, src, (size_t)ow * oh * 3);
    }
    sdc_free(bx), sdc_free(by), sdc_free(kx), sdc_free(ky);
    bool ok = tmp != NULL;
    sdc_free(tmp);
    return ok;
}

/* ---------------------------------------------------------------- packages */

typedef struct unet_model {
    sdc_model *part[2]; /* the package, or its two chunks */
    int n;
    char path[2][4096];
    bool te2_only;        /* the SDXL refiner: encoder_hidden_states of text_encoder_2 alone */
    float time_ids[2][6]; /* per side (NEG, POS) */
    int n_time_ids;       /* 0 (SD 1.x/2.x), 6 (SDXL base) or 5 (refiner: the aesthetic score) */
} unet_model;

typedef struct gen {
    const sdc_generate_job *job;
    sdc_model_options mopt;
    sdc_source src;
    bool src_open;
    sdc_model *te, *te2, *vae_dec, *vae_enc, *safety, *cn[MAX_CONTROLNETS];
    char te_path[4096], te2_path[4096], dec_path[4096], enc_path[4096], safety_path[4096], cn_path[MAX_CONTROLNETS][4096];
    int n_cn;
    unet_model unet, refiner; /* refiner: an SDXL base's <model>_refiner package, from refiner_start on */
    int refiner_start;
    sdc_tokenizer *tok, *tok2;
    sdc_scheduler *sched;
    sdc_rng rng;
    bool xl, cfg;
    int batch;                /* the UNet package's batch: 2, or 1 (two calls per step with guidance) */
    int64_t lc, lh, lw;       /* latent channels and size */
    size_t nlat;              /* lc * lh * lw */
    int height, width;
    /* per side (NEG, POS): encoder_hidden_states as (D, 1, S) (ehs2: text_encoder_2's rows only,
       for the refiner), pooled text_embeds (P) */
    float *ehs[2], *ehs2[2], *pooled[2];
    int64_t ehs_d, ehs2_d, ehs_s, pooled_n;
    uint8_t *cn_cond[MAX_CONTROLNETS]; /* ControlNet images, RGB8 of the output's size */
} gen;

/* The anchor's file name of a submodule, else the one file in the folder ending in
   "_<submodule>.mlpackage"; false when there is none (an error only when several match). */
static sdc_status find_package(const gen *g, const char *submodule, char *out, size_t size, bool *found,
                               sdc_err *err) {
    const sdc_generate_job *job = g->job;
    char mv[512];
    *found = false;
    if (!underscored(job->model_version, "/", mv, sizeof mv)) return sdc_fail(err, SDC_E_ARG, "--model-version: too long");
    size_t n = strlen(mv);
    while (n > 1 && mv[n - 1] == '_' && job->model_version[n - 1] == '/') mv[--n] = 0; /* "dir/" as the converter names it */
    if (sdc_fmt(out, size, "%s/Stable_Diffusion_version_%s_%s.mlpackage", job->packages_dir, mv, submodule) &&
        sdc_path_exists(out)) {
        *found = true;
        return SDC_OK;
    }
    char suffix[128];
    snprintf(suffix, sizeof suffix, "_%s.mlpackage", submodule);
    DIR *d = opendir(job->packages_dir);
    if (!d) return sdc_fail(err, SDC_E_IO, "-i %s: cannot open the folder: %s", job->packages_dir, strerror(errno));
    struct dirent *e;
    sdc_status s = SDC_OK;
    while ((e = readdir(d)) != NULL && !s) {
        size_t len = strlen(e->d_name), sl = strlen(suffix);
        if (len <= sl || strcmp(e->d_name + len - sl, suffix) || strncmp(e->d_name, "Stable_Diffusion_version_", 25)) continue;
        if (*found)
            s = sdc_fail(err, SDC_E_ARG, "-i %s: several packages end in %s and none is named for --model-version %s",
                         job->packages_dir, suffix, job->model_version);
        else if (!sdc_fmt(out, size, "%s/%s", job->packages_dir, e->d_name))
            s = sdc_fail(err, SDC_E_ARG, "-i %s: path too long", job->packages_dir);
        *found = true;
    }
    closedir(d);
    return s;
}

static sdc_status load_model(const gen *g, const char *path, sdc_model **m, sdc_err *err) {
    char msg[1024];
    sdc_status s = sdc_model_load(path, &g->mopt, m, msg, sizeof msg);
    return s ? sdc_fail(err, s, "%s", msg) : SDC_OK;
}

/* Loads submodule into *m when its package exists; `required` makes its absence an error. */
static sdc_status load_optional(gen *g, const char *submodule, bool required, sdc_model **m, char *path, sdc_err *err) {
    bool found;
    sdc_status s = find_package(g, submodule, path, 4096, &found, err);
    if (s) return s;
    if (!found)
        return required ? sdc_fail(err, SDC_E_NOTFOUND, "-i %s: no %s package (*_%s.mlpackage)", g->job->packages_dir,
                                   submodule, submodule)
                        : SDC_OK;
    return load_model(g, path, m, err);
}

/* A UNet package by name, else its two chunks; *found false when neither is there. */
static sdc_status load_unet_named(gen *g, const char *name, unet_model *u, bool *found, sdc_err *err) {
    sdc_status s = find_package(g, name, u->path[0], sizeof u->path[0], found, err);
    if (s || *found) {
        u->n = *found ? 1 : 0;
        return s || !*found ? s : load_model(g, u->path[0], &u->part[0], err);
    }
    bool have[2] = {false, false};
    for (int i = 0; i < 2 && !s; i++) {
        char chunk[64];
        snprintf(chunk, sizeof chunk, "%s_chunk%d", name, i + 1);
        s = find_package(g, chunk, u->path[i], sizeof u->path[i], &have[i], err);
    }
    *found = have[0] && have[1];
    for (int i = 0; i < 2 && !s && *found; i++) s = load_model(g, u->path[i], &u->part[i], err);
    u->n = *found ? 2 : 0;
    return s;
}

/* The UNet (or the control-unet with ControlNets): the package, else its two chunks. */
static sdc_status load_unet(gen *g, sdc_err *err) {
    const char *name = g->job->n_controlnet ? "control-unet" : "unet";
    bool found;
    sdc_status s = load_unet_named(g, name, &g->unet, &found, err);
    if (!s && !found)
        return sdc_fail(err, SDC_E_NOTFOUND, "-i %s: no %s package (*_%s.mlpackage or its _chunk1/_chunk2)%s",
                        g->job->packages_dir, name, name,
                        g->job->n_controlnet ? ": ControlNets need a UNet converted with --unet-support-controlnet" : "");
    return s;
}

static const sdc_ndarray *find_input(const sdc_model *m, const char *name) {
    for (int i = 0; i < sdc_model_n_inputs(m); i++)
        if (!strcmp(sdc_model_input(m, i)->name, name)) return sdc_model_input(m, i);
    return NULL;
}

static const sdc_ndarray *unet_model_input(const unet_model *u, const char *name) {
    const sdc_ndarray *a = find_input(u->part[0], name);
    return a ? a : u->n == 2 ? find_input(u->part[1], name) : NULL;
}

static const sdc_ndarray *unet_input(const gen *g, const char *name) { return unet_model_input(&g->unet, name); }

/* ---------------------------------------------------------------- running a package */

/* Runs m with the inputs it declares taken by name from feeds (an array given with another
   shape of the same size is reshaped, as time_ids (2, 6) or (12,)). */
static sdc_status run_model(const sdc_model *mc, const char *path, const sdc_ndarray *feeds, int n_feeds,
                            sdc_ndarray **out, int *n_out, sdc_err *err) {
    sdc_model *m = (sdc_model *)mc;
    sdc_ndarray in[MAX_FEEDS];
    int n_in = sdc_model_n_inputs(m);
    if (n_in > MAX_FEEDS) return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: %d inputs, more than the pipeline feeds", path, n_in);
    for (int i = 0; i < n_in; i++) {
        const sdc_ndarray *want = sdc_model_input(m, i), *have = NULL;
        for (int k = 0; k < n_feeds && !have; k++)
            if (!strcmp(feeds[k].name, want->name)) have = &feeds[k];
        if (!have) return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: input %s is not one the pipeline makes", path, want->name);
        size_t n_want = 1;
        for (int d = 0; d < want->rank; d++) n_want *= (size_t)(want->shape[d] > 0 ? want->shape[d] : 1);
        if (sdc_ndarray_numel(have) != n_want) {
            char a[128], b[128];
            return sdc_fail(err, SDC_E_FORMAT, "%s: input %s is %s, the pipeline makes %s", path, want->name,
                            sdc_shape_str(want->shape, want->rank, a, sizeof a),
                            sdc_shape_str(have->shape, have->rank, b, sizeof b));
        }
        in[i] = *have;
        in[i].rank = want->rank;
        memcpy(in[i].shape, want->shape, sizeof in[i].shape);
    }
    char msg[1024];
    sdc_status s = sdc_model_predict(m, in, n_in, out, n_out, msg, sizeof msg);
    return s ? sdc_fail(err, s, "%s: %s", path, msg) : SDC_OK;
}

/* The output named `name` (else the first) as float32, with its element count. */
static sdc_status take_output(const sdc_ndarray *outs, int n, const char *name, const char *path, float **data,
                              size_t *count, sdc_err *err) {
    const sdc_ndarray *o = NULL;
    for (int i = 0; i < n && !o; i++)
        if (!strcmp(outs[i].name, name)) o = &outs[i];
    if (!o && n > 0 && !name[0]) o = &outs[0];
    if (!o) return sdc_fail(err, SDC_E_FORMAT, "%s: no output %s", path, name);
    if (!(*data = sdc_ndarray_to_f32(o))) return sdc_fail(err, SDC_E_NOMEM, "out of memory");
    if (count) *count = sdc_ndarray_numel(o);
    return SDC_OK;
}

static sdc_ndarray f32_array(const char *name, float *data, int rank, const int64_t *shape) {
    sdc_ndarray a = {.name = name, .dtype = SDC_ND_F32, .rank = rank, .data = data};
    memcpy(a.shape, shape, sizeof(int64_t) * (size_t)rank);
    return a;
}

/* ---------------------------------------------------------------- text */

/* One encoder on one prompt: its hidden states (S, H) and pooled output (P), malloc'd. */
static sdc_status encode(gen *g, sdc_model *te, const char *path, sdc_tokenizer *tok, const char *text,
                         float **hidden, int64_t *s_len, int64_t *h, float **pooled, int64_t *p, sdc_err *err) {
    const sdc_ndarray *want = sdc_model_input(te, 0);
    int n = (int)want->shape[want->rank - 1];
    if (n < 2 || n > 4096) return sdc_fail(err, SDC_E_FORMAT, "%s: input %s has %d tokens", path, want->name, n);
    int32_t *ids = sdc_malloc(sizeof *ids * (size_t)n);
    float *fids = sdc_malloc(sizeof *fids * (size_t)n);
    sdc_status s = ids && fids ? SDC_OK : sdc_fail(err, SDC_E_NOMEM, "out of memory");
    int n_tokens = 0;
    if (!s) s = sdc_tokenizer_encode(tok, text, ids, n, &n_tokens, err);
    if (!s && n_tokens > n)
        gen_log(g->job, SDC_LOG_WARNING, "the prompt was cut to the text encoder's %d tokens (%d given)", n, n_tokens);
    for (int i = 0; !s && i < n; i++) fids[i] = (float)ids[i]; /* ids as float32, as the anchor feeds them */
    sdc_ndarray *outs = NULL;
    int n_out = 0;
    if (!s) {
        int64_t shape[2] = {1, n};
        sdc_ndarray feed = f32_array(want->name, fids, 2, shape);
        s = run_model(te, path, &feed, 1, &outs, &n_out, err);
    }
    const char *key = g->xl ? "hidden_embeds" : "last_hidden_state";
    size_t nh = 0, np = 0;
    if (!s) s = take_output(outs, n_out, key, path, hidden, &nh, err);
    if (!s) s = take_output(outs, n_out, "pooled_outputs", path, pooled, &np, err);
    if (!s) {
        *s_len = n;
        *h = (int64_t)(nh / (size_t)n);
        *p = (int64_t)np;
    }
    sdc_ndarrays_free(outs, n_out);
    sdc_free(ids), sdc_free(fids);
    return s;
}

/* One side of guidance: every encoder's hidden states side by side (S, D) transposed into the
   UNet's (D, 1, S), and the last encoder's pooled output. */
static sdc_status encode_side(gen *g, int side, const char *text, sdc_err *err) {
    sdc_model *tes[2] = {g->te, g->te2};
    sdc_tokenizer *toks[2] = {g->tok, g->tok2};
    const char *paths[2] = {g->te_path, g->te2_path};
    float *hid[2] = {NULL, NULL}, *pool[2] = {NULL, NULL};
    int64_t s_len[2] = {0, 0}, h[2] = {0, 0}, p[2] = {0, 0};
    sdc_status s = SDC_OK;
    for (int k = 0; k < 2 && !s; k++)
        if (tes[k]) s = encode(g, tes[k], paths[k], toks[k], text, &hid[k], &s_len[k], &h[k], &pool[k], &p[k], err);
    if (!s && g->te && g->te2 && s_len[0] != s_len[1])
        s = sdc_fail(err, SDC_E_FORMAT, "%s and %s take %lld and %lld tokens", g->te_path, g->te2_path,
                     (long long)s_len[0], (long long)s_len[1]);
    int64_t S = s_len[0] ? s_len[0] : s_len[1], D = h[0] + h[1];
    float *ehs = s ? NULL : sdc_malloc(sizeof *ehs * (size_t)(S * D));
    if (!s && !ehs) s = sdc_fail(err, SDC_E_NOMEM, "out of memory");
    for (int64_t t = 0; !s && t < S; t++)
        for (int k = 0, d0 = 0; k < 2; d0 += (int)h[k], k++)
            for (int64_t d = 0; d < h[k]; d++) ehs[(d0 + d) * S + t] = hid[k][t * h[k] + d]; /* (S, H_k) → (D, 1, S) */
    int last = g->te2 ? 1 : 0;
    bool for_refiner = g->refiner.n > 0 && g->te && g->te2;
    float *ehs2 = !s && for_refiner ? sdc_malloc(sizeof *ehs2 * (size_t)(S * h[1])) : NULL;
    if (!s && for_refiner && !ehs2) s = sdc_fail(err, SDC_E_NOMEM, "out of memory");
    if (ehs2 && !s) memcpy(ehs2, ehs + h[0] * S, sizeof *ehs2 * (size_t)(S * h[1])); /* text_encoder_2's rows */
    if (!s) {
        g->ehs[side] = ehs;
        g->ehs2[side] = ehs2;
        g->ehs2_d = h[1];
        g->ehs_d = D;
        g->ehs_s = S;
        g->pooled[side] = pool[last];
        g->pooled_n = p[last];
        pool[last] = NULL;
    } else {
        sdc_free(ehs), sdc_free(ehs2);
    }
    for (int k = 0; k < 2; k++) sdc_free(hid[k]), sdc_free(pool[k]);
    return s;
}

/* Zero embeddings for the negative side (SDXL's force_zeros_for_empty_prompt). */
static sdc_status zero_side(gen *g, int side, sdc_err *err) {
    g->ehs[side] = sdc_calloc((size_t)(g->ehs_d * g->ehs_s), sizeof(float));
    g->ehs2[side] = sdc_calloc((size_t)(g->ehs2_d * g->ehs_s + 1), sizeof(float));
    g->pooled[side] = sdc_calloc((size_t)(g->pooled_n ? g->pooled_n : 1), sizeof(float));
    return g->ehs[side] && g->ehs2[side] && g->pooled[side] ? SDC_OK : sdc_fail(err, SDC_E_NOMEM, "out of memory");
}

/* model_index.json's force_zeros_for_empty_prompt, read for SDXL only as the anchor does. */
static bool force_zeros(const gen *g) {
    json_t *v = g->src.model_index ? json_object_get(g->src.model_index, "force_zeros_for_empty_prompt") : NULL;
    return g->xl && json_is_true(v);
}

static sdc_status encode_prompts(gen *g, sdc_err *err) {
    const sdc_generate_job *job = g->job;
    sdc_status s = encode_side(g, POS, job->prompt, err);
    if (s || !g->cfg) return s;
    if (!job->negative_prompt && force_zeros(g)) return zero_side(g, NEG, err);
    return encode_side(g, NEG, job->negative_prompt ? job->negative_prompt : "", err);
}

/* time_ids rows as diffusers makes them: [h, w, 0, 0, h, w] (base), or [h, w, 0, 0, score]
   with the aesthetic score 6.0 / 2.5 for the positive / negative side (refiner). */
static sdc_status prepare_time_ids(const gen *g, unet_model *u, sdc_err *err) {
    const sdc_ndarray *t = unet_model_input(u, "time_ids");
    if (!t) return SDC_OK;
    int64_t per_row = t->rank > 1 ? t->shape[t->rank - 1] : t->shape[0] / g->batch;
    if (per_row != 5 && per_row != 6)
        return sdc_fail(err, SDC_E_FORMAT, "%s: time_ids has %lld values a row, not 5 (refiner) or 6", u->path[0],
                        (long long)per_row);
    u->n_time_ids = (int)per_row;
    for (int side = 0; side < 2; side++) {
        float *r = u->time_ids[side];
        r[0] = r[4] = (float)g->height, r[1] = r[5] = (float)g->width, r[2] = r[3] = 0;
        if (per_row == 5) r[4] = (float)(side == POS ? AESTHETIC_SCORE : NEGATIVE_AESTHETIC_SCORE);
    }
    return SDC_OK;
}

/* ---------------------------------------------------------------- one UNet call */

typedef struct call_buffers {
    float *sample, *timestep, *ehs, *pooled, *time_ids, *cond[MAX_CONTROLNETS];
    sdc_ndarray *residuals; /* the ControlNets' outputs, summed */
    int n_residuals;
} call_buffers;

static void free_call(call_buffers *b) {
    sdc_free(b->sample), sdc_free(b->timestep), sdc_free(b->ehs), sdc_free(b->pooled), sdc_free(b->time_ids);
    for (int i = 0; i < MAX_CONTROLNETS; i++) sdc_free(b->cond[i]);
    sdc_ndarrays_free(b->residuals, b->n_residuals);
    memset(b, 0, sizeof *b);
}

/* ControlNet images as (rows, 3, H, W) in [0, 1] (the anchor's prepare_controlnet_cond). */
static float *control_cond(const gen *g, int k, int rows) {
    size_t plane = (size_t)g->height * g->width;
    float *c = sdc_malloc(sizeof *c * plane * 3 * (size_t)rows);
    if (!c) return NULL;
    for (int r = 0; r < rows; r++)
        for (size_t p = 0; p < plane; p++)
            for (int ch = 0; ch < 3; ch++) c[(size_t)r * 3 * plane + ch * plane + p] = (float)(g->cn_cond[k][p * 3 + ch] / 255.0);
    return c;
}

/* Adds every output of one ControlNet to the running sums, by name. */
static sdc_status add_residuals(call_buffers *b, sdc_ndarray *outs, int n_out, const char *path, sdc_err *err) {
    if (!b->residuals) {
        for (int i = 0; i < n_out; i++) {
            float *f = sdc_ndarray_to_f32(&outs[i]);
            if (!f) return sdc_fail(err, SDC_E_NOMEM, "out of memory");
            free(outs[i].data);
            outs[i].data = f;
            outs[i].dtype = SDC_ND_F32;
        }
        b->residuals = outs;
        b->n_residuals = n_out;
        return SDC_OK;
    }
    sdc_status s = SDC_OK;
    for (int i = 0; i < b->n_residuals && !s; i++) {
        const sdc_ndarray *o = NULL;
        for (int k = 0; k < n_out && !o; k++)
            if (!strcmp(outs[k].name, b->residuals[i].name)) o = &outs[k];
        float *f = o && sdc_ndarray_numel(o) == sdc_ndarray_numel(&b->residuals[i]) ? sdc_ndarray_to_f32(o) : NULL;
        if (!f) {
            s = o ? sdc_fail(err, SDC_E_FORMAT, "%s: output %s differs from the first ControlNet's", path, b->residuals[i].name)
                  : sdc_fail(err, SDC_E_FORMAT, "%s: no output %s, which the first ControlNet has", path, b->residuals[i].name);
            break;
        }
        float *sum = b->residuals[i].data;
        for (size_t j = 0; j < sdc_ndarray_numel(o); j++) sum[j] += f[j];
        sdc_free(f);
    }
    sdc_ndarrays_free(outs, n_out);
    return s;
}

/* noise_pred for `rows` (sides NEG/POS, one per batch row) at latent input x and timestep t. */
static sdc_status unet_call(gen *g, const unet_model *u, const int *rows, int n_rows, const float *x, float t, float *out,
                            sdc_err *err) {
    call_buffers b = {0};
    int64_t d = u->te2_only ? g->ehs2_d : g->ehs_d;
    float *const *ehs = u->te2_only ? g->ehs2 : g->ehs;
    size_t ne = (size_t)(d * g->ehs_s), np = (size_t)(g->pooled_n ? g->pooled_n : 1), nt = (size_t)u->n_time_ids;
    b.sample = sdc_malloc(sizeof(float) * g->nlat * (size_t)n_rows);
    b.timestep = sdc_malloc(sizeof(float) * (size_t)n_rows);
    b.ehs = sdc_malloc(sizeof(float) * ne * (size_t)n_rows);
    b.pooled = sdc_malloc(sizeof(float) * np * (size_t)n_rows);
    b.time_ids = sdc_malloc(sizeof(float) * (nt ? nt : 1) * (size_t)n_rows);
    if (!b.sample || !b.timestep || !b.ehs || !b.pooled || !b.time_ids) {
        free_call(&b);
        return sdc_fail(err, SDC_E_NOMEM, "out of memory");
    }
    for (int r = 0; r < n_rows; r++) {
        memcpy(b.sample + (size_t)r * g->nlat, x, sizeof(float) * g->nlat);
        b.timestep[r] = t;
        memcpy(b.ehs + (size_t)r * ne, ehs[rows[r]], sizeof(float) * ne);
        if (g->pooled_n) memcpy(b.pooled + (size_t)r * np, g->pooled[rows[r]], sizeof(float) * np);
        if (nt) memcpy(b.time_ids + (size_t)r * nt, u->time_ids[rows[r]], sizeof(float) * nt);
    }
    int64_t rws = n_rows;
    sdc_ndarray feeds[MAX_FEEDS];
    int nf = 0;
    feeds[nf++] = f32_array("sample", b.sample, 4, (int64_t[]){rws, g->lc, g->lh, g->lw});
    feeds[nf++] = f32_array("timestep", b.timestep, 1, (int64_t[]){rws});
    feeds[nf++] = f32_array("encoder_hidden_states", b.ehs, 4, (int64_t[]){rws, d, 1, g->ehs_s});
    feeds[nf++] = f32_array("text_embeds", b.pooled, 2, (int64_t[]){rws, (int64_t)np});
    feeds[nf++] = f32_array("time_ids", b.time_ids, 2, (int64_t[]){rws, (int64_t)(nt ? nt : 1)});
    int n_base = nf;
    sdc_status s = SDC_OK;
    for (int k = 0; k < g->n_cn && !s; k++) {
        if (!(b.cond[k] = control_cond(g, k, n_rows))) {
            s = sdc_fail(err, SDC_E_NOMEM, "out of memory");
            break;
        }
        feeds[n_base] = f32_array("controlnet_cond", b.cond[k], 4, (int64_t[]){rws, 3, g->height, g->width});
        sdc_ndarray *outs = NULL;
        int n_out = 0;
        s = run_model(g->cn[k], g->cn_path[k], feeds, n_base + 1, &outs, &n_out, err);
        if (!s) s = add_residuals(&b, outs, n_out, g->cn_path[k], err);
    }
    for (int i = 0; i < b.n_residuals && nf < MAX_FEEDS; i++) feeds[nf++] = b.residuals[i];
    /* chunk 2 takes chunk 1's outputs and the inputs (outputs win on a name clash, as in Swift) */
    sdc_ndarray *outs = NULL;
    int n_out = 0;
    for (int part = 0; part < u->n && !s; part++) {
        sdc_ndarray pool[2 * MAX_FEEDS];
        int np2 = 0;
        for (int i = 0; i < n_out && np2 < MAX_FEEDS; i++) pool[np2++] = outs[i];
        for (int i = 0; i < nf; i++) pool[np2++] = feeds[i];
        sdc_ndarray *next = NULL;
        int n_next = 0;
        s = run_model(u->part[part], u->path[part], pool, np2, &next, &n_next, err);
        sdc_ndarrays_free(outs, n_out);
        outs = next, n_out = n_next;
    }
    float *noise = NULL;
    size_t count = 0;
    if (!s) s = take_output(outs, n_out, u->n == 1 ? "noise_pred" : "", u->path[u->n - 1], &noise, &count, err);
    if (!s && count != g->nlat * (size_t)n_rows)
        s = sdc_fail(err, SDC_E_FORMAT, "%s: noise_pred has %zu values, not %zu", u->path[u->n - 1], count,
                     g->nlat * (size_t)n_rows);
    if (!s) memcpy(out, noise, sizeof(float) * count);
    sdc_free(noise);
    sdc_ndarrays_free(outs, n_out);
    free_call(&b);
    return s;
}

/* The guided noise prediction at loop index i: one batch-2 call or two batch-1 calls. */
static sdc_status predict_noise(gen *g, int i, const float *latents, float *guided, float *scratch, sdc_err *err) {
    /* the Swift pipeline's switch to the refiner at refinerStart (0.8) of the steps */
    const unet_model *u = g->refiner.n && i >= g->refiner_start ? &g->refiner : &g->unet;
    float *x = scratch, *both = scratch + g->nlat; /* both: 2 * nlat */
    memcpy(x, latents, sizeof(float) * g->nlat);
    sdc_scheduler_scale_model_input(g->sched, i, x, g->nlat);
    /* the anchor feeds the timestep as float16: the UNet's input declares it so */
    float t = (float)sdc_scheduler_timestep(g->sched, i);
    sdc_status s;
    if (g->batch == 2) {
        int rows[2] = {g->cfg ? NEG : POS, POS};
        s = unet_call(g, u, rows, 2, x, t, both, err);
    } else if (g->cfg) {
        int neg = NEG, pos = POS;
        s = unet_call(g, u, &neg, 1, x, t, both, err);
        if (!s) s = unet_call(g, u, &pos, 1, x, t, both + g->nlat, err);
    } else {
        int pos = POS;
        s = unet_call(g, u, &pos, 1, x, t, both + g->nlat, err);
    }
    if (s) return s;
    const float *un = both, *c = both + g->nlat;
    float w = (float)g->job->guidance_scale;
    for (size_t k = 0; k < g->nlat; k++) guided[k] = g->cfg ? un[k] + w * (c[k] - un[k]) : c[k];
    return SDC_OK;
}

/* ---------------------------------------------------------------- latents */

/* randn values of the anchor: RandomState draws cast to float16. */
static void randn_f16(sdc_rng *rng, float *out, size_t n) {
    sdc_rng_randn(rng, out, n);
    for (size_t i = 0; i < n; i++) out[i] = sdc_f16_to_f32(sdc_f32_to_f16(out[i]));
}

static sdc_status read_image(const gen *g, const char *path, const char *what, uint8_t **rgb, sdc_err *err) {
    int w, h;
    sdc_status s = sdc_png_read(path, &w, &h, rgb, err);
    if (s) return s;
    if (w != g->width || h != g->height) {
        sdc_free(*rgb);
        *rgb = NULL;
        return sdc_fail(err, SDC_E_FORMAT, "%s %s: the image is %dx%d, the packages make %dx%d images (resize it first)", what,
                        path, w, h, g->width, g->height);
    }
    return SDC_OK;
}

/* Image-to-image: the image's latents (VAE encoder mean + std * N(0, 1), times 0.18215) noised
   to the start step. 0.18215 is the factor decode() divides by (the anchor's, for SDXL too), not
   the VAE's scaling_factor (SDXL's 0.13025): so encode then decode gives the image back, as at
   strength 0. `noise` holds the first draw; the encoder's draw follows it. */
static sdc_status image_latents(gen *g, const float *noise, float *latents, int *start, sdc_err *err) {
    uint8_t *rgb = NULL;
    sdc_status s = read_image(g, g->job->image, "--image", &rgb, err);
    if (s) return s;
    size_t plane = (size_t)g->height * g->width;
    float *x = sdc_malloc(sizeof *x * plane * 3), *eps = sdc_malloc(sizeof *eps * g->nlat), *moments = NULL;
    if (!x || !eps) s = sdc_fail(err, SDC_E_NOMEM, "out of memory");
    for (size_t p = 0; !s && p < plane; p++)
        for (int c = 0; c < 3; c++) x[c * plane + p] = (float)(rgb[p * 3 + c] / 255.0 * 2.0 - 1.0); /* (1, 3, H, W) in [-1, 1] */
    sdc_ndarray *outs = NULL;
    int n_out = 0;
    size_t count = 0;
    if (!s) {
        sdc_ndarray feed = f32_array(sdc_model_input(g->vae_enc, 0)->name, x, 4, (int64_t[]){1, 3, g->height, g->width});
        s = run_model(g->vae_enc, g->enc_path, &feed, 1, &outs, &n_out, err);
    }
    if (!s) s = take_output(outs, n_out, "", g->enc_path, &moments, &count, err);
    if (!s && count != 2 * g->nlat)
        s = sdc_fail(err, SDC_E_FORMAT, "%s: %zu output values, not mean and log-variance of %zu latents", g->enc_path, count,
                     g->nlat);
    if (!s) {
        randn_f16(&g->rng, eps, g->nlat);
        for (size_t k = 0; k < g->nlat; k++) {
            double logvar = fmin(fmax(moments[g->nlat + k], -30.0), 20.0);
            latents[k] = (float)((moments[k] + exp(0.5 * logvar) * eps[k]) * LATENT_SCALE);
        }
        *start = sdc_scheduler_img2img_start(g->sched, g->job->strength);
        if (*start < sdc_scheduler_steps(g->sched)) sdc_scheduler_add_noise(g->sched, *start, noise, latents, g->nlat);
    }
    sdc_ndarrays_free(outs, n_out);
    sdc_free(rgb), sdc_free(x), sdc_free(eps), sdc_free(moments);
    return s;
}

/* ---------------------------------------------------------------- decode and check */

/* (1, H, W, 3) in [0, 1] from the latents: VAE decoder on latents / 0.18215, (x / 2 + 0.5) clipped. */
static sdc_status decode(gen *g, const float *latents, float *image, sdc_err *err) {
    float *z = sdc_malloc(sizeof *z * g->nlat), *chw = NULL;
    if (!z) return sdc_fail(err, SDC_E_NOMEM, "out of memory");
    for (size_t k = 0; k < g->nlat; k++) z[k] = (float)(latents[k] / LATENT_SCALE);
    sdc_ndarray feed = f32_array(sdc_model_input(g->vae_dec, 0)->name, z, 4, (int64_t[]){1, g->lc, g->lh, g->lw});
    sdc_ndarray *outs = NULL;
    int n_out = 0;
    size_t count = 0, plane = (size_t)g->height * g->width;
    sdc_status s = run_model(g->vae_dec, g->dec_path, &feed, 1, &outs, &n_out, err);
    if (!s) s = take_output(outs, n_out, "image", g->dec_path, &chw, &count, err);
    if (!s && count != 3 * plane)
        s = sdc_fail(err, SDC_E_FORMAT, "%s: image has %zu values, not 3 x %d x %d", g->dec_path, count, g->height, g->width);
    for (size_t p = 0; !s && p < plane; p++)
        for (int c = 0; c < 3; c++) {
            float v = chw[c * plane + p] / 2.0f + 0.5f;
            image[p * 3 + c] = v < 0 ? 0 : v > 1 ? 1 : v;
        }
    sdc_ndarrays_free(outs, n_out);
    sdc_free(z), sdc_free(chw);
    return s;
}

/* NumPy's (x * 255).round().astype(uint8): round half to even. */
static void to_rgb8(const float *image, size_t n, uint8_t *rgb) {
    for (size_t i = 0; i < n; i++) rgb[i] = (uint8_t)nearbyintf(image[i] * 255.0f);
}

/* CLIPImageProcessor's settings (feature_extractor/preprocessor_config.json; CLIP's defaults). */
typedef struct clip_prep {
    int shortest_edge, crop_h, crop_w;
    double mean[3], std[3];
} clip_prep;

static sdc_status read_clip_prep(const gen *g, clip_prep *p, sdc_err *err) {
    *p = (clip_prep){224, 224, 224, {0.48145466, 0.4578275, 0.40821073}, {0.26862954, 0.26130258, 0.27577711}};
    char path[4200];
    json_t *cfg = NULL;
    if (!sdc_fmt(path, sizeof path, "%s/feature_extractor/preprocessor_config.json", g->src.root) || !sdc_path_exists(path))
        return SDC_OK;
    sdc_status s = sdc_json_load(path, &cfg, err);
    if (s) return s;
    json_t *size = json_object_get(cfg, "size"), *crop = json_object_get(cfg, "crop_size");
    json_t *se = json_is_object(size) ? json_object_get(size, "shortest_edge") : size;
    if (json_is_integer(se) && json_integer_value(se) > 0 && json_integer_value(se) <= 4096) p->shortest_edge = (int)json_integer_value(se);
    json_t *ch = json_is_object(crop) ? json_object_get(crop, "height") : crop, *cw = json_is_object(crop) ? json_object_get(crop, "width") : crop;
    if (json_is_integer(ch) && json_integer_value(ch) > 0 && json_integer_value(ch) <= 4096) p->crop_h = (int)json_integer_value(ch);
    if (json_is_integer(cw) && json_integer_value(cw) > 0 && json_integer_value(cw) <= 4096) p->crop_w = (int)json_integer_value(cw);
    const char *keys[2] = {"image_mean", "image_std"};
    double *dst[2] = {p->mean, p->std};
    for (int k = 0; k < 2; k++) {
        json_t *a = json_object_get(cfg, keys[k]);
        if (json_is_array(a) && json_array_size(a) == 3)
            for (int c = 0; c < 3; c++)
                if (json_is_number(json_array_get(a, (size_t)c))) dst[k][c] = json_number_value(json_array_get(a, (size_t)c));
    }
    json_decref(cfg);
    for (int c = 0; c < 3; c++) /* the clip_input divides by std */
        if (!isfinite(p->mean[c]) || !isfinite(p->std[c]) || !(p->std[c] > 0))
            return sdc_fail(err, SDC_E_FORMAT, "%s: %s must be finite, image_std above 0", path,
                            isfinite(p->mean[c]) ? "image_std" : "image_mean");
    return SDC_OK;
}

/* The safety checker's clip_input (1, 3, crop_h, crop_w): the 8-bit image resized (shortest
   edge, Pillow bicubic), centre-cropped, scaled to [0, 1] and normalised. */
static sdc_status clip_input(const gen *g, const uint8_t *rgb, const clip_prep *p, float *out, sdc_err *err) {
    int w = g->width, h = g->height;
    int rw = w <= h ? p->shortest_edge : (int)((int64_t)p->shortest_edge * w / h);
    int rh = w <= h ? (int)((int64_t)p->shortest_edge * h / w) : p->shortest_edge;
    if (rw < p->crop_w || rh < p->crop_h)
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: crop %dx%d larger than the resized %dx%d image", g->safety_path, p->crop_w,
                        p->crop_h, rw, rh);
    uint8_t *resized = sdc_malloc((size_t)rw * rh * 3);
    if (!resized || !sdc_gen_resize_bicubic(rgb, w, h, resized, rw, rh)) {
        sdc_free(resized);
        return sdc_fail(err, SDC_E_NOMEM, "out of memory");
    }
    int top = (rh - p->crop_h) / 2, left = (rw - p->crop_w) / 2;
    size_t plane = (size_t)p->crop_h * p->crop_w;
    for (int y = 0; y < p->crop_h; y++)
        for (int x = 0; x < p->crop_w; x++)
            for (int c = 0; c < 3; c++) {
                double v = resized[((size_t)(y + top) * rw + (x + left)) * 3 + c] * (1.0 / 255.0);
                out[c * plane + (size_t)y * p->crop_w + x] = (float)((v - p->mean[c]) / p->std[c]);
            }
    sdc_free(resized);
    return SDC_OK;
}

/* The anchor's run_safety_checker: has_nsfw_concepts, and filtered_images replaces the image. */
static sdc_status safety_check(gen *g, float *image, bool *nsfw, sdc_err *err) {
    size_t n = (size_t)g->height * g->width * 3;
    clip_prep p;
    sdc_status s = read_clip_prep(g, &p, err);
    if (s) return s;
    uint8_t *rgb = sdc_malloc(n);
    float *clip = sdc_malloc(sizeof *clip * 3 * (size_t)p.crop_h * p.crop_w), *flags = NULL, *filtered = NULL, zero = 0;
    s = rgb && clip ? SDC_OK : sdc_fail(err, SDC_E_NOMEM, "out of memory");
    if (!s) to_rgb8(image, n, rgb);
    if (!s) s = clip_input(g, rgb, &p, clip, err);
    sdc_ndarray *outs = NULL;
    int n_out = 0;
    size_t nf = 0, nc = 0;
    if (!s) {
        sdc_ndarray feeds[3] = {
            f32_array("clip_input", clip, 4, (int64_t[]){1, 3, p.crop_h, p.crop_w}),
            f32_array("images", image, 4, (int64_t[]){1, g->height, g->width, 3}),
            f32_array("adjustment", &zero, 1, (int64_t[]){1}),
        };
        s = run_model(g->safety, g->safety_path, feeds, 3, &outs, &n_out, err);
    }
    if (!s) s = take_output(outs, n_out, "has_nsfw_concepts", g->safety_path, &flags, &nf, err);
    if (!s) s = take_output(outs, n_out, "filtered_images", g->safety_path, &filtered, &nc, err);
    if (!s && nc != n) s = sdc_fail(err, SDC_E_FORMAT, "%s: filtered_images has %zu values, not %zu", g->safety_path, nc, n);
    if (!s) {
        *nsfw = false;
        for (size_t k = 0; k < nf; k++) *nsfw |= flags[k] != 0; /* the anchor's has_nsfw_concept.any() */
        memcpy(image, filtered, sizeof(float) * n);
    }
    sdc_ndarrays_free(outs, n_out);
    sdc_free(rgb), sdc_free(clip), sdc_free(flags), sdc_free(filtered);
    return s;
}

/* ---------------------------------------------------------------- setup */

static sdc_status open_tokenizer(const gen *g, const char *folder, sdc_tokenizer **tok, sdc_err *err) {
    char dir[4200];
    if (!sdc_fmt(dir, sizeof dir, "%s/%s", g->src.root, folder)) return sdc_fail(err, SDC_E_ARG, "%s: path too long", g->src.root);
    if (!sdc_path_exists(dir))
        return sdc_fail(err, SDC_E_NOTFOUND, "%s: no %s/ folder (vocab.json, merges.txt) for the text encoder", g->src.root, folder);
    return sdc_tokenizer_open(dir, tok, err);
}

static sdc_status open_scheduler(gen *g, sdc_err *err) {
    char path[4200];
    json_t *cfg = NULL;
    if (!sdc_fmt(path, sizeof path, "%s/scheduler/scheduler_config.json", g->src.root))
        return sdc_fail(err, SDC_E_ARG, "%s: path too long", g->src.root);
    if (!sdc_path_exists(path)) return sdc_fail(err, SDC_E_NOTFOUND, "%s: no scheduler config", path);
    sdc_status s = sdc_json_load(path, &cfg, err);
    if (!s) s = sdc_scheduler_open(g->job->scheduler, cfg, path, g->job->num_inference_steps, &g->sched, err);
    json_decref(cfg);
    return s;
}

/* The UNet's batch, latent shape and output size, and the SDXL inputs it declares. */
static sdc_status read_geometry(gen *g, sdc_err *err) {
    const sdc_ndarray *sample = unet_input(g, "sample");
    if (!sample || sample->rank != 4 || sample->shape[0] < 1 || sample->shape[0] > 2 || sample->shape[2] < 1 ||
        sample->shape[3] < 1 || sample->shape[1] < 1)
        return sdc_fail(err, SDC_E_FORMAT, "%s: no input sample of shape (1 or 2, C, h, w)", g->unet.path[0]);
    g->batch = (int)sample->shape[0];
    g->lc = sample->shape[1], g->lh = sample->shape[2], g->lw = sample->shape[3];
    if (g->lh > SDC_PNG_MAX_SIDE || g->lw > SDC_PNG_MAX_SIDE || g->lc > 64)
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: sample is too large for an image", g->unet.path[0]);
    g->nlat = (size_t)(g->lc * g->lh * g->lw);
    g->xl = unet_input(g, "time_ids") != NULL || unet_input(g, "text_embeds") != NULL;
    if (g->job->unet_batch_one && g->batch != 1)
        return sdc_fail(err, SDC_E_FORMAT, "--unet-batch-one: %s takes batch %d (convert it with --unet-batch-one)",
                        g->unet.path[0], g->batch);
    return SDC_OK;
}

/* An SDXL base's refiner (<model>_refiner, converted with --refiner-version), as the Swift
   pipeline uses it: text_encoder_2's hidden states alone, its own time ids, from 0.8 of the steps. */
static sdc_status load_refiner(gen *g, sdc_err *err) {
    bool found;
    sdc_status s = load_unet_named(g, "refiner", &g->refiner, &found, err);
    if (s || !found) return s;
    const sdc_ndarray *a = unet_model_input(&g->refiner, "sample"), *b = unet_input(g, "sample");
    if (!a || a->rank != 4 || memcmp(a->shape, b->shape, sizeof(int64_t) * 4)) {
        char x[128], y[128];
        return sdc_fail(err, SDC_E_FORMAT, "%s: sample is %s, the UNet's is %s", g->refiner.path[0],
                        a ? sdc_shape_str(a->shape, a->rank, x, sizeof x) : "missing", sdc_shape_str(b->shape, 4, y, sizeof y));
    }
    g->refiner.te2_only = true;
    g->refiner_start = (int)(sdc_scheduler_steps(g->sched) * REFINER_START);
    gen_log(g->job, SDC_LOG_INFO, "using %s from step %d", g->refiner.path[0], g->refiner_start + 1);
    return SDC_OK;
}

/* The image size: the VAE decoder's output (8 x the latents for every real model, which is what
   the anchor assumes; the tiny test models upsample less). */
static sdc_status read_image_size(gen *g, sdc_err *err) {
    const sdc_ndarray *img = NULL;
    for (int i = 0; i < sdc_model_n_outputs(g->vae_dec) && !img; i++)
        if (!strcmp(sdc_model_output(g->vae_dec, i)->name, "image")) img = sdc_model_output(g->vae_dec, i);
    if (!img || img->rank != 4 || img->shape[1] != 3 || img->shape[2] < g->lh || img->shape[3] < g->lw ||
        img->shape[2] > SDC_PNG_MAX_SIDE || img->shape[3] > SDC_PNG_MAX_SIDE)
        return sdc_fail(err, SDC_E_FORMAT, "%s: no output image of shape (1, 3, H, W) for %lldx%lld latents", g->dec_path,
                        (long long)g->lh, (long long)g->lw);
    g->height = (int)img->shape[2], g->width = (int)img->shape[3];
    const sdc_ndarray *z = sdc_model_input(g->vae_dec, 0);
    if (z->rank != 4 || z->shape[0] != 1 || z->shape[1] != g->lc || z->shape[2] != g->lh || z->shape[3] != g->lw) {
        char a[128], b[128];
        return sdc_fail(err, SDC_E_FORMAT, "%s: input %s is %s, the UNet's latents are %s", g->dec_path, z->name,
                        sdc_shape_str(z->shape, z->rank, a, sizeof a),
                        sdc_shape_str((int64_t[]){1, g->lc, g->lh, g->lw}, 4, b, sizeof b));
    }
    return SDC_OK;
}

static sdc_status load_packages(gen *g, sdc_err *err) {
    const sdc_generate_job *job = g->job;
    sdc_status s = load_unet(g, err);
    if (!s) s = read_geometry(g, err);
    /* SDXL: the base has both encoders; the refiner (no text_encoder in model_index.json) only the second */
    bool want_te = !g->xl || sdc_source_has(&g->src, "text_encoder");
    if (!s && want_te) s = load_optional(g, "text_encoder", true, &g->te, g->te_path, err);
    if (!s && g->xl) s = load_optional(g, "text_encoder_2", true, &g->te2, g->te2_path, err);
    if (!s && g->te) s = open_tokenizer(g, "tokenizer", &g->tok, err);
    if (!s && g->te2) s = open_tokenizer(g, "tokenizer_2", &g->tok2, err);
    if (!s) s = load_optional(g, "vae_decoder", true, &g->vae_dec, g->dec_path, err);
    if (!s) s = read_image_size(g, err);
    if (!s && g->xl && g->te) s = load_refiner(g, err);
    if (!s && job->image) s = load_optional(g, "vae_encoder", true, &g->vae_enc, g->enc_path, err);
    if (!s && !job->disable_safety && sdc_source_has(&g->src, "safety_checker")) {
        s = load_optional(g, "safety_checker", false, &g->safety, g->safety_path, err);
        if (!s && !g->safety)
            gen_log(job, SDC_LOG_WARNING, "%s has a safety checker but -i %s has no safety_checker package: the image is not checked",
                    job->model_version, job->packages_dir);
    }
    for (int k = 0; k < job->n_controlnet && !s; k++) {
        char name[512];
        if (!underscored(job->controlnet[k], "/", name, sizeof name) ||
            !sdc_fmt(g->cn_path[k], sizeof g->cn_path[k], "%s/ControlNet_%s.mlpackage", job->packages_dir, name))
            s = sdc_fail(err, SDC_E_ARG, "--controlnet %s: too long", job->controlnet[k]);
        else if (!sdc_path_exists(g->cn_path[k]))
            s = sdc_fail(err, SDC_E_NOTFOUND, "--controlnet %s: no %s", job->controlnet[k], g->cn_path[k]);
        else
            s = load_model(g, g->cn_path[k], &g->cn[k], err);
        g->n_cn = k + 1;
    }
    for (int k = 0; k < job->n_controlnet && !s; k++) s = read_image(g, job->controlnet_inputs[k], "--controlnet-inputs", &g->cn_cond[k], err);
    return s;
}

static sdc_status check_job(const sdc_generate_job *job, sdc_err *err) {
    if (!job->prompt) return sdc_fail(err, SDC_E_ARG, "--prompt is required");
    if (!job->model_version || !job->compute_unit) return sdc_fail(err, SDC_E_ARG, "the job was not made by sdc_generate_job_init");
    if (!job->packages_dir) return sdc_fail(err, SDC_E_ARG, "-i is required");
    if (!job->output_dir) return sdc_fail(err, SDC_E_ARG, "-o is required");
    if (job->num_inference_steps < 1) return sdc_fail(err, SDC_E_ARG, "--num-inference-steps must be at least 1");
    if (!isfinite(job->guidance_scale)) return sdc_fail(err, SDC_E_ARG, "--guidance-scale must be a number");
    if (job->n_controlnet > MAX_CONTROLNETS) return sdc_fail(err, SDC_E_ARG, "--controlnet: at most %d", MAX_CONTROLNETS);
    if (job->n_controlnet != job->n_controlnet_inputs)
        return sdc_fail(err, SDC_E_ARG, "--controlnet-inputs: %d images for %d ControlNets", job->n_controlnet_inputs,
                        job->n_controlnet);
    if (job->image && !(job->strength >= 0 && job->strength <= 1))
        return sdc_fail(err, SDC_E_ARG, "--strength must be in [0, 1]");
    return SDC_OK;
}

static void gen_free(gen *g) {
    sdc_model *ms[] = {g->te,           g->te2,           g->vae_dec,          g->vae_enc,
                       g->safety,       g->unet.part[0],  g->unet.part[1],     g->refiner.part[0],
                       g->refiner.part[1]};
    for (size_t i = 0; i < SDC_COUNT_OF(ms); i++) sdc_model_free(ms[i]);
    for (int k = 0; k < MAX_CONTROLNETS; k++) sdc_model_free(g->cn[k]), sdc_free(g->cn_cond[k]);
    sdc_tokenizer_free(g->tok), sdc_tokenizer_free(g->tok2);
    sdc_scheduler_free(g->sched);
    for (int side = 0; side < 2; side++) sdc_free(g->ehs[side]), sdc_free(g->ehs2[side]), sdc_free(g->pooled[side]);
    if (g->src_open) sdc_source_close(&g->src);
}

/* ---------------------------------------------------------------- the run */

static sdc_status denoise(gen *g, float *latents, int start, sdc_generate_result *res, sdc_err *err) {
    int steps = sdc_scheduler_steps(g->sched);
    float *guided = sdc_malloc(sizeof(float) * g->nlat), *scratch = sdc_malloc(sizeof(float) * g->nlat * 3);
    sdc_status s = guided && scratch ? SDC_OK : sdc_fail(err, SDC_E_NOMEM, "out of memory");
    int total = steps - start;
    if (g->job->progress && !s) g->job->progress(g->job->user, "denoise", 0, (uint64_t)total);
    for (int i = start; i < steps && !s; i++) {
        s = predict_noise(g, i, latents, guided, scratch, err);
        if (!s) s = sdc_scheduler_step(g->sched, i, guided, latents, g->nlat, &g->rng, err);
        if (!s && g->job->progress) g->job->progress(g->job->user, "denoise", (uint64_t)(i - start + 1), (uint64_t)total);
    }
    res->steps = total;
    sdc_free(guided), sdc_free(scratch);
    return s;
}

/* How many trailing components of `path` do not exist yet (the directories mkdirs will make). */
static int missing_dirs(const char *path) {
    char p[4096];
    if (!sdc_fmt(p, sizeof p, "%s", path)) return 0;
    int n = 0;
    for (char *slash; p[0] && !sdc_path_exists(p); n++) {
        if (!(slash = strrchr(p, '/'))) return n + 1;
        *slash = '\0';
    }
    return n;
}

/* rmdir of the last `n` components of `path`, deepest first (each only when empty). */
static void remove_made_dirs(const char *path, int n) {
    char p[4096];
    if (!sdc_fmt(p, sizeof p, "%s", path)) return;
    for (char *slash; n-- > 0 && p[0] && !rmdir(p) && (slash = strrchr(p, '/'));) *slash = '\0';
}

static sdc_status write_outputs(gen *g, const float *image, sdc_generate_result *res, sdc_err *err) {
    const sdc_generate_job *job = g->job;
    size_t n = (size_t)g->height * g->width * 3;
    char folder[4096];
    sdc_status s = sdc_gen_image_path(job->output_dir, job->prompt, job->seed, job->compute_unit, job->model_version,
                                      job->scheduler, job->num_inference_steps, folder, sizeof folder, res->image_path,
                                      sizeof res->image_path, err);
    int made = s ? 0 : missing_dirs(folder);
    if (!s) s = sdc_outdir_mkdirs(folder, true, err);
    uint8_t *rgb = s ? NULL : sdc_malloc(n);
    if (!s && !rgb) s = sdc_fail(err, SDC_E_NOMEM, "out of memory");
    if (!s) to_rgb8(image, n, rgb);
    if (!s) s = sdc_png_write(res->image_path, g->width, g->height, rgb, err);
    sdc_free(rgb);
    if (!s && job->float_image_npy) { /* after the PNG, so a failed PNG leaves no .npy */
        sdc_ndarray a = f32_array("image", (float *)image, 4, (int64_t[]){1, g->height, g->width, 3});
        char msg[1024];
        if (sdc_npy_write(job->float_image_npy, &a, msg, sizeof msg)) {
            s = sdc_fail(err, SDC_E_IO, "%s", msg);
            unlink(res->image_path);
        }
    }
    if (s) remove_made_dirs(folder, made); /* -o and the prompt's folder, made for this image: no empty leftover */
    return s;
}

static sdc_status generate(gen *g, sdc_generate_result *res, sdc_err *err) {
    const sdc_generate_job *job = g->job;
    double t0 = sdc_now_seconds();
    sdc_status s = check_job(job, err);
    if (!s && sdc_single_file_named(job->model_version))
        s = sdc_fail(err, SDC_E_UNSUPPORTED, "--model-version %s: the pipeline needs the model's diffusers folder or Hub id "
                     "(e.g. the one given as --config at conversion), not a single file", job->model_version);
    if (!s) s = sdc_source_open(job->model_version, &g->src, err);
    if (s == SDC_E_NOTFOUND && err && job->model_version == DEFAULT_MODEL_VERSION) /* the pointer job_init set: not given */
        snprintf(err->msg + strlen(err->msg), sizeof err->msg - strlen(err->msg),
                 " (the default --model-version; pass the model you converted)");
    g->src_open = !s;
    if (!s) s = open_scheduler(g, err);
    if (!s) s = load_packages(g, err);
    if (s) return s;
    g->cfg = job->guidance_scale > 1.0;
    snprintf(res->scheduler, sizeof res->scheduler, "%s", sdc_scheduler_name(g->sched));
    res->width = g->width, res->height = g->height;
    double t1 = sdc_now_seconds();
    res->seconds_load = t1 - t0;
    s = encode_prompts(g, err);
    if (!s) s = prepare_time_ids(g, &g->unet, err);
    if (!s && g->refiner.n) s = prepare_time_ids(g, &g->refiner, err);
    double t2 = sdc_now_seconds();
    res->seconds_text = t2 - t1;
    float *latents = sdc_malloc(sizeof(float) * g->nlat), *noise = sdc_malloc(sizeof(float) * g->nlat);
    float *image = sdc_malloc(sizeof(float) * (size_t)g->height * g->width * 3);
    if (!s && (!latents || !noise || !image)) s = sdc_fail(err, SDC_E_NOMEM, "out of memory");
    int start = 0;
    if (!s) {
        sdc_rng_seed(&g->rng, job->seed);
        randn_f16(&g->rng, noise, g->nlat);
        if (job->image) {
            s = image_latents(g, noise, latents, &start, err);
        } else {
            /* the anchor: randn(...).astype(float16) * init_noise_sigma, which NumPy computes in
               float16 (a scalar does not widen an array): sigma rounded, then the product */
            float sigma = sdc_f16_to_f32(sdc_f32_to_f16((float)sdc_scheduler_init_noise_sigma(g->sched)));
            for (size_t k = 0; k < g->nlat; k++) latents[k] = sdc_f16_to_f32(sdc_f32_to_f16(noise[k] * sigma));
        }
    }
    if (!s) s = denoise(g, latents, start, res, err);
    double t3 = sdc_now_seconds();
    res->seconds_denoise = t3 - t2;
    if (!s) s = decode(g, latents, image, err);
    double t4 = sdc_now_seconds();
    res->seconds_decode = t4 - t3;
    if (!s && g->safety) {
        s = safety_check(g, image, &res->nsfw, err);
        res->safety_checked = !s;
        if (!s && res->nsfw) gen_log(job, SDC_LOG_WARNING, "the safety checker found NSFW content: the image is black");
    }
    res->seconds_safety = g->safety ? sdc_now_seconds() - t4 : 0.0;
    if (!s) s = write_outputs(g, image, res, err);
    res->seconds_total = sdc_now_seconds() - t0;
    sdc_free(latents), sdc_free(noise), sdc_free(image);
    return s;
}

void sdc_generate_job_init(sdc_generate_job *job) {
    memset(job, 0, sizeof *job);
    job->model_version = DEFAULT_MODEL_VERSION;
    job->compute_unit = "ALL";
    job->seed = 93;
    job->num_inference_steps = 50;
    job->guidance_scale = 7.5;
    job->strength = 0.5;
}

sdc_status sdc_generate(const sdc_generate_job *job, sdc_generate_result *result, char *errbuf, size_t err_size) {
    sdc_err err = {0};
    sdc_generate_result res = {0};
    gen *g = sdc_calloc(1, sizeof *g);
    sdc_status s = g ? SDC_OK : sdc_fail(&err, SDC_E_NOMEM, "out of memory");
    if (g) {
        g->job = job;
        g->mopt.n_threads = job->n_threads;
        s = generate(g, &res, &err);
        gen_free(g);
        sdc_free(g);
    }
    if (result) *result = res;
    if (errbuf && err_size) snprintf(errbuf, err_size, "%s", s ? err.msg : "");
    return s;
}
