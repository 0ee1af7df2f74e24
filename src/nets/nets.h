/*
 * nets.h — network builders: diffusers/transformers configs and weights in, MIL graph out.
 * Builders see component folders (config + weights by diffusers name), never file formats.
 */
#ifndef SDC_NETS_H
#define SDC_NETS_H

#include "mil/graph.h"
#include "source/source.h"

typedef struct sdc_clip_text_options {
    sdc_dtype compute; /* F16 or F32: weights and compute */
    int opset;         /* 6, 7 or 8 */
    int seq_len;       /* tokens per prompt (77) */
    bool xl;           /* outputs hidden_embeds (penultimate layer, no final norm) + pooled */
} sdc_clip_text_options;

/*
 * transformers CLIPTextModel / CLIPTextModelWithProjection, traced as is (no ANE rewrite),
 * with the anchor's contract: input `input_ids` float32 (1, S); outputs `last_hidden_state`
 * (1, S, W) and `pooled_outputs` (1, W), or with `xl` `hidden_embeds` (1, S, W) and
 * `pooled_outputs` (1, P) (projected when the model has text_projection). Masked positions of
 * the causal mask get -1e4 (fp16-safe), as in the anchor.
 */
sdc_status sdc_build_clip_text(const sdc_component *c, const sdc_clip_text_options *opt, mil_graph **out,
                               sdc_err *err);

#endif
