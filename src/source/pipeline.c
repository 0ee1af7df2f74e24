/*
 * pipeline.c — what a converter reads from a pipeline besides one component's config and
 * weights: model_index.json, another component's config, the scheduler and tokenizer
 * configs, the model card. Converters ask here and never build such paths themselves, so a
 * source that is not a folder of the diffusers layout answers the same questions.
 */
#include "source/source.h"

#include "source/single_file.h"

/* "<config root>/<dir>/<file>" when that file exists; false when it does not, the path is too
   long, or the source has no such folder (a single file without --config). */
static bool pipeline_file(const sdc_source *s, const char *dir, const char *file, char *out, size_t size) {
    return s->config_root[0] && sdc_fmt(out, size, "%s/%s/%s", s->config_root, dir, file) && sdc_path_exists(out);
}

/* A component's config (a new reference) and its origin for messages; *cfg NULL when the
   pipeline has none. A single file answers with the config its components are built with. */
static sdc_status component_config(const sdc_source *s, const char *component, json_t **cfg, char *path, size_t size,
                                   sdc_err *err) {
    *cfg = NULL;
    const char *origin;
    const json_t *single = s->single ? sdc_single_file_config(s->single, component, &origin) : NULL;
    if (single) {
        snprintf(path, size, "%s", origin);
        *cfg = json_incref((json_t *)single);
        return SDC_OK;
    }
    if (s->single || !pipeline_file(s, component, "config.json", path, size)) return SDC_OK;
    return sdc_json_load(path, cfg, err);
}

/* SDXL pipelines name an XL class in model_index.json, or carry a text_encoder_2. */
bool sdc_pipeline_is_xl(const sdc_source *s) {
    if (sdc_source_has(s, "text_encoder_2")) return true;
    json_t *cls = s->model_index ? json_object_get(s->model_index, "_class_name") : NULL;
    return json_is_string(cls) && strstr(json_string_value(cls), "XL") != NULL;
}

bool sdc_pipeline_requires_aesthetics_score(const sdc_source *s) {
    json_t *v = s->model_index ? json_object_get(s->model_index, "requires_aesthetics_score") : NULL;
    return json_is_true(v);
}

sdc_status sdc_pipeline_int(const sdc_source *s, const char *component, const char *key, int64_t dflt,
                            int64_t *out, sdc_err *err) {
    char path[4400];
    *out = dflt;
    json_t *cfg;
    sdc_status st = component_config(s, component, &cfg, path, sizeof path, err);
    if (st || !cfg) return st;
    json_t *v = json_object_get(cfg, key);
    if (v && !json_is_null(v) && !json_is_integer(v))
        st = sdc_fail(err, SDC_E_FORMAT, "%s: '%s' must be an integer", path, key);
    else if (json_is_integer(v) && (json_integer_value(v) < 1 || json_integer_value(v) > 1 << 20))
        st = sdc_fail(err, SDC_E_FORMAT, "%s: '%s' is %lld", path, key, (long long)json_integer_value(v));
    else if (json_is_integer(v))
        *out = json_integer_value(v);
    json_decref(cfg);
    return st;
}

sdc_status sdc_pipeline_sample_size(const sdc_source *s, int64_t dflt, int64_t *h, int64_t *w, sdc_err *err) {
    char path[4400];
    *h = *w = dflt;
    json_t *cfg;
    sdc_status st = component_config(s, "unet", &cfg, path, sizeof path, err);
    if (st || !cfg) return st;
    json_t *v = json_object_get(cfg, "sample_size");
    if (json_is_integer(v)) {
        *h = *w = json_integer_value(v);
    } else if (json_is_array(v) && json_array_size(v) == 2 && json_is_integer(json_array_get(v, 0)) &&
               json_is_integer(json_array_get(v, 1))) {
        *h = json_integer_value(json_array_get(v, 0));
        *w = json_integer_value(json_array_get(v, 1));
    } else if (v && !json_is_null(v)) {
        st = sdc_fail(err, SDC_E_FORMAT, "%s: 'sample_size' must be an integer or [h, w]", path);
    }
    json_decref(cfg);
    return st;
}

/* diffusers' timestep_spacing: "leading" (the SD default) gives (50-1)·(T/50) + steps_offset
   (981 for T = 1000, offset 1); "trailing" and "linspace" start at T - 1. */
sdc_status sdc_pipeline_first_timestep(const sdc_source *s, float *out, sdc_err *err) {
    char path[4200];
    *out = 981;
    if (!pipeline_file(s, "scheduler", "scheduler_config.json", path, sizeof path)) return SDC_OK;
    json_t *cfg;
    sdc_status st = sdc_json_load(path, &cfg, err);
    if (st) return st;
    json_t *jt = json_object_get(cfg, "num_train_timesteps"), *jo = json_object_get(cfg, "steps_offset");
    json_t *js = json_object_get(cfg, "timestep_spacing");
    json_int_t T = json_is_integer(jt) && json_integer_value(jt) > 0 ? json_integer_value(jt) : 1000;
    json_int_t off = json_is_integer(jo) ? json_integer_value(jo) : 0;
    const char *spacing = json_is_string(js) ? json_string_value(js) : "leading";
    if (!strcmp(spacing, "trailing") || !strcmp(spacing, "linspace"))
        *out = (float)(T - 1);
    else
        *out = (float)(49 * (T / 50) + off);
    json_decref(cfg);
    return SDC_OK;
}

sdc_status sdc_pipeline_token_count(const sdc_source *s, const char *tokenizer, int *out, sdc_err *err) {
    char path[4200];
    *out = 0;
    if (!pipeline_file(s, tokenizer, "tokenizer_config.json", path, sizeof path)) return SDC_OK;
    json_t *cfg;
    sdc_status st = sdc_json_load(path, &cfg, err);
    if (st) return st;
    json_t *v = json_object_get(cfg, "model_max_length");
    json_int_t n = json_is_integer(v) ? json_integer_value(v) : 0;
    json_decref(cfg);
    *out = n > 0 && n <= 4096 ? (int)n : 0; /* some tokenizers say 1e30 for "unlimited" */
    return SDC_OK;
}

bool sdc_pipeline_tokenizer_file(const sdc_source *s, const char *file, char *out, size_t size) {
    return pipeline_file(s, "tokenizer", file, out, size) || pipeline_file(s, "tokenizer_2", file, out, size);
}

void sdc_pipeline_card_base_model(const sdc_source *s, char *out, size_t size) {
    char path[4200];
    out[0] = 0;
    if (!s->config_root[0] || !sdc_fmt(path, sizeof path, "%s/README.md", s->config_root)) return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[1024];
    bool front = false;
    for (int n = 0; fgets(line, sizeof line, f) && n < 400; n++) {
        if (!strncmp(line, "---", 3)) {
            if (front) break;
            front = true;
            continue;
        }
        if (front && !strncmp(line, "base_model:", 11)) {
            char *v = line + 11;
            while (*v == ' ' || *v == '\t' || *v == '"' || *v == '\'') v++;
            size_t len = strcspn(v, "\"'\r\n \t");
            if (len < size) {
                memcpy(out, v, len);
                out[len] = 0;
            }
            break;
        }
    }
    fclose(f);
}
