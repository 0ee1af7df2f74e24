/*
 * emit.c — one package, the same way for every component: skip it when it exists (as the
 * anchor), else build its graph, run the passes (--quantize-nbits), write it with the
 * anchor's metadata; then, with --check-output-correctness, check it against the float32
 * reference graph.
 */
#include "convert/convert.h"

#include "passes/palettize.h"

#include <errno.h>

/* ---------------------------------------------------------------- output names */

sdc_status sdc_conv_package_path(const sdc_conv_ctx *c, const char *submodule, char *out, size_t size) {
    char id[512];
    if (!sdc_source_output_name(c->job->model_version, id, sizeof id))
        return sdc_fail(c->err, SDC_E_ARG, "--model-version is too long");
    const char *dir = c->job->output_dir ? c->job->output_dir : ".";
    if (!sdc_fmt(out, size, "%s/Stable_Diffusion_version_%s_%s.mlpackage", dir, id, submodule))
        return sdc_fail(c->err, SDC_E_ARG, "-o: output path too long");
    return SDC_OK;
}

sdc_status sdc_conv_output_path(const sdc_conv_ctx *c, const char *name, char *out, size_t size) {
    const char *dir = c->job->output_dir ? c->job->output_dir : ".";
    if (!sdc_fmt(out, size, "%s/%s", dir, name)) return sdc_fail(c->err, SDC_E_ARG, "-o: output path too long");
    return SDC_OK;
}

static bool row_palettized(const sdc_conv_ctx *c) { return c->component && c->component->palettized; }

bool sdc_conv_exists_skip(const sdc_conv_ctx *c, const char *path, const char *what) {
    if (!sdc_path_exists(path)) return false;
    sdc_conv_log(c, SDC_LOG_NOTICE, "%s exists; skipping %s (remove it to convert again)", path, what);
    /* the anchor palettizes existing packages in place; we never rewrite one we did not write */
    if (c->job->quantize_nbits && row_palettized(c))
        sdc_conv_log(c, SDC_LOG_NOTICE,
                     "%s is kept as it is: --quantize-nbits palettizes only the packages this run writes", path);
    return true;
}

bool sdc_conv_skip(const sdc_conv_ctx *c, const char *path, const char *what) {
    return !c->job->check_output_correctness && sdc_conv_exists_skip(c, path, what);
}

/* "<dir>/<stem>.mlpackage" → "<dir>/<stem>.failed-check.mlpackage" */
static bool failed_check_path(const char *path, char *out, size_t size) {
    size_t n = strlen(path), ext = strlen(".mlpackage");
    if (n < ext || strcmp(path + n - ext, ".mlpackage")) return false;
    return sdc_fmt(out, size, "%.*s.failed-check.mlpackage", (int)(n - ext), path);
}

void sdc_conv_quarantine(const sdc_conv_ctx *c, const char *path) {
    char moved[4200];
    if (!sdc_path_exists(path) || !failed_check_path(path, moved, sizeof moved)) return;
    sdc_remove_package_tree(moved); /* the previous failure's; removes only a package's own files */
    if (rename(path, moved) == 0)
        sdc_conv_log(c, SDC_LOG_WARNING, "%s failed the check; moved to %s so that no later run keeps it", path,
                     moved);
    else
        sdc_conv_log(c, SDC_LOG_WARNING, "%s failed the check and could not be moved aside (%s): remove it",
                     path, strerror(errno));
}

/* ---------------------------------------------------------------- metadata */

static const char *const SHORT_DESCRIPTION =
    "Stable Diffusion generates images conditioned on text and/or other images as input through the diffusion "
    "process. Please refer to https://arxiv.org/abs/2112.10752 for details.";
static const char *const LICENSE_XL =
    "OpenRAIL++-M (https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/blob/main/LICENSE.md)";

