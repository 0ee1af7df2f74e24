/*
 * convert.c — sdc_convert(): validates a job once, resolves the model, and runs each
 * requested conversion in the anchor's order, writing the anchor's file names.
 */
#include <errno.h>
#include <sys/stat.h>

#include "coreml/writer.h"
#include "nets/nets.h"
#include "source/source.h"

void sdc_job_init(sdc_job *job) {
    memset(job, 0, sizeof *job);
    job->output_dir = ".";
    job->attention = SDC_ATTN_SPLIT_EINSUM;
    job->precision = SDC_PRECISION_FLOAT16;
    job->compute_unit = "ALL";
    job->min_deployment_target = "macOS13";
}

/* ---------------------------------------------------------------- logging */

static void logf_(const sdc_job *job, sdc_log_level level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void logf_(const sdc_job *job, sdc_log_level level, const char *fmt, ...) {
    if (!job->log) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    job->log(job->user, level, line);
}

/* ---------------------------------------------------------------- job validation */

typedef struct target {
    int spec, opset;
} target;

/* As the anchor: macOS13/iOS16 → spec 7, macOS14/iOS17 → 8, macOS15/iOS18 → 9; anything else
   falls back to macOS13 (with a warning here, where the anchor is silent). */
static target deployment_target(const sdc_job *job) {
    static const struct {
        const char *name;
        target t;
    } map[] = {{"macOS13", {7, 6}}, {"iOS16", {7, 6}}, {"macOS14", {8, 7}},
               {"iOS17", {8, 7}},   {"macOS15", {9, 8}}, {"iOS18", {9, 8}}};
    const char *name = job->min_deployment_target ? job->min_deployment_target : "macOS13";
    for (size_t i = 0; i < SDC_COUNT_OF(map); i++)
        if (!strcmp(name, map[i].name)) return map[i].t;
    logf_(job, SDC_LOG_WARNING,
          "--min-deployment-target '%s' is not one of macOS13, macOS14, macOS15, iOS16, iOS17, iOS18; using macOS13",
          name);
    return (target){7, 6};
}

/* Flags whose component does not exist yet: refused, never ignored. */
static sdc_status refuse_unbuilt(const sdc_job *job, sdc_err *err) {
    const struct {
        bool on;
        const char *flag;
    } flags[] = {
        {job->convert_vae_decoder, "--convert-vae-decoder"},
        {job->convert_vae_encoder, "--convert-vae-encoder"},
        {job->convert_unet, "--convert-unet"},
        {job->convert_mmdit, "--convert-mmdit"},
        {job->convert_safety_checker, "--convert-safety-checker"},
        {job->convert_controlnet, "--convert-controlnet"},
        {job->refiner_version != NULL, "--refiner-version"},
        {job->custom_vae_version != NULL, "--custom-vae-version"},
        {job->check_output_correctness, "--check-output-correctness"},
        {job->chunk_unet, "--chunk-unet"},
        {job->quantize_nbits != 0, "--quantize-nbits"},
        {job->unet_support_controlnet, "--unet-support-controlnet"},
        {job->include_t5, "--include-t5"},
        {job->bundle_resources_for_swift_cli, "--bundle-resources-for-swift-cli"},
        {job->sd3_version, "--sd3-version"},
    };
    for (size_t i = 0; i < SDC_COUNT_OF(flags); i++)
        if (flags[i].on) return sdc_fail(err, SDC_E_ARG, "not supported yet: %s", flags[i].flag);
    return SDC_OK;
}

/* ---------------------------------------------------------------- output names */

/* "Stable_Diffusion_version_<model_version, '/' → '_'>_<submodule>.mlpackage" in -o */
static bool package_path(const sdc_job *job, const char *submodule, char *out, size_t size) {
    char id[512];
    size_t n = strlen(job->model_version);
    while (n > 1 && job->model_version[n - 1] == '/') n--; /* "tiny/" names the same as "tiny" */
    if (n >= sizeof id) return false;
    memcpy(id, job->model_version, n);
    id[n] = 0;
    for (char *p = id; *p; p++)
        if (*p == '/') *p = '_';
    return sdc_fmt(out, size, "%s/Stable_Diffusion_version_%s_%s.mlpackage", job->output_dir, id, submodule);
}

static sdc_status make_output_dir(const char *dir, sdc_err *err) {
    char p[4096];
    if (!sdc_fmt(p, sizeof p, "%s", dir)) return sdc_fail(err, SDC_E_ARG, "-o: path too long");
    for (char *s = p + 1; *s; s++) { /* mkdir -p, as the anchor's os.makedirs */
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) return sdc_fail(err, SDC_E_IO, "%s: cannot create directory: %s", p, strerror(errno));
        *s = '/';
    }
    if (mkdir(p, 0755) != 0 && errno != EEXIST) return sdc_fail(err, SDC_E_IO, "%s: cannot create directory: %s", p, strerror(errno));
    struct stat st;
    if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) return sdc_fail(err, SDC_E_IO, "%s: not a directory", p);
    return SDC_OK;
}

