/* text_encoder.c — --convert-text-encoder: text_encoder and, for SDXL, text_encoder_2. */
#include "convert/convert.h"

#include <sys/stat.h>

/* The anchor feeds the encoder tokenizer.model_max_length tokens (77 for every SD tokenizer);
   0 when the tokenizer does not say (then max_position_embeddings is used). */
static int token_count(const conv_ctx *c, const char *tokenizer) {
    char path[4200];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s/tokenizer_config.json", c->src->root, tokenizer);
    if (stat(path, &st) != 0) return 0;
    json_t *cfg;
    if (sdc_json_load(path, &cfg, c->err)) return -1;
    json_t *v = json_object_get(cfg, "model_max_length");
    json_int_t n = json_is_integer(v) ? json_integer_value(v) : 0;
    json_decref(cfg);
    return n > 0 && n <= 4096 ? (int)n : 0; /* some tokenizers say 1e30 for "unlimited" */
}

typedef struct text_state {
    const sdc_component *comp;
    int tokens;
} text_state;

/* The reference for --check-output-correctness is the same CLIP graph in float32: text
   encoders have no ANE rewrite. */
static sdc_status build_text(const conv_ctx *c, void *state, bool reference, mil_graph **out) {
    const text_state *t = state;
    sdc_clip_text_options opt = {reference ? SDC_DT_F32 : conv_compute_dtype(c), c->target.opset, t->tokens,
                                 c->job->xl_version};
    return sdc_build_clip_text(t->comp, &opt, out, c->err);
}

static sdc_status convert_one(const conv_ctx *c, const char *name, const char *tokenizer) {
    char path[4096];
    sdc_status s = conv_package_path(c, name, path, sizeof path);
    if (s) return s;
    if (!c->job->check_output_correctness && conv_exists_skip(c, path, name)) return SDC_OK;
    sdc_component comp;
    if ((s = sdc_component_open(c->src, name, &comp, c->err))) return s;
    int tokens = token_count(c, tokenizer);
    int64_t positions = 77, vocab = 49408;
    if (tokens < 0)
        s = c->err->code;
    else if (tokens == 0 && !(s = sdc_config_int(&comp, "max_position_embeddings", 77, &positions, c->err)))
        tokens = positions > 0 && positions <= 4096 ? (int)positions : 77;
    if (!s) s = sdc_config_int(&comp, "vocab_size", 49408, &vocab, c->err);
    if (!s) {
        bool xl = c->job->xl_version;
        const char *in_docs[] = {"The token ids that represent the input text"};
        const char *out_docs[] = {
            xl ? "The hidden states of the penultimate encoder layer, without the final layer norm"
               : "The token embeddings as encoded by the Transformer model",
            xl ? "The pooled text embedding (projected when the model has a text projection)"
               : "The last_hidden_state at the end-of-text token",
        };
        conv_docs docs = {.inputs = in_docs, .outputs = out_docs};
        text_state st = {&comp, tokens};
        conv_check_hint hint = {.vocab_size = vocab};
        conv_log(c, SDC_LOG_INFO, "converting %s (%s)", name, sdc_weights_describe(comp.weights));
        s = conv_emit(c, path, name, &docs, build_text, &st, &hint);
    }
    sdc_component_close(&comp);
    return s;
}

sdc_status conv_text_encoders(const conv_ctx *c) {
    bool xl = conv_looks_xl(c->src);
    if (xl && !c->job->xl_version)
        return sdc_fail(c->err, SDC_E_ARG,
                        "%s is an SDXL pipeline; add --xl-version so the text encoders output hidden_embeds as "
                        "the SDXL pipelines expect",
                        c->job->model_version);
    if (!xl && c->job->xl_version)
        return sdc_fail(c->err, SDC_E_ARG, "--xl-version given, but %s is not an SDXL pipeline (no text_encoder_2)",
                        c->job->model_version);
    static const char *const names[2][2] = {{"text_encoder", "tokenizer"}, {"text_encoder_2", "tokenizer_2"}};
    bool any = false;
    for (int i = 0; i < 2; i++) {
        if (!sdc_source_has(c->src, names[i][0])) continue;
        any = true;
        sdc_status s = convert_one(c, names[i][0], names[i][1]);
        if (s) return s;
    }
    return any ? SDC_OK : sdc_fail(c->err, SDC_E_NOTFOUND, "%s: the pipeline has no text_encoder", c->src->root);
}
