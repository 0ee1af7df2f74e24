/*
 * convert.h — what the per-component converters (src/convert/*.c) share: the job, the
 * resolved model, the deployment target, output names, metadata and package writing.
 */
#ifndef SDC_CONVERT_CONVERT_H
#define SDC_CONVERT_CONVERT_H

#include "coreml/writer.h"
#include "nets/nets.h"
#include "source/source.h"

typedef struct sdc_target {
    int spec, opset; /* spec 7 ↔ CoreML6 (macOS13/iOS16), 8 ↔ CoreML7, 9 ↔ CoreML8 */
} sdc_target;

typedef struct conv_ctx {
    const sdc_job *job;
    const sdc_source *src;
    sdc_target target;
    sdc_err *err;
} conv_ctx;

void conv_log(const conv_ctx *c, sdc_log_level level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* "<-o>/Stable_Diffusion_version_<model_version, '/' → '_'>_<submodule>.mlpackage" */
sdc_status conv_package_path(const conv_ctx *c, const char *submodule, char *out, size_t size);
/* True (with a notice) when the package exists: like the anchor, an existing package is kept. */
bool conv_exists_skip(const conv_ctx *c, const char *path, const char *what);

/* Feature descriptions for the package, parallel to the graph's inputs and outputs. */
typedef struct conv_docs {
    const char *const *inputs;
    const char *const *outputs;
    const char *version; /* metadata version; NULL: --model-version */
    const char *license; /* NULL: by --xl-version */
    const char *short_description; /* NULL: Stable Diffusion's */
    int n_inputs, n_outputs; /* how many docs the arrays hold; 0: one per input / output */
} conv_docs;

/* Writes `g` to `path` with the anchor's metadata and ours; logs the result. */
sdc_status conv_write(const conv_ctx *c, const mil_graph *g, const char *path, const char *what,
                      const conv_docs *docs);

/* The compute dtype asked for with --compute-precision. */
sdc_dtype conv_compute_dtype(const conv_ctx *c);

/* Whether the pipeline is SDXL, judged from model_index.json and its components. */
bool conv_looks_xl(const sdc_source *src);

/* --check-output-correctness: hints for the seeded inputs. */
typedef struct conv_check_hint {
    int64_t vocab_size; /* input_ids drawn from [0, vocab_size); 0: not a text model */
    float timestep;     /* value of a `timestep` input */
    const char *only_output; /* compare just this output (NULL: all), e.g. the safety checker's
                                concept_scores, whose thresholded outputs may flip on ties */
} conv_check_hint;

/* Builds the graph of one package: the converted one, or (reference = true) the float32
   graph without the ANE rewrite that --check-output-correctness compares it with. */
typedef sdc_status (*conv_build_fn)(const conv_ctx *c, void *state, bool reference, mil_graph **out);

/* Writes the package unless it exists, then checks it when --check-output-correctness asks
   (an existing package is checked too, so a re-run verifies earlier output). */
sdc_status conv_emit(const conv_ctx *c, const char *path, const char *what, const conv_docs *docs,
                     conv_build_fn build, void *state, const conv_check_hint *hint);

/* Runs `package` and a reference package built from `reference` on the same seeded inputs;
   fails (SDC_E_CHECK) naming the model and output when an output's PSNR is below 35 dB. */
sdc_status conv_check(const conv_ctx *c, const char *package, const mil_graph *reference, const char *what,
                      const conv_check_hint *hint);
float conv_first_timestep(const sdc_source *src, sdc_err *err);
double sdc_psnr(const float *ref, const float *cand, size_t n);

/* "<-o>/<name>": for packages not named after the model (ControlNet_<id>.mlpackage) */
sdc_status conv_output_path(const conv_ctx *c, const char *name, char *out, size_t size);

/* An integer of <src>/<component>/config.json; dflt when the file or key is absent. */
sdc_status conv_pipeline_int(const conv_ctx *c, const sdc_source *src, const char *component, const char *key,
                             int64_t dflt, int64_t *out);
/* Latent size: --latent-h/-w, else the UNet config's sample_size (an int or [h, w]), else dflt. */
sdc_status conv_latent_size(const conv_ctx *c, const sdc_source *src, int64_t dflt, int *h, int *w);

/* Each converter: returns SDC_OK after writing (or skipping) its package(s). */
sdc_status conv_text_encoders(const conv_ctx *c);
sdc_status conv_unet(const conv_ctx *c);
sdc_status conv_controlnets(const conv_ctx *c);
/* --bundle-resources-for-swift-cli: refused up front without xcrun; then Resources/ */
sdc_status conv_bundle_preflight(const conv_ctx *c);
sdc_status conv_bundle(const conv_ctx *c);
sdc_status conv_vae_decoder(const conv_ctx *c);
sdc_status conv_vae_encoder(const conv_ctx *c);
sdc_status conv_safety_checker(const conv_ctx *c);

/* The VAE to convert: --custom-vae-version (its vae/ folder, or config.json at its root), else
   the pipeline's vae/. *out is zeroed first, so it can be closed whatever happens. */
sdc_status conv_vae_open(const conv_ctx *c, sdc_component *out);
/* Latent size: --latent-h/-w, else the UNet's sample_size, else the VAE's sample_size / scale. */

#endif
