/*
 * driver.c — sdc_convert(): validates a job once, resolves the model, and runs each
 * requested conversion in the anchor's order (VAE decoder, VAE encoder, UNet, text encoders,
 * safety checker, refiner), writing the anchor's file names. Per-component converters live in
 * convert_*.c; this file holds what they share.
 */
#include "convert/convert.h"

#include "passes/palettize.h"

#include <errno.h>
#include <sys/stat.h>

void sdc_job_init(sdc_job *job) {
    memset(job, 0, sizeof *job);
    job->output_dir = ".";
    job->attention = SDC_ATTN_SPLIT_EINSUM;
    job->precision = SDC_PRECISION_FLOAT16;
    job->compute_unit = "ALL";
    job->min_deployment_target = "macOS13";
}

void conv_log(const conv_ctx *c, sdc_log_level level, const char *fmt, ...) {
    if (!c->job->log) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    c->job->log(c->job->user, level, line);
}

sdc_dtype conv_compute_dtype(const conv_ctx *c) {
    return c->job->precision == SDC_PRECISION_FLOAT32 ? SDC_DT_F32 : SDC_DT_F16;
}

/* ---------------------------------------------------------------- job validation */

/* As the anchor: macOS13/iOS16 → spec 7, macOS14/iOS17 → 8, macOS15/iOS18 → 9; anything else
   falls back to macOS13 (with a warning here, where the anchor is silent). */
static sdc_target deployment_target(const sdc_job *job, const conv_ctx *c) {
    static const struct {
        const char *name;
        sdc_target t;
    } map[] = {{"macOS13", {7, 6}}, {"iOS16", {7, 6}}, {"macOS14", {8, 7}},
               {"iOS17", {8, 7}},   {"macOS15", {9, 8}}, {"iOS18", {9, 8}}};
    const char *name = job->min_deployment_target ? job->min_deployment_target : "macOS13";
    for (size_t i = 0; i < SDC_COUNT_OF(map); i++)
        if (!strcmp(name, map[i].name)) return map[i].t;
    conv_log(c, SDC_LOG_WARNING,
             "--min-deployment-target '%s' is not one of macOS13, macOS14, macOS15, iOS16, iOS17, iOS18; "
             "using macOS13",
             name);
    return (sdc_target){7, 6};
}

/* Flags whose component does not exist yet: refused, never ignored. */
static sdc_status refuse_unbuilt(const sdc_job *job, sdc_err *err) {
    const struct {
        bool on;
        const char *flag;
    } flags[] = {
        {job->convert_mmdit, "--convert-mmdit"},
        {job->include_t5, "--include-t5"},
        {job->sd3_version, "--sd3-version"},
    };
    for (size_t i = 0; i < SDC_COUNT_OF(flags); i++)
        if (flags[i].on) return sdc_fail(err, SDC_E_ARG, "not supported yet: %s", flags[i].flag);
    if (job->quantize_nbits && !sdc_palettize_nbits_valid(job->quantize_nbits))
        return sdc_fail(err, SDC_E_ARG, "--quantize-nbits: invalid choice '%d' (1, 2, 4, 6, 8)", job->quantize_nbits);
    if (!job->convert_text_encoder && !job->convert_unet && !job->convert_vae_decoder && !job->convert_vae_encoder &&
        !job->convert_safety_checker && !job->convert_controlnet && !job->bundle_resources_for_swift_cli)
        return sdc_fail(err, SDC_E_ARG, "nothing to do: give at least one --convert-* flag");
    if (job->convert_controlnet && job->n_controlnet == 0)
        return sdc_fail(err, SDC_E_ARG, "--convert-controlnet needs at least one ControlNet (a folder or Hub id)");
    return SDC_OK;
}

/* ---------------------------------------------------------------- output names */

sdc_status conv_package_path(const conv_ctx *c, const char *submodule, char *out, size_t size) {
    const char *mv = c->job->model_version;
    char id[512];
    size_t n = strlen(mv);
    while (n > 1 && mv[n - 1] == '/') n--; /* "tiny/" names the same as "tiny" */
    if (n >= sizeof id) return sdc_fail(c->err, SDC_E_ARG, "--model-version is too long");
    memcpy(id, mv, n);
    id[n] = 0;
    for (char *p = id; *p; p++)
        if (*p == '/') *p = '_';
    const char *dir = c->job->output_dir ? c->job->output_dir : ".";
    if (!sdc_fmt(out, size, "%s/Stable_Diffusion_version_%s_%s.mlpackage", dir, id, submodule))
        return sdc_fail(c->err, SDC_E_ARG, "-o: output path too long");
    return SDC_OK;
}

