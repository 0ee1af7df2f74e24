/*
 * driver.c — sdc_convert(): validates a job once, downloads missing Hub ids (fetch.c), opens
 * the model, and runs each requested row of the component table in the anchor's order (VAE
 * decoder, VAE encoder, ControlNets, UNet (and refiner), text encoders, safety checker), then
 * the bundle step.
 */
#include "convert/convert.h"

#include "io/outdir.h"
#include "passes/palettize.h"
#include "source/lora.h"
#include "source/single_file.h"

#include <stddef.h>

#define JOB_FLAG(field) offsetof(sdc_job, field)

/* The component table, in the anchor's conversion order. */
static const sdc_conv_component COMPONENTS[] = {
    {"vae_decoder", "--convert-vae-decoder", JOB_FLAG(convert_vae_decoder),
     .convert = sdc_conv_vae_decoder,
     .weights = {"vae"},
     .resources = {{"vae_decoder", "VAEDecoder"}}},
    {"vae_encoder", "--convert-vae-encoder", JOB_FLAG(convert_vae_encoder),
     .convert = sdc_conv_vae_encoder,
     .weights = {"vae"},
     .resources = {{"vae_encoder", "VAEEncoder"}}},
    /* ControlNets come from their own ids (fetch.c) and are bundled under Resources/controlnet/
       by id (bundle.c) */
    {"controlnet", "--convert-controlnet", JOB_FLAG(convert_controlnet), .palettized = true,
     .preflight = sdc_conv_controlnets_preflight,
     .convert = sdc_conv_controlnets},
    {"unet", "--convert-unet", JOB_FLAG(convert_unet), .palettized = true,
     .prepare = sdc_conv_unet_prepare,
     .convert = sdc_conv_unet,
     .weights = {"unet"},
     .resources = {{"unet", "Unet"},
                   {"unet_chunk1", "UnetChunk1"},
                   {"unet_chunk2", "UnetChunk2"},
                   {"refiner", "UnetRefiner"},
                   {"refiner_chunk1", "UnetRefinerChunk1"},
                   {"refiner_chunk2", "UnetRefinerChunk2"},
                   {"control-unet", "ControlledUnet"},
                   {"control-unet_chunk1", "ControlledUnetChunk1"},
                   {"control-unet_chunk2", "ControlledUnetChunk2"}}},
    {"text_encoder", "--convert-text-encoder", JOB_FLAG(convert_text_encoder), .palettized = true,
     .convert = sdc_conv_text_encoders,
     .weights = {"text_encoder", "text_encoder_2"},
     .resources = {{"text_encoder", "TextEncoder"}, {"text_encoder_2", "TextEncoder2"}}},
    {"safety_checker", "--convert-safety-checker", JOB_FLAG(convert_safety_checker),
     .convert = sdc_conv_safety_checker,
     .weights = {"safety_checker", "vae"}, /* the image size comes from the VAE, which it opens */
     .resources = {{"safety_checker", "SafetyChecker"}}},
    {"mmdit", "--convert-mmdit", JOB_FLAG(convert_mmdit), .convert = NULL}, /* SD3: not supported yet */
    {"bundle", "--bundle-resources-for-swift-cli", JOB_FLAG(bundle_resources_for_swift_cli), .is_step = true,
     .preflight = sdc_conv_bundle_preflight,
     .prepare = sdc_conv_bundle_prepare,
     .convert = sdc_conv_bundle,
     .cleanup = sdc_conv_bundle_cleanup},
};

static bool requested(const sdc_job *job, const sdc_conv_component *row) {
    return *(const bool *)((const char *)job + row->requested);
}

void sdc_job_init(sdc_job *job) {
    memset(job, 0, sizeof *job);
    job->output_dir = ".";
    job->attention = SDC_ATTN_SPLIT_EINSUM;
    job->precision = SDC_PRECISION_FLOAT16;
    job->compute_unit = "ALL";
    job->min_deployment_target = "macOS13";
}

/* ---------------------------------------------------------------- job validation */

/* As the anchor: macOS13/iOS16 → spec 7, macOS14/iOS17 → 8, macOS15/iOS18 → 9; anything else
   falls back to macOS13 (with a warning here, where the anchor is silent). */
static sdc_conv_target deployment_target(const sdc_conv_ctx *c) {
    static const struct {
        const char *name;
        sdc_conv_target t;
    } map[] = {{"macOS13", {7, 6}}, {"iOS16", {7, 6}}, {"macOS14", {8, 7}},
               {"iOS17", {8, 7}},   {"macOS15", {9, 8}}, {"iOS18", {9, 8}}};
    const char *name = c->job->min_deployment_target ? c->job->min_deployment_target : "macOS13";
    for (size_t i = 0; i < SDC_COUNT_OF(map); i++)
        if (!strcmp(name, map[i].name)) return map[i].t;
    sdc_conv_log(c, SDC_LOG_WARNING,
                 "--min-deployment-target '%s' is not one of macOS13, macOS14, macOS15, iOS16, iOS17, iOS18; "
                 "using macOS13",
                 name);
    return (sdc_conv_target){7, 6};
}

