/* graph_internal.h — plumbing shared by graph.c and ops.c; not for builders. */
#ifndef SDC_MIL_GRAPH_INTERNAL_H
#define SDC_MIL_GRAPH_INTERNAL_H

#include "mil/graph.h"

const char *sdc_mil_fresh_name(mil_graph *g, const char *hint);
mil_op *sdc_mil_new_op(mil_graph *g, const char *type, int n_outputs);
bool sdc_mil_set_param(mil_graph *g, mil_op *op, const char *name, int n, mil_var **vars);
bool sdc_mil_param1(mil_graph *g, mil_op *op, const char *name, mil_var *v);
void *sdc_mil_oom(mil_graph *g);

#endif
