/* text_encoder.c — --convert-text-encoder: text_encoder and, for SDXL, text_encoder_2. */
#include "convert/convert.h"

typedef struct text_state {
    const sdc_component *comp;
    int tokens;
} text_state;

/* The reference for --check-output-correctness is the same CLIP graph in float32: text
   encoders have no ANE rewrite. */
static sdc_status build_text(const sdc_conv_ctx *c, void *state, bool reference, mil_graph **out) {
    const text_state *t = state;
    sdc_clip_text_options opt = {reference ? SDC_DT_F32 : sdc_conv_compute_dtype(c), c->target.opset, t->tokens,
                                 c->job->xl_version};
    return sdc_build_clip_text(t->comp, &opt, out, c->err);
}

static sdc_status convert_one(const sdc_conv_ctx *c, const char *name, const char *tokenizer) {
    char path[4096];
    sdc_status s = sdc_conv_package_path(c, name, path, sizeof path);
    if (s) return s;
    if (sdc_conv_skip(c, path, name)) return SDC_OK;
    sdc_component comp;
    if ((s = sdc_component_open(c->src, name, &comp, c->err))) return s;
    /* The anchor feeds the encoder tokenizer.model_max_length tokens (77 for every SD
       tokenizer); else max_position_embeddings. */
    int tokens = 0;
    int64_t positions = 77, vocab = 49408;
    s = sdc_pipeline_token_count(c->src, tokenizer, &tokens, c->err);
    if (!s && tokens == 0 && !(s = sdc_config_int(&comp, "max_position_embeddings", 77, &positions, c->err)))
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
        sdc_conv_docs docs = {.inputs = in_docs, .outputs = out_docs};
        text_state st = {&comp, tokens};
        sdc_conv_check_hint hint = {.vocab_size = vocab};
        char describe[4600];
        snprintf(describe, sizeof describe, " (%s)", sdc_weights_describe(comp.weights));
        s = sdc_conv_emit(c, &(sdc_conv_package){.path = path, .what = name, .describe = describe, .docs = &docs,
                                                 .build = build_text, .state = &st, .hint = &hint});
    }
    sdc_component_close(&comp);
    return s;
}

sdc_status sdc_conv_text_encoders(const sdc_conv_ctx *c) {
    sdc_status s = sdc_conv_check_xl(c, " so the text encoders output hidden_embeds as the SDXL pipelines expect",
                                     " (no text_encoder_2)");
    if (s) return s;
    static const char *const names[2][2] = {{"text_encoder", "tokenizer"}, {"text_encoder_2", "tokenizer_2"}};
    bool any = false;
    for (int i = 0; i < 2; i++) {
        if (!sdc_source_has(c->src, names[i][0])) continue;
        any = true;
        s = convert_one(c, names[i][0], names[i][1]);
        if (s) return s;
    }
    return any ? SDC_OK : sdc_fail(c->err, SDC_E_NOTFOUND, "%s: the pipeline has no text_encoder", c->src->root);
}