/* Options and components that do not exist yet: refused, never ignored. */
static sdc_status refuse_unbuilt(const sdc_job *job, sdc_err *err) {
    for (size_t i = 0; i < SDC_COUNT_OF(COMPONENTS); i++) {
        const sdc_conv_component *row = &COMPONENTS[i];
        if (!row->convert && requested(job, row))
            return sdc_fail(err, SDC_E_ARG, "not supported yet: %s", row->flag);
    }
    const struct {
        bool on;
        const char *flag;
    } options[] = {{job->include_t5, "--include-t5"}, {job->sd3_version, "--sd3-version"}};
    for (size_t i = 0; i < SDC_COUNT_OF(options); i++)
        if (options[i].on) return sdc_fail(err, SDC_E_ARG, "not supported yet: %s", options[i].flag);
    if (job->quantize_nbits && !sdc_palettize_nbits_valid(job->quantize_nbits))
        return sdc_fail(err, SDC_E_ARG, "--quantize-nbits: invalid choice '%d' (1, 2, 4, 6, 8)", job->quantize_nbits);
    bool any = false;
    for (size_t i = 0; i < SDC_COUNT_OF(COMPONENTS); i++) any = any || requested(job, &COMPONENTS[i]);
    if (!any) return sdc_fail(err, SDC_E_ARG, "nothing to do: give at least one --convert-* flag");
    return SDC_OK;
}

/* Options that only the UNet uses: warned about, not refused, when --convert-unet is absent. */
static void warn_unused_unet_options(const sdc_conv_ctx *c) {
    const sdc_job *job = c->job;
    const struct {
        bool on;
        const char *flag;
    } options[] = {{job->refiner_version != NULL, "--refiner-version"},
                   {job->chunk_unet, "--chunk-unet"},
                   {job->unet_support_controlnet, "--unet-support-controlnet"}};
    if (job->convert_unet) return;
    for (size_t i = 0; i < SDC_COUNT_OF(options); i++)
        if (options[i].on)
            sdc_conv_log(c, SDC_LOG_WARNING, "%s is only used with --convert-unet; ignoring it", options[i].flag);
}

/* Offset of a row's hook (preflight, prepare, convert) in sdc_conv_component. */
#define ROW_HOOK(field) offsetof(sdc_conv_component, field)
typedef sdc_status (*row_hook)(const sdc_conv_ctx *c);

/* Calls one hook of every requested row, in table order; stops at the first failure. */
static sdc_status run_rows(sdc_conv_ctx *c, size_t hook) {
    sdc_status s = SDC_OK;
    for (size_t i = 0; !s && i < SDC_COUNT_OF(COMPONENTS); i++) {
        const sdc_conv_component *row = &COMPONENTS[i];
        row_hook fn = *(const row_hook *)((const char *)row + hook);
        if (!fn || !requested(c->job, row)) continue;
        c->component = row;
        s = fn(c);
    }
    c->component = NULL;
    return s;
}


/* The fewest digits that read back as the same float ("0.7", not "0.699999988"). */
static void shortest_float(float x, char *buf, size_t size) {
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(buf, size, "%.*g", digits, (double)x);
        if (strtof(buf, NULL) == x) return;
    }
}

/* The effective options, spelled as flags in a fixed order (the component table's, then the
   others), so equivalent command lines give identical metadata (and so identical packages).
   -o is left out: it does not change a package. */
