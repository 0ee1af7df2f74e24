/*
 * fetch.c — the hub step of the convert wing: which files of which Hub ids a job reads, from
 * the component table's `weights`, and whether the cache already has them (asked of the source
 * reader itself, so "complete" means exactly "the conversion can open it"); what is missing is
 * downloaded by src/hub/ before the driver opens the model.
 */
#include "convert/convert.h"

#include "hub/hub.h"
#include "source/single_file.h"

#include <sys/stat.h>

static bool requested(const sdc_job *job, const sdc_conv_component *row) {
    return *(const bool *)((const char *)job + row->requested);
}

static void want_add(sdc_hub_want *w, const char *component) {
    for (size_t i = 0; i < w->n_components; i++)
        if (!strcmp(w->components[i], component)) return;
    if (w->n_components < SDC_HUB_MAX_WANTED) w->components[w->n_components++] = component;
}

/* Opens what `want` asks for with the source reader; the first failure says what is missing. */
static sdc_status cache_has(const char *spec, const sdc_hub_want *want, sdc_err *err) {
    sdc_source src;
    sdc_status s = sdc_source_open(spec, &src, err);
    if (s) return s;
    for (size_t i = 0; !s && i < want->n_components; i++) {
        const char *name = want->components[i];
        if (!sdc_source_has(&src, name)) continue;
        sdc_component comp;
        if (!(s = sdc_component_open(&src, name, &comp, err))) sdc_component_close(&comp);
        if (want->first_present) break;
    }
    char path[4200];
    for (int k = 0; !s && want->tokenizer_files && k < 2; k++) {
        const char *file = k ? "merges.txt" : "vocab.json";
        if (!sdc_pipeline_tokenizer_file(&src, file, path, sizeof path))
            s = sdc_fail(err, SDC_E_NOTFOUND, "%s: no tokenizer/%s", src.root, file);
    }
    sdc_source_close(&src);
    return s;
}

static bool is_folder(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* A Hub id (not a local folder, as diffusers decides) that is incomplete in the cache is
   downloaded; offline or without libcurl, what is missing is reported with how to get it. */
static sdc_status ensure(const sdc_conv_ctx *c, const char *spec, const sdc_hub_want *want) {
    if (!spec || is_folder(spec) || sdc_single_file_named(spec) || !sdc_hub_is_id(spec)) return SDC_OK;
    sdc_err missing = {0};
    if (!cache_has(spec, want, &missing)) return SDC_OK;
    if (sdc_hub_offline() || !sdc_hub_can_download()) {
        const char *hint = sdc_hub_missing_hint();
        return sdc_fail(c->err, missing.code, "%s%s", missing.msg, strstr(missing.msg, hint) ? "" : hint);
    }
    sdc_hub_callbacks cb = {c->job->log, c->job->progress, c->job->user};
    return sdc_hub_fetch(spec, want, &cb, c->err);
}

sdc_status sdc_conv_fetch_models(const sdc_conv_ctx *c) {
    const sdc_job *job = c->job;
    sdc_hub_want model = {0};
    for (size_t i = 0; i < c->n_rows; i++) {
        const sdc_conv_component *row = &c->rows[i];
        if (!requested(job, row)) continue;
        for (size_t k = 0; k < SDC_COUNT_OF(row->weights) && row->weights[k]; k++)
            if (!(job->custom_vae_version && !strcmp(row->weights[k], "vae"))) want_add(&model, row->weights[k]);
    }
    model.tokenizer_files = job->bundle_resources_for_swift_cli &&
                            !(job->text_encoder_vocabulary_url && job->text_encoder_merges_url);
    sdc_status s = ensure(c, job->model_version, &model);
    if (!s && job->convert_unet && job->refiner_version) {
        sdc_hub_want refiner = {.components = {"unet"}, .n_components = 1};
        s = ensure(c, job->refiner_version, &refiner);
    }
    bool vae_read = job->convert_vae_decoder || job->convert_vae_encoder || job->convert_safety_checker;
    if (!s && vae_read && job->custom_vae_version) {
        sdc_hub_want vae = {.components = {"vae", ""}, .n_components = 2, .first_present = true};
        s = ensure(c, job->custom_vae_version, &vae);
    }
    for (int i = 0; !s && job->convert_controlnet && i < job->n_controlnet; i++) {
        sdc_hub_want cn = {.components = {"", "controlnet"}, .n_components = 2, .first_present = true, .model_card = true};
        s = ensure(c, job->controlnet[i], &cn);
    }
    return s;
}