sdc_status conv_output_path(const conv_ctx *c, const char *name, char *out, size_t size) {
    const char *dir = c->job->output_dir ? c->job->output_dir : ".";
    if (!sdc_fmt(out, size, "%s/%s", dir, name)) return sdc_fail(c->err, SDC_E_ARG, "-o: output path too long");
    return SDC_OK;
}

/* --quantize-nbits: the anchor palettizes the text encoders, the UNets (refiner,
   control-unet) and the ControlNets, never the VAE or the safety checker (anchor §10.1). */
static bool palettized_component(const char *what) {
    static const char *const names[] = {"text_encoder", "text_encoder_2", "unet", "refiner", "control-unet"};
    for (size_t i = 0; i < SDC_COUNT_OF(names); i++)
        if (!strcmp(what, names[i])) return true;
    return !strncmp(what, "ControlNet_", 11);
}

bool conv_exists_skip(const conv_ctx *c, const char *path, const char *what) {
    struct stat st;
    if (stat(path, &st) != 0) return false;
    conv_log(c, SDC_LOG_NOTICE, "%s exists; skipping %s (remove it to convert again)", path, what);
    /* the anchor palettizes existing packages in place; we never rewrite one we did not write */
    if (c->job->quantize_nbits && palettized_component(what))
        conv_log(c, SDC_LOG_NOTICE, "%s is kept as it is: --quantize-nbits palettizes only the packages this run writes",
                 path);
    return true;
}

static sdc_status make_output_dir(const char *dir, sdc_err *err) {
    char p[4096];
    if (!sdc_fmt(p, sizeof p, "%s", dir)) return sdc_fail(err, SDC_E_ARG, "-o: path too long");
    for (char *s = p + 1; *s; s++) { /* mkdir -p, as the anchor's os.makedirs */
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            return sdc_fail(err, SDC_E_IO, "%s: cannot create directory: %s", p, strerror(errno));
        *s = '/';
    }
    if (mkdir(p, 0755) != 0 && errno != EEXIST)
        return sdc_fail(err, SDC_E_IO, "%s: cannot create directory: %s", p, strerror(errno));
    struct stat st;
    if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) return sdc_fail(err, SDC_E_IO, "%s: not a directory", p);
    return SDC_OK;
}

/* ---------------------------------------------------------------- metadata and writing */

static const char *const SHORT_DESCRIPTION =
    "Stable Diffusion generates images conditioned on text and/or other images as input through the diffusion "
    "process. Please refer to https://arxiv.org/abs/2112.10752 for details.";
static const char *const LICENSE_SD = "OpenRAIL (https://huggingface.co/spaces/CompVis/stable-diffusion-license)";
static const char *const LICENSE_XL =
    "OpenRAIL++-M (https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/blob/main/LICENSE.md)";

/* The effective options, spelled as flags in a fixed order, so equivalent command lines give
   identical metadata (and so identical packages). -o is left out: it does not change a package. */
