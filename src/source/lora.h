/*
 * lora.h — LoRAs (--lora FILE[:SCALE]) merged into the UNet and text-encoder weights while the
 * writer streams them: W' = W + Σ scale·(alpha/rank)·up·down over the LoRAs that touch W.
 *
 * Where the merge happens, and why there: weights reach the graph as lazy views
 * (sdc_tensor) that the writer reads a chunk at a time through sdc_mil_const_values
 * (mil/values.c); nothing else reads weight values. So the component's weights lookup hands
 * out, for every weight a LoRA touches, a copy of the view that carries an addend
 * (sdc_tensor_addend, io/safetensors.h), and values.c adds it to each chunk in float32 before
 * the weight's scale and its cast to the const's dtype. Builders, passes (palettization reads
 * through the same function), the writer and the float32 reference graph of
 * --check-output-correctness all see the merged weight without knowing about LoRAs, and a
 * merged weight is never whole in memory: only the float32 factors of the weight being
 * streamed are (decoded when its first chunk is read, replaced by the next weight's).
 *
 * The delta of a chunk (elements [first, first + n) of W viewed as [out, in·kh·kw]) is a plain
 * loop: row o of the chunk gains Σ_k up'[o, k]·down[k, cols] (up' holds scale·alpha/rank),
 * four ranks a pass over the row's contiguous columns, vectorised. That is the product's own
 * r multiply-adds per element, added in place, with no temporary; the chunks the writer asks
 * for start and end mid-row, and the inner dimension is the rank (4–128), where a blocked GEMM
 * gains little; the interpreter's sgemm (interp/gemm.c) sits on a floor above this one.
 * Measured by bench/lora.py (SD 1.5 UNet, rank 64 on attention, feed-forward, proj and 3×3
 * conv1 layers): see the README's LoRA section.
 *
 * Formats, as diffusers' loaders read them (lora_conversion_utils.py, lora_pipeline.py):
 *   - kohya: lora_unet_<module>, lora_te_ / lora_te1_<module> (text_encoder), lora_te2_<module>
 *     (text_encoder_2) with .lora_down.weight, .lora_up.weight and an optional .alpha
 *     (absent: alpha = rank). <module> is the diffusers module path with '.' written '_';
 *     underscores are ambiguous, so it is resolved against the component's own weight names
 *     (each spelled the same way), never by a guessed pattern. LDM-style paths
 *     (input_blocks_1_1_…, as community LoRAs have) have their block structure mapped by
 *     ldm_names' table for the UNet's own resnets per block (sdc_ldm_kohya_to_diffusers), then
 *     are resolved the same way; a UNet whose blocks differ in resnets refuses them.
 *   - diffusers/PEFT: unet.<module>, text_encoder.<module>, text_encoder_2.<module> with
 *     .lora_A.weight / .lora_B.weight (or the older .lora.down.weight / .lora.up.weight), and an
 *     optional <module>.alpha; <module> is the dotted diffusers path.
 *   - linear: down [r, in], up [out, r]; conv (any kernel): down [r, in, kh, kw], up
 *     [out, r, 1, 1]; ΔW = up·down reshaped to W's shape.
 * LoHa, LoKr, LoCon's Tucker mid weights, DoRA and full diffs are refused naming the file and
 * key; a key outside these formats too. Every LoRA module must match a weight of its
 * component. Files are .safetensors, or what torch.save writes (.ckpt, .pt, .pth, .bin), read
 * without running pickle code (io/ckpt.h).
 */
#ifndef SDC_LORA_H
#define SDC_LORA_H

#include "common.h"
#include "io/safetensors.h"
#include "sdcoreml.h"

typedef struct sdc_lora_set sdc_lora_set;
typedef struct sdc_lora_merge sdc_lora_merge;
struct sdc_weights;

/* Opens and parses every file (keys grouped per module, shapes and dtypes checked). */
sdc_status sdc_lora_set_open(const sdc_lora *loras, size_t n, sdc_lora_set **out, sdc_err *err);
void sdc_lora_set_close(sdc_lora_set *set); /* NULL is a no-op */

/* The first file of the set with keys for `component` ("unet", "text_encoder",
   "text_encoder_2"), or NULL when none has any. */
const char *sdc_lora_set_file_for(const sdc_lora_set *set, const char *component);

/* Resolves the set's modules of `component` against the weight names of w and makes a merged
   view for each weight they touch; *out is NULL when the set has none for it. Fails when a
   module matches no weight (listing a few) or its shapes do not fit the weight. */
sdc_status sdc_lora_merge_open(const sdc_lora_set *set, const char *component, const struct sdc_weights *w,
                               sdc_lora_merge **out, sdc_err *err);
size_t sdc_lora_merge_count(const sdc_lora_merge *m);
/* The i-th merged view: the original tensor (same name, file, data) with the LoRAs' addend. */
const sdc_tensor *sdc_lora_merge_tensor(const sdc_lora_merge *m, size_t i);
void sdc_lora_merge_close(sdc_lora_merge *m); /* NULL is a no-op */

#endif
