/*
 * convert_internal.h — what the per-component converters (convert_*.c) share: the job, the
 * resolved model, the deployment target, output names, metadata and package writing.
 */
#ifndef SDC_CONVERT_INTERNAL_H
#define SDC_CONVERT_INTERNAL_H

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
} conv_docs;

/* Writes `g` to `path` with the anchor's metadata and ours; logs the result. */
sdc_status conv_write(const conv_ctx *c, const mil_graph *g, const char *path, const char *what,
                      const conv_docs *docs);

/* The compute dtype asked for with --compute-precision. */
sdc_dtype conv_compute_dtype(const conv_ctx *c);

/* Whether the pipeline is SDXL, judged from model_index.json and its components. */
bool conv_looks_xl(const sdc_source *src);

/* Each converter: returns SDC_OK after writing (or skipping) its package(s). */
sdc_status conv_text_encoders(const conv_ctx *c);
sdc_status conv_unet(const conv_ctx *c);

#endif