static void effective_options(const sdc_job *job, char *buf, size_t size) {
    static const char *const attn[] = {"ORIGINAL", "SPLIT_EINSUM", "SPLIT_EINSUM_V2"};
    size_t n = 0;
#define ADD(...) (n += n < size ? (size_t)snprintf(buf + n, size - n, __VA_ARGS__) : 0)
    ADD("--model-version %s", job->model_version);
    if (job->refiner_version) ADD(" --refiner-version %s", job->refiner_version);
    if (job->custom_vae_version) ADD(" --custom-vae-version %s", job->custom_vae_version);
    const struct {
        bool on;
        const char *flag;
    } flags[] = {{job->convert_text_encoder, "--convert-text-encoder"}, {job->convert_vae_decoder, "--convert-vae-decoder"},
                 {job->convert_vae_encoder, "--convert-vae-encoder"},   {job->convert_unet, "--convert-unet"},
                 {job->convert_safety_checker, "--convert-safety-checker"}, {job->xl_version, "--xl-version"},
                 {job->unet_batch_one, "--unet-batch-one"}};
    for (size_t i = 0; i < SDC_COUNT_OF(flags); i++)
        if (flags[i].on) ADD(" %s", flags[i].flag);
    if (job->latent_h) ADD(" --latent-h %d", job->latent_h);
    if (job->latent_w) ADD(" --latent-w %d", job->latent_w);
    if (job->text_token_sequence_length) ADD(" --text-token-sequence-length %d", job->text_token_sequence_length);
    if (job->text_encoder_hidden_size) ADD(" --text-encoder-hidden-size %d", job->text_encoder_hidden_size);
    ADD(" --attention-implementation %s", attn[job->attention <= SDC_ATTN_SPLIT_EINSUM_V2 ? job->attention : 1]);
    ADD(" --compute-precision %s", job->precision == SDC_PRECISION_FLOAT32 ? "FLOAT32" : "FLOAT16");
    ADD(" --min-deployment-target %s", job->min_deployment_target ? job->min_deployment_target : "macOS13");
    if (job->quantize_nbits) ADD(" --quantize-nbits %d", job->quantize_nbits);
#undef ADD
}

