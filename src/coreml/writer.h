/*
 * writer.h — serialises a MIL graph as an ML Program .mlpackage:
 *
 *   X.mlpackage/Manifest.json
 *   X.mlpackage/Data/com.apple.CoreML/model.mlmodel        (protobuf Model, spec 7..9)
 *   X.mlpackage/Data/com.apple.CoreML/weights/weight.bin   (blob storage v2)
 *
 * The package is built in a hidden temporary directory beside the target and renamed into
 * place only when complete. Weights are streamed tensor by tensor from their mapped source
 * files, so memory stays near one conversion buffer, not the model size. Output is
 * deterministic: the Manifest identifiers derive from the content.
 */
#ifndef SDC_WRITER_H
#define SDC_WRITER_H

#include "mil/graph.h"

typedef struct sdc_package_info {
    int spec_version; /* 7, 8 or 9; must match the graph's opset + 1 */
    const char *short_description, *author, *license, *version;
    size_t n_user;    /* user-defined metadata, written in this order (keep keys sorted) */
    const char *const *user_keys;
    const char *const *user_values;
    const char *const *input_docs;  /* descriptions of the first n_input_docs inputs, or NULL */
    const char *const *output_docs; /* descriptions of the first n_output_docs outputs, or NULL */
    int n_input_docs, n_output_docs; /* 0 with non-NULL docs: one per input / output */
} sdc_package_info;

typedef struct sdc_write_hooks {
    sdc_progress_fn progress; /* called as weights stream: (what, bytes done, bytes total) */
    void *user;
    const char *what;         /* label for progress */
} sdc_write_hooks;

/* Writes `g` as a package at `path`, through a temporary beside it committed durably
   (io/outdir.h). Callers skip packages that exist; one that appears while this run writes
   (another run converting the same model into the same -o) is kept, ours dropped, and SDC_OK
   returned: the same job gives the same bytes. */
sdc_status sdc_write_package(const mil_graph *g, const sdc_package_info *info, const char *path,
                             const sdc_write_hooks *hooks, sdc_err *err);

/* Names the package-shaped directory that sdc_remove_partial_output() removes if the run is
   interrupted (NULL: none). The writer tracks its own temporary directory; other temporary
   packages (the check's reference) are tracked by whoever keeps them. */
void sdc_track_partial_output(const char *path);

/* Removes a package-shaped directory tree we created (only the files we write). */
void sdc_remove_package_tree(const char *path);

#endif