static void effective_options(const sdc_job *job, char *buf, size_t size) {
    static const char *const attn[] = {"ORIGINAL", "SPLIT_EINSUM", "SPLIT_EINSUM_V2"};
    size_t n = 0;
#define ADD(...) (n += n < size ? (size_t)snprintf(buf + n, size - n, __VA_ARGS__) : 0)
    ADD("--model-version %s", job->model_version);
    if (job->refiner_version) ADD(" --refiner-version %s", job->refiner_version);
    if (job->custom_vae_version) ADD(" --custom-vae-version %s", job->custom_vae_version);
    if (job->config) ADD(" --config %s", job->config);
    for (int i = 0; i < job->n_loras; i++) {
        char scale[32];
        shortest_float(job->loras[i].scale, scale, sizeof scale);
        ADD(" --lora %s:%s", job->loras[i].path, scale);
    }
    for (size_t i = 0; i < SDC_COUNT_OF(COMPONENTS); i++) {
        const sdc_conv_component *row = &COMPONENTS[i];
        if (row->is_step || !requested(job, row)) continue;
        ADD(" %s", row->flag);
        if (row->requested == offsetof(sdc_job, convert_controlnet))
            for (int k = 0; k < job->n_controlnet; k++) ADD(" %s", job->controlnet[k]);
    }
    const struct {
        bool on;
        const char *flag;
    } flags[] = {{job->xl_version, "--xl-version"},
                 {job->unet_batch_one, "--unet-batch-one"},
                 {job->unet_support_controlnet, "--unet-support-controlnet"}};
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

static void note_stale(void *user, const char *path, long pid) {
    sdc_conv_log(user, SDC_LOG_NOTICE, "removed %s, left by an interrupted run (process %ld is gone)", path, pid);
}

static void cleanup_rows(sdc_conv_ctx *c) {
    for (size_t i = 0; i < SDC_COUNT_OF(COMPONENTS); i++)
        if (COMPONENTS[i].cleanup && requested(c->job, &COMPONENTS[i])) COMPONENTS[i].cleanup(c);
}

/* ---------------------------------------------------------------- --lora */

/* The components a LoRA may update, and the flag that converts each. */
static const struct {
    const char *component;
    size_t converted; /* offsetof(sdc_job, <bool>) */
} LORA_TARGETS[] = {{"unet", JOB_FLAG(convert_unet)},
                    {"text_encoder", JOB_FLAG(convert_text_encoder)},
                    {"text_encoder_2", JOB_FLAG(convert_text_encoder)}};

/* Parses the LoRA files and matches every module against the components this run converts,
   before anything is written, so a bad key leaves no package behind. The model's components
   then hand out merged weights whenever they are opened (source/lora.h). */
static sdc_status open_loras(sdc_conv_ctx *c, sdc_source *src, sdc_lora_set **set) {
    const sdc_job *job = c->job;
    sdc_status s = sdc_lora_set_open(job->loras, (size_t)job->n_loras, set, c->err);
    if (s) return s;
    src->lora = *set;
    for (size_t i = 0; !s && i < SDC_COUNT_OF(LORA_TARGETS); i++) {
        const char *name = LORA_TARGETS[i].component, *file = sdc_lora_set_file_for(*set, name);
        if (!file) continue;
        if (!sdc_source_has(src, name))
            return sdc_fail(c->err, SDC_E_NOTFOUND, "%s: the LoRA updates %s, which model '%s' does not have", file, name,
                            job->model_version);
        if (!*(const bool *)((const char *)job + LORA_TARGETS[i].converted)) {
            sdc_conv_log(c, SDC_LOG_WARNING, "%s: its %s weights are unused: this run does not convert %s", file, name, name);
            continue;
        }
        sdc_component comp;
        s = sdc_component_open(src, name, &comp, c->err);
        sdc_component_close(&comp);
    }
    return s;
}

/* A single file's components whose config could not be inferred are refused before any
   package is written (the custom VAE replaces the file's). */
static sdc_status check_single_file_configs(const sdc_conv_ctx *c) {
    sdc_status s = SDC_OK;
    for (size_t i = 0; !s && c->src->single && i < SDC_COUNT_OF(COMPONENTS); i++) {
        const sdc_conv_component *row = &COMPONENTS[i];
        for (size_t k = 0; !s && requested(c->job, row) && k < SDC_COUNT_OF(row->weights) && row->weights[k]; k++)
            if (!(c->job->custom_vae_version && !strcmp(row->weights[k], "vae")))
                s = sdc_single_file_check(c->src->single, row->weights[k], c->err);
    }
    return s;
}

/* ---------------------------------------------------------------- entry point */

sdc_status sdc_convert(const sdc_job *job, char *errbuf, size_t err_size) {
    sdc_err err = {0};
    sdc_source src = {0};
    char options[4096];
    sdc_conv_ctx c = {.job = job, .src = &src, .err = &err, .rows = COMPONENTS, .n_rows = SDC_COUNT_OF(COMPONENTS),
                      .options = options};
    sdc_status s = SDC_OK;
    if (!job->model_version || !job->model_version[0]) s = sdc_fail(&err, SDC_E_ARG, "--model-version is required");
    if (!s) s = refuse_unbuilt(job, &err);
    if (!s) effective_options(job, options, sizeof options);
    c.target = deployment_target(&c);
    if (!s) warn_unused_unet_options(&c);
    if (!s) s = run_rows(&c, ROW_HOOK(preflight));
    bool opened = false;
    if (!s) s = sdc_conv_fetch_models(&c);
    if (!s) opened = (s = sdc_source_open_config(job->model_version, job->config, &src, &err)) == SDC_OK;
    sdc_lora_set *loras = NULL;
    if (!s && job->n_loras) s = open_loras(&c, &src, &loras);
    if (!s) s = check_single_file_configs(&c);
    if (!s) s = run_rows(&c, ROW_HOOK(prepare));
    if (!s) s = sdc_outdir_mkdirs(job->output_dir ? job->output_dir : ".", true, &err); /* as os.makedirs */
    if (!s) sdc_outdir_remove_stale(job->output_dir ? job->output_dir : ".", note_stale, &c);
    if (!s) s = run_rows(&c, ROW_HOOK(convert));
    cleanup_rows(&c);
    if (opened) sdc_source_close(&src);
    sdc_lora_set_close(loras);
    if (errbuf && err_size) snprintf(errbuf, err_size, "%s", s ? err.msg : "");
    return s;
}