sdc_status conv_write(const conv_ctx *c, const mil_graph *g, const char *path, const char *what,
                      const conv_docs *docs) {
    const sdc_job *job = c->job;
    char options[2048];
    effective_options(job, options, sizeof options);
    const char *version = docs && docs->version ? docs->version : job->model_version;
    char author[700];
    snprintf(author, sizeof author, "Please refer to the Model Card available at huggingface.co/%s", version);
    const char *keys[2] = {"com.github.sdcoreml.options", "com.github.sdcoreml.version"};
    const char *values[2] = {job->options_summary ? job->options_summary : options, sdc_version()};
    sdc_package_info info = {
        .spec_version = c->target.spec,
        .short_description = docs && docs->short_description ? docs->short_description : SHORT_DESCRIPTION,
        .author = author,
        .license = docs && docs->license ? docs->license : job->xl_version ? LICENSE_XL : LICENSE_SD,
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
    if (!s) conv_log(c, SDC_LOG_INFO, "wrote %s (%zu ops)", path, g->n_ops);
    return s;
}

/* --quantize-nbits as a pass on the built graph, before it is written (or chunked, so chunks
   are palettized too — unlike the anchor, which palettizes after chunking and skips chunks). */
static sdc_status conv_palettize(const conv_ctx *c, mil_graph *g, const char *what) {
    if (!c->job->quantize_nbits || !palettized_component(what)) return SDC_OK;
    size_t n = 0;
    sdc_status s = sdc_palettize_graph(g, c->job->quantize_nbits, &n, c->err);
    if (!s) conv_log(c, SDC_LOG_INFO, "%s: palettizing %zu weights to %d bits", what, n, c->job->quantize_nbits);
    return s;
}

sdc_status conv_emit(const conv_ctx *c, const char *path, const char *what, const conv_docs *docs,
                     conv_build_fn build, void *state, const conv_check_hint *hint) {
    mil_graph *g = NULL;
    sdc_status s = SDC_OK;
    if (!conv_exists_skip(c, path, what)) {
        if (!(s = build(c, state, false, &g)) && !(s = conv_palettize(c, g, what))) s = conv_write(c, g, path, what, docs);
        mil_graph_free(g);
        g = NULL;
    }
    if (!s && c->job->check_output_correctness) {
        if (!(s = build(c, state, true, &g))) s = conv_check(c, path, g, what, hint);
        mil_graph_free(g);
    }
    return s;
}

/* ---------------------------------------------------------------- shared config reads */

sdc_status conv_pipeline_int(const conv_ctx *c, const sdc_source *src, const char *component, const char *key,
                             int64_t dflt, int64_t *out) {
    char path[4200];
    struct stat st;
    *out = dflt;
    snprintf(path, sizeof path, "%s/%s/config.json", src->root, component);
    if (stat(path, &st) != 0) return SDC_OK;
    json_t *cfg;
    sdc_status s = sdc_json_load(path, &cfg, c->err);
    if (s) return s;
    json_t *v = json_object_get(cfg, key);
    if (v && !json_is_null(v) && !json_is_integer(v))
        s = sdc_fail(c->err, SDC_E_FORMAT, "%s: '%s' must be an integer", path, key);
    else if (json_is_integer(v) && (json_integer_value(v) < 1 || json_integer_value(v) > 1 << 20))
        s = sdc_fail(c->err, SDC_E_FORMAT, "%s: '%s' is %lld", path, key, (long long)json_integer_value(v));
    else if (json_is_integer(v))
        *out = json_integer_value(v);
    json_decref(cfg);
    return s;
}

sdc_status conv_latent_size(const conv_ctx *c, const sdc_source *src, int64_t dflt, int *h, int *w) {
    int64_t dh = dflt, dw = dflt;
    char path[4200];
    struct stat st;
    snprintf(path, sizeof path, "%s/unet/config.json", src->root);
    if (stat(path, &st) == 0) {
        json_t *cfg;
        sdc_status s = sdc_json_load(path, &cfg, c->err);
        if (s) return s;
        json_t *v = json_object_get(cfg, "sample_size");
        if (json_is_integer(v)) {
            dh = dw = json_integer_value(v);
        } else if (json_is_array(v) && json_array_size(v) == 2 && json_is_integer(json_array_get(v, 0)) &&
                   json_is_integer(json_array_get(v, 1))) {
            dh = json_integer_value(json_array_get(v, 0));
            dw = json_integer_value(json_array_get(v, 1));
        } else if (v && !json_is_null(v)) {
            s = sdc_fail(c->err, SDC_E_FORMAT, "%s: 'sample_size' must be an integer or [h, w]", path);
        }
        json_decref(cfg);
        if (s) return s;
    }
    *h = c->job->latent_h ? c->job->latent_h : (int)(dh > 0 && dh <= 1024 ? dh : 64);
    *w = c->job->latent_w ? c->job->latent_w : (int)(dw > 0 && dw <= 1024 ? dw : 64);
    return SDC_OK;
}

/* SDXL pipelines name an XL class in model_index.json, or carry a text_encoder_2. */
bool conv_looks_xl(const sdc_source *src) {
    if (sdc_source_has(src, "text_encoder_2")) return true;
    json_t *cls = src->model_index ? json_object_get(src->model_index, "_class_name") : NULL;
    return json_is_string(cls) && strstr(json_string_value(cls), "XL") != NULL;
}

/* ---------------------------------------------------------------- entry point */

sdc_status sdc_convert(const sdc_job *job, char *errbuf, size_t err_size) {
    sdc_err err = {0};
    sdc_source src = {0};
    conv_ctx c = {.job = job, .src = &src, .err = &err};
    sdc_status s = SDC_OK;
    if (!job->model_version || !job->model_version[0]) s = sdc_fail(&err, SDC_E_ARG, "--model-version is required");
    if (!s) s = refuse_unbuilt(job, &err);
    c.target = deployment_target(job, &c);
    if (!s && job->refiner_version && !job->convert_unet)
        conv_log(&c, SDC_LOG_WARNING, "--refiner-version is only used with --convert-unet; ignoring it");
    if (!s && job->chunk_unet && !job->convert_unet)
        conv_log(&c, SDC_LOG_WARNING, "--chunk-unet is only used with --convert-unet; ignoring it");
    if (!s && job->unet_support_controlnet && !job->convert_unet)
        conv_log(&c, SDC_LOG_WARNING, "--unet-support-controlnet is only used with --convert-unet; ignoring it");
    if (!s && job->bundle_resources_for_swift_cli) s = conv_bundle_preflight(&c);
    bool opened = false;
    if (!s) opened = (s = sdc_source_open(job->model_version, &src, &err)) == SDC_OK;
    if (!s) s = make_output_dir(job->output_dir ? job->output_dir : ".", &err);
    if (!s && job->convert_vae_decoder) s = conv_vae_decoder(&c);
    if (!s && job->convert_vae_encoder) s = conv_vae_encoder(&c);
    if (!s && job->convert_controlnet) s = conv_controlnets(&c);
    if (!s && job->convert_unet) s = conv_unet(&c);
    if (!s && job->convert_text_encoder) s = conv_text_encoders(&c);
    if (!s && job->convert_safety_checker) s = conv_safety_checker(&c);
    if (!s && job->bundle_resources_for_swift_cli) s = conv_bundle(&c);
    if (opened) sdc_source_close(&src);
    if (errbuf && err_size) snprintf(errbuf, err_size, "%s", s ? err.msg : "");
    return s;
}