sdc_status sdc_conv_write(const sdc_conv_ctx *c, const mil_graph *g, const char *path, const char *what,
                          const sdc_conv_docs *docs) {
    const sdc_job *job = c->job;
    const char *version = docs && docs->version ? docs->version : job->model_version;
    char author[700];
    snprintf(author, sizeof author, "Please refer to the Model Card available at huggingface.co/%s", version);
    const char *keys[2] = {"com.github.sdcoreml.options", "com.github.sdcoreml.version"};
    const char *values[2] = {job->options_summary ? job->options_summary : c->options, sdc_version()};
    sdc_package_info info = {
        .spec_version = c->target.spec,
        .short_description = docs && docs->short_description ? docs->short_description : SHORT_DESCRIPTION,
        .author = author,
        .license = docs && docs->license ? docs->license : job->xl_version ? LICENSE_XL : SDC_CONV_LICENSE_SD,
        .version = version,
        .n_user = 2,
        .user_keys = keys,
        .user_values = values,
        .input_docs = docs ? docs->inputs : NULL,
        .output_docs = docs ? docs->outputs : NULL,
        .n_input_docs = docs ? docs->n_inputs : 0,
        .n_output_docs = docs ? docs->n_outputs : 0,
    };
    sdc_write_hooks hooks = {job->progress, job->user, what};
    sdc_status s = sdc_write_package(g, &info, path, &hooks, c->err);
    if (!s) sdc_conv_log(c, SDC_LOG_INFO, "wrote %s (%zu ops)", path, g->n_ops);
    return s;
}

/* ---------------------------------------------------------------- passes and emit */

/* Before the graph is written (or chunked, so chunks are palettized too — unlike the anchor,
   which palettizes after chunking and skips chunks). */
sdc_status sdc_conv_palettize(const sdc_conv_ctx *c, mil_graph *g, const char *what) {
    if (!c->job->quantize_nbits || !row_palettized(c)) return SDC_OK;
    size_t n = 0;
    sdc_status s = sdc_palettize_graph(g, c->job->quantize_nbits, &n, c->err);
    if (!s) sdc_conv_log(c, SDC_LOG_INFO, "%s: palettizing %zu weights to %d bits", what, n, c->job->quantize_nbits);
    return s;
}

sdc_status sdc_conv_emit(const sdc_conv_ctx *c, const sdc_conv_package *p) {
    mil_graph *g = NULL;
    sdc_status s = SDC_OK;
    if (!sdc_conv_exists_skip(c, p->path, p->what)) {
        sdc_conv_log(c, SDC_LOG_INFO, "converting %s%s", p->what, p->describe ? p->describe : "");
        if (!(s = p->build(c, p->state, false, &g)) && !(s = sdc_conv_palettize(c, g, p->what)))
            s = sdc_conv_write(c, g, p->path, p->what, p->docs);
        sdc_mil_graph_free(g);
        g = NULL;
    }
    if (!s && c->job->check_output_correctness) {
        if (!(s = p->build(c, p->state, true, &g))) s = sdc_check_package(c, p->path, g, p->what, p->hint);
        sdc_mil_graph_free(g);
        if (s == SDC_E_CHECK) sdc_conv_quarantine(c, p->path);
    }
    return s;
}

/* ---------------------------------------------------------------- shared reads */

sdc_status sdc_conv_latent_size(const sdc_conv_ctx *c, const sdc_source *src, int64_t dflt, int *h, int *w) {
    int64_t dh, dw;
    sdc_status s = sdc_pipeline_sample_size(src, dflt, &dh, &dw, c->err);
    if (s) return s;
    *h = c->job->latent_h ? c->job->latent_h : (int)(dh > 0 && dh <= 1024 ? dh : 64);
    *w = c->job->latent_w ? c->job->latent_w : (int)(dw > 0 && dw <= 1024 ? dw : 64);
    return SDC_OK;
}

sdc_status sdc_conv_check_latent(const sdc_conv_ctx *c, const sdc_source *src, int downsamples, int h, int w) {
    int64_t mult = (int64_t)1 << (downsamples > 0 && downsamples < 10 ? downsamples : 0);
    if (h >= 1 && w >= 1 && h % mult == 0 && w % mult == 0 && h <= 1024 && w <= 1024) return SDC_OK;
    const char *why = "positive multiples of %lld up to 1024 (the UNet halves the latent %d times)";
    char rule[128];
    snprintf(rule, sizeof rule, why, (long long)mult, downsamples);
    if (c->job->latent_h || c->job->latent_w)
        return sdc_fail(c->err, SDC_E_ARG, "--latent-h %d --latent-w %d: the latent height and width must be %s", h, w,
                        rule);
    return sdc_fail(c->err, SDC_E_UNSUPPORTED, "%s/unet/config.json: sample_size gives a %dx%d latent; it must be %s "
                    "(give --latent-h/-w)", src->root, h, w, rule);
}