/* ---------------------------------------------------------------- metadata */

static const char *const SHORT_DESCRIPTION =
    "Stable Diffusion generates images conditioned on text and/or other images as input through the diffusion "
    "process. Please refer to https://arxiv.org/abs/2112.10752 for details.";
static const char *const LICENSE_SD = "OpenRAIL (https://huggingface.co/spaces/CompVis/stable-diffusion-license)";
static const char *const LICENSE_XL =
    "OpenRAIL++-M (https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/blob/main/LICENSE.md)";

typedef struct metadata {
    char author[700];
    const char *keys[2], *values[2];
} metadata;

static void fill_info(const sdc_job *job, target t, metadata *m, sdc_package_info *info) {
    snprintf(m->author, sizeof m->author, "Please refer to the Model Card available at huggingface.co/%s",
             job->model_version);
    m->keys[0] = "com.github.sdcoreml.options";
    m->values[0] = job->options_summary ? job->options_summary : "";
    m->keys[1] = "com.github.sdcoreml.version";
    m->values[1] = sdc_version();
    memset(info, 0, sizeof *info);
    info->spec_version = t.spec;
    info->short_description = SHORT_DESCRIPTION;
    info->author = m->author;
    info->license = job->xl_version ? LICENSE_XL : LICENSE_SD;
    info->version = job->model_version;
    info->n_user = 2;
    info->user_keys = m->keys;
    info->user_values = m->values;
}

/* ---------------------------------------------------------------- text encoders */

static bool exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* The anchor feeds the encoder tokenizer.model_max_length tokens (77 for every SD tokenizer). */
static int token_count(const sdc_source *src, const char *tokenizer, sdc_err *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s/tokenizer_config.json", src->root, tokenizer);
    if (!exists(path)) return 0; /* 0: the encoder's max_position_embeddings */
    json_t *cfg;
    if (sdc_json_load(path, &cfg, err)) return -1;
    json_t *v = json_object_get(cfg, "model_max_length");
    int n = json_is_integer(v) && json_integer_value(v) > 0 && json_integer_value(v) <= 4096 ? (int)json_integer_value(v) : 0;
    json_decref(cfg);
    return n;
}

