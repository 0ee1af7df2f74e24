/*
 * convert.h — the convert wing (src/convert/): what the component converters share.
 *
 *   driver.c   sdc_convert(): validates the job, opens the model, runs each requested row
 *              of SDC_CONV_COMPONENTS in the anchor's order
 *   emit.c     one package: exists? → build → passes (palettize) → write → check
 *   check.c    --check-output-correctness: seeded inputs, PSNR, the float32 reference
 *   chunk.c    --chunk-unet: the two chunk packages of a UNet and their check
 *   <one file per component>: text_encoder.c, unet.c, vae.c, safety_checker.c,
 *              controlnet.c, bundle.c — each builds its graphs from nets/ and calls emit
 *
 * Adding a component is one file with its convert function and one row in the table
 * COMPONENTS of driver.c: its flag, whether --quantize-nbits palettizes it and the
 * packages it writes with their Swift resource names; the refusals, the effective options
 * in the metadata, palettization and bundling all loop over that table. Only driver.c
 * names the table and the component functions; the rest reach the table through the
 * context, so the wing's files depend one way: driver → components → emit, check, chunk.
 */
#ifndef SDC_CONVERT_CONVERT_H
#define SDC_CONVERT_CONVERT_H

#include "coreml/writer.h"
#include "nets/nets.h"
#include "source/source.h"

typedef struct sdc_conv_target {
    int spec, opset; /* spec 7 ↔ CoreML6 (macOS13/iOS16), 8 ↔ CoreML7, 9 ↔ CoreML8 */
} sdc_conv_target;

typedef struct sdc_conv_component sdc_conv_component;

typedef struct sdc_conv_ctx {
    const sdc_job *job;
    const sdc_source *src;
    sdc_conv_target target;
    sdc_err *err;
    const sdc_conv_component *component; /* the row being converted */
    const sdc_conv_component *rows;      /* the whole table, for the bundle step */
    size_t n_rows;
    const char *options; /* the effective options, as recorded in each package's metadata */
} sdc_conv_ctx;

/* A package a component may write, by its submodule name (the file name's last part, or the
   ControlNet prefix), and the name Apple's Swift pipeline loads it by from Resources/. */
typedef struct sdc_conv_resource {
    const char *submodule; /* "unet_chunk1" */
    const char *swift;     /* "UnetChunk1" */
} sdc_conv_resource;

#define SDC_CONV_MAX_RESOURCES 9

/* One row of the component table. */
struct sdc_conv_component {
    const char *name;   /* "vae_decoder": for messages */
    const char *flag;   /* "--convert-vae-decoder" */
    size_t requested;   /* offsetof(sdc_job, <bool>) of the flag */
    bool palettized;    /* --quantize-nbits applies (anchor §10.1: text encoders, UNets, ControlNets) */
    bool is_step;       /* runs on what the components wrote (the bundle), not a model component */
    /* The pipeline's component folders whose weights the row reads: what fetch.c downloads
       for a Hub id (configs are always fetched). */
    const char *weights[2];
    /* Checks made before the model is opened (NULL: none): a refusal here converts nothing. */
    sdc_status (*preflight)(const sdc_conv_ctx *c);
    /* Checks made once the model is open, before any row converts (NULL: none). */
    sdc_status (*prepare)(const sdc_conv_ctx *c);
    /* Writes (or skips) the component's packages. NULL: not supported yet, refused. */
    sdc_status (*convert)(const sdc_conv_ctx *c);
    /* Removes what preflight/prepare left for convert, whatever happened (NULL: nothing). */
    void (*cleanup)(const sdc_conv_ctx *c);
    sdc_conv_resource resources[SDC_CONV_MAX_RESOURCES]; /* for --bundle-resources-for-swift-cli */
};

