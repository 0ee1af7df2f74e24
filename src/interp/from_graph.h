/*
 * from_graph.h — the interpreter run straight from an in-memory MIL graph (src/mil/), for the
 * float32 reference of --check-output-correctness: no package is written. The graph's
 * weights stay lazy views into the mapped source files; each is decoded when an op reads it,
 * freed after that op, and its pages dropped, as a package's weight.bin is.
 */
#ifndef SDC_INTERP_FROM_GRAPH_H
#define SDC_INTERP_FROM_GRAPH_H

#include "mil/graph.h"
#include "sdcoreml.h"

/* A model that evaluates `g` (which must outlive it: names, small values and weight views
   are borrowed). `label` names the model in errors (as a package's path does). Constants
   stored through a pass's transform (palettized) are refused: the reference is never
   palettized. Free with sdc_model_free. */
sdc_status sdc_model_from_graph(const mil_graph *g, const char *label, const sdc_model_options *options,
                                sdc_model **out, sdc_err *err);

#endif