static sdc_status convert_text_encoder(const sdc_job *job, const sdc_source *src, target t, const char *name,
                                       const char *tokenizer, sdc_err *err) {
    char path[4096];
    if (!package_path(job, name, path, sizeof path)) return sdc_fail(err, SDC_E_ARG, "output path too long");
    if (exists(path)) {
        logf_(job, SDC_LOG_NOTICE, "%s exists; skipping %s (remove it to convert again)", path, name);
        return SDC_OK;
    }
    sdc_component c;
    sdc_status s = sdc_component_open(src, name, &c, err);
    if (s) return s;
    int tokens = token_count(src, tokenizer, err);
    if (tokens < 0) {
        sdc_component_close(&c);
        return err->code;
    }
    if (tokens == 0) {
        int64_t positions;
        if ((s = sdc_config_int(&c, "max_position_embeddings", 77, &positions, err))) {
            sdc_component_close(&c);
            return s;
        }
        tokens = (int)(positions > 0 && positions < 4096 ? positions : 77);
    }
    sdc_clip_text_options opt = {
        .compute = job->precision == SDC_PRECISION_FLOAT32 ? SDC_DT_F32 : SDC_DT_F16,
        .opset = t.opset,
        .seq_len = tokens,
        .xl = job->xl_version,
    };
    mil_graph *g = NULL;
    logf_(job, SDC_LOG_INFO, "converting %s (%s)", name, sdc_weights_describe(c.weights));
    s = sdc_build_clip_text(&c, &opt, &g, err);
    if (!s) {
        metadata m;
        sdc_package_info info;
        fill_info(job, t, &m, &info);
        const char *in_docs[] = {"The token ids that represent the input text"};
        const char *out_docs[] = {
            job->xl_version ? "The hidden states of the penultimate encoder layer, without the final layer norm"
                            : "The token embeddings as encoded by the Transformer model",
            job->xl_version ? "The pooled text embedding (projected when the model has a text projection)"
                            : "The version of the last_hidden_state output at the end-of-text token",
        };
        info.input_docs = in_docs;
        info.output_docs = out_docs;
        sdc_write_hooks hooks = {job->progress, job->user, name};
        s = sdc_write_package(g, &info, path, &hooks, err);
        if (!s) logf_(job, SDC_LOG_INFO, "wrote %s (%zu ops)", path, g->n_ops);
    }
    mil_graph_free(g);
    sdc_component_close(&c);
    return s;
}

/* SDXL pipelines (a text_encoder_2, or an XL pipeline class) need --xl-version: without it the
   encoders would expose last_hidden_state, which the Swift XL pipeline does not read. */
static bool looks_xl(const sdc_source *src) {
    if (sdc_source_has(src, "text_encoder_2")) return true;
    json_t *cls = src->model_index ? json_object_get(src->model_index, "_class_name") : NULL;
    return json_is_string(cls) && strstr(json_string_value(cls), "XL") != NULL;
}

static sdc_status convert_text_encoders(const sdc_job *job, const sdc_source *src, target t, sdc_err *err) {
    bool xl = looks_xl(src);
    if (xl && !job->xl_version)
        return sdc_fail(err, SDC_E_ARG,
                        "%s is an SDXL pipeline (it has text_encoder_2); add --xl-version so the text encoders "
                        "output hidden_embeds as the SDXL pipelines expect",
                        job->model_version);
    if (!xl && job->xl_version)
        return sdc_fail(err, SDC_E_ARG, "--xl-version given, but %s is not an SDXL pipeline (no text_encoder_2)",
                        job->model_version);
    bool any = false;
    static const char *const names[2][2] = {{"text_encoder", "tokenizer"}, {"text_encoder_2", "tokenizer_2"}};
    for (int i = 0; i < 2; i++) {
        if (!sdc_source_has(src, names[i][0])) continue;
        any = true;
        sdc_status s = convert_text_encoder(job, src, t, names[i][0], names[i][1], err);
        if (s) return s;
    }
    if (!any) return sdc_fail(err, SDC_E_NOTFOUND, "%s: the pipeline has no text_encoder", src->root);
    return SDC_OK;
}

/* ---------------------------------------------------------------- entry point */

sdc_status sdc_convert(const sdc_job *job, char *errbuf, size_t err_size) {
    sdc_err err = {0};
    sdc_status s = SDC_OK;
    if (!job->model_version || !job->model_version[0])
        s = sdc_fail(&err, SDC_E_ARG, "--model-version is required");
    if (!s) s = refuse_unbuilt(job, &err);
    if (!s && !(job->convert_text_encoder))
        s = sdc_fail(&err, SDC_E_ARG, "nothing to do: give at least one --convert-* flag");
    target t = deployment_target(job);
    sdc_source src = {0};
    bool opened = false;
    if (!s) s = sdc_source_open(job->model_version, &src, &err);
    opened = s == SDC_OK;
    if (!s) s = make_output_dir(job->output_dir ? job->output_dir : ".", &err);
    if (!s && job->convert_text_encoder) s = convert_text_encoders(job, &src, t, &err);
    if (opened) sdc_source_close(&src);
    if (errbuf && err_size) snprintf(errbuf, err_size, "%s", s ? err.msg : "");
    return s;
}