void sdc_conv_log(const sdc_conv_ctx *c, sdc_log_level level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The compute dtype asked for with --compute-precision. */
sdc_dtype sdc_conv_compute_dtype(const sdc_conv_ctx *c);

/* SDXL pipelines need --xl-version, and --xl-version on an SD 1/2 pipeline is a typo: both
   refused by the converters whose graphs --xl-version changes. `why` ends the first message
   (what --xl-version does here), `not_xl_detail` the second. */
sdc_status sdc_conv_check_xl(const sdc_conv_ctx *c, const char *why, const char *not_xl_detail);

/* The UNet-like reference for --check-output-correctness: float32 and ORIGINAL attention (the
   plain matmul form, no per-head split einsums). */
void sdc_conv_unet_reference(sdc_unet_options *opt);

/* ---------------------------------------------------------------- fetch.c */

/* Before the model is opened: every Hub id of the job (--model-version, --refiner-version,
   --custom-vae-version, --convert-controlnet) whose files the rows read is complete in the
   cache, or is downloaded (unless HF_HUB_OFFLINE is set or sdcoreml has no libcurl). */
sdc_status sdc_conv_fetch_models(const sdc_conv_ctx *c);

/* ---------------------------------------------------------------- emit.c */

/* "<-o>/Stable_Diffusion_version_<model_version, '/' → '_'>_<submodule>.mlpackage" */
sdc_status sdc_conv_package_path(const sdc_conv_ctx *c, const char *submodule, char *out, size_t size);
/* "<-o>/<name>": for packages not named after the model (ControlNet_<id>.mlpackage) */
sdc_status sdc_conv_output_path(const sdc_conv_ctx *c, const char *name, char *out, size_t size);
/* True (with a notice) when the package exists: like the anchor, an existing package is kept. */
bool sdc_conv_exists_skip(const sdc_conv_ctx *c, const char *path, const char *what);
/* True (with the same notice) when the package exists and nothing is asked of it: a converter
   returns early without opening its weights. With --check-output-correctness an existing
   package is checked, so this is false. */
bool sdc_conv_skip(const sdc_conv_ctx *c, const char *path, const char *what);
/* A package that failed --check-output-correctness is moved to <stem>.failed-check.mlpackage
   (replacing an older one), so that no later run keeps it as converted; logged. */
void sdc_conv_quarantine(const sdc_conv_ctx *c, const char *path);

/* Feature descriptions for the package, parallel to the graph's inputs and outputs. */
typedef struct sdc_conv_docs {
    const char *const *inputs;
    const char *const *outputs;
    const char *version; /* metadata version; NULL: --model-version */
    const char *license; /* NULL: by --xl-version */
    const char *short_description; /* NULL: Stable Diffusion's */
    int n_inputs, n_outputs; /* how many docs the arrays hold; 0: one per input / output */
} sdc_conv_docs;

/* The OpenRAIL license every SD 1.x/2.x package names, as the anchor writes it. */
#define SDC_CONV_LICENSE_SD "OpenRAIL (https://huggingface.co/spaces/CompVis/stable-diffusion-license)"

/* Writes `g` to `path` with the anchor's metadata and ours; logs the result. */
sdc_status sdc_conv_write(const sdc_conv_ctx *c, const mil_graph *g, const char *path, const char *what,
                          const sdc_conv_docs *docs);

/* --quantize-nbits as a pass on a built graph of the current row (no-op when the row is not
   palettized or the flag is off). */
sdc_status sdc_conv_palettize(const sdc_conv_ctx *c, mil_graph *g, const char *what);

/* --check-output-correctness: hints for the seeded inputs. */
typedef struct sdc_conv_check_hint {
    int64_t vocab_size; /* input_ids drawn from [0, vocab_size); 0: not a text model */
    float timestep;     /* value of a `timestep` input */
    const char *only_output; /* compare just this output (NULL: all), e.g. the safety checker's
                                concept_scores, whose thresholded outputs may flip on ties */
} sdc_conv_check_hint;

/* Builds the graph of one package: the converted one, or (reference = true) the float32
   graph without the ANE rewrite that --check-output-correctness compares it with. */
typedef sdc_status (*sdc_conv_build_fn)(const sdc_conv_ctx *c, void *state, bool reference, mil_graph **out);

/* What emit needs to make one package. */
typedef struct sdc_conv_package {
    const char *path;              /* where it goes */
    const char *what;              /* its submodule name, for messages */
    const char *describe;          /* after "converting <what>" in the log: ": latent 64x64 (…)" */
    const sdc_conv_docs *docs;
    sdc_conv_build_fn build;
    void *state;                   /* passed to build */
    const sdc_conv_check_hint *hint;
} sdc_conv_package;

/* Writes the package unless it exists, then checks it when --check-output-correctness asks
   (an existing package is checked too, so a re-run verifies earlier output). */
sdc_status sdc_conv_emit(const sdc_conv_ctx *c, const sdc_conv_package *p);

/* ---------------------------------------------------------------- check.c */

#define SDC_CHECK_MIN_PSNR 35.0

/* The anchor's PSNR of a candidate against a reference (-inf on NaN). */
double sdc_psnr(const float *ref, const float *cand, size_t n);

/* Seeded float32 inputs shaped as the model declares them (the interpreter rounds them to
   fp16 where declared): token ids for input_ids, hint->timestep for timestep, uniform [0, 1)
   elsewhere. Free with sdc_check_inputs_free. */
sdc_ndarray *sdc_check_seeded_inputs(const sdc_model *m, const sdc_conv_check_hint *hint);
void sdc_check_inputs_free(sdc_ndarray *in, int n);

/* The array named `name` among n, or NULL. */
const sdc_ndarray *sdc_check_find_output(const sdc_ndarray *outs, int n, const char *name);

/* Fails (SDC_E_CHECK) when either output holds NaN or inf, naming the output and counting them;
   else compares one output with its reference by PSNR, logs it, and fails (SDC_E_CHECK) below
   SDC_CHECK_MIN_PSNR naming `label`, the output and `versus` (NULL: the reference). */
sdc_status sdc_check_output(const sdc_conv_ctx *c, const char *label, const sdc_ndarray *ref,
                            const sdc_ndarray *got, const char *versus);

/* Runs `package` and the float32 graph `reference` on the same seeded inputs and compares
   every output (or hint->only_output). */
sdc_status sdc_check_package(const sdc_conv_ctx *c, const char *package, const mil_graph *reference,
                             const char *what, const sdc_conv_check_hint *hint);

/* ---------------------------------------------------------------- shared reads */

/* Latent size: --latent-h/-w, else the UNet config's sample_size (an int or [h, w]), else dflt. */
sdc_status sdc_conv_latent_size(const sdc_conv_ctx *c, const sdc_source *src, int64_t dflt, int *h, int *w);

/* The latent size a UNet-like graph of `downsamples` halvings takes; the error names where the
   size came from (--latent-h/-w, or sample_size of the UNet config). */
sdc_status sdc_conv_check_latent(const sdc_conv_ctx *c, const sdc_source *src, int downsamples, int h, int w);

/* The VAE to convert: --custom-vae-version (its vae/ folder, or config.json at its root), else
   the pipeline's vae/. *out is zeroed first, so it can be closed whatever happens. */
sdc_status sdc_conv_vae_open(const sdc_conv_ctx *c, sdc_component *out);

/* ---------------------------------------------------------------- the rows' functions */

sdc_status sdc_conv_vae_decoder(const sdc_conv_ctx *c);
sdc_status sdc_conv_vae_encoder(const sdc_conv_ctx *c);
sdc_status sdc_conv_controlnets_preflight(const sdc_conv_ctx *c);
sdc_status sdc_conv_controlnets(const sdc_conv_ctx *c);
sdc_status sdc_conv_unet_prepare(const sdc_conv_ctx *c);
sdc_status sdc_conv_unet(const sdc_conv_ctx *c);
sdc_status sdc_conv_text_encoders(const sdc_conv_ctx *c);
sdc_status sdc_conv_safety_checker(const sdc_conv_ctx *c);
/* --bundle-resources-for-swift-cli: refused up front without xcrun; then Resources/ */
sdc_status sdc_conv_bundle_preflight(const sdc_conv_ctx *c);
sdc_status sdc_conv_bundle_prepare(const sdc_conv_ctx *c);
sdc_status sdc_conv_bundle(const sdc_conv_ctx *c);
/* Removes the tokenizer files prepare downloaded (called once the job is over, failed or not). */
void sdc_conv_bundle_cleanup(const sdc_conv_ctx *c);

#endif
