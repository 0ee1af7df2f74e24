/*
 * optable.c — the interpreter's op table: MIL op type → kernel (ops_*.c) and its variant.
 * constexpr_* ops are values, not steps: their row names the function that computes the
 * value (consts.c) instead of a kernel. A second table names the ops that only move values, a
 * third those that read only part of a constant input.
 *
 * It sits above the kernels and consts.c, which reach values only through the accessors
 * (access.c); the loader finds kernels here, so no file of the interpreter calls back up.
 */
#include "interp/interp.h"

static const iop_def DEFS[] = {
    /* elementwise unary */
    {"abs", sdc_kernel_unary, U_ABS, NULL},
    {"acos", sdc_kernel_unary, U_ACOS, NULL},
    {"asin", sdc_kernel_unary, U_ASIN, NULL},
    {"atan", sdc_kernel_unary, U_ATAN, NULL},
    {"atanh", sdc_kernel_unary, U_ATANH, NULL},
    {"ceil", sdc_kernel_unary, U_CEIL, NULL},
    {"cos", sdc_kernel_unary, U_COS, NULL},
    {"cosh", sdc_kernel_unary, U_COSH, NULL},
    {"erf", sdc_kernel_unary, U_ERF, NULL},
    {"exp", sdc_kernel_unary, U_EXP, NULL},
    {"exp2", sdc_kernel_unary, U_EXP2, NULL},
    {"floor", sdc_kernel_unary, U_FLOOR, NULL},
    {"round", sdc_kernel_unary, U_ROUND, NULL},
    {"sign", sdc_kernel_unary, U_SIGN, NULL},
    {"sin", sdc_kernel_unary, U_SIN, NULL},
    {"sinh", sdc_kernel_unary, U_SINH, NULL},
    {"sqrt", sdc_kernel_unary, U_SQRT, NULL},
    {"square", sdc_kernel_unary, U_SQUARE, NULL},
    {"tan", sdc_kernel_unary, U_TAN, NULL},
    {"tanh", sdc_kernel_unary, U_TANH, NULL},
    {"relu", sdc_kernel_unary, U_RELU, NULL},
    {"relu6", sdc_kernel_unary, U_RELU6, NULL},
    {"sigmoid", sdc_kernel_unary, U_SIGMOID, NULL},
    {"silu", sdc_kernel_unary, U_SILU, NULL},
    {"softplus", sdc_kernel_unary, U_SOFTPLUS, NULL},
    {"softsign", sdc_kernel_unary, U_SOFTSIGN, NULL},
    {"logical_not", sdc_kernel_unary, U_LOGICAL_NOT, NULL},
    {"inverse", sdc_kernel_unary, U_INVERSE, NULL},
    {"log", sdc_kernel_unary, U_LOG, NULL},
    {"rsqrt", sdc_kernel_unary, U_RSQRT, NULL},
    /* activations with parameters */
    {"gelu", sdc_kernel_gelu, 0, NULL},
    {"leaky_relu", sdc_kernel_act_alpha, A_LEAKY_RELU, NULL},
    {"elu", sdc_kernel_act_alpha, A_ELU, NULL},
    {"threshold", sdc_kernel_act_alpha, A_THRESHOLD, NULL},
    {"linear_activation", sdc_kernel_act_alpha, A_LINEAR, NULL},
    {"sigmoid_hard", sdc_kernel_act_alpha, A_SIGMOID_HARD, NULL},
    {"scaled_tanh", sdc_kernel_act_alpha, A_SCALED_TANH, NULL},
    {"clamped_relu", sdc_kernel_act_alpha, A_CLAMPED_RELU, NULL},
    {"softplus_parametric", sdc_kernel_act_alpha, A_SOFTPLUS_PARAM, NULL},
    {"prelu", sdc_kernel_act_alpha, A_PRELU, NULL},
    {"clip", sdc_kernel_clip, 0, NULL},
    {"softmax", sdc_kernel_softmax, 0, NULL},
    /* elementwise binary */
    {"add", sdc_kernel_binary, B_ADD, NULL},
    {"sub", sdc_kernel_binary, B_SUB, NULL},
    {"mul", sdc_kernel_binary, B_MUL, NULL},
    {"real_div", sdc_kernel_binary, B_REAL_DIV, NULL},
    {"floor_div", sdc_kernel_binary, B_FLOOR_DIV, NULL},
    {"mod", sdc_kernel_binary, B_MOD, NULL},
    {"pow", sdc_kernel_binary, B_POW, NULL},
    {"maximum", sdc_kernel_binary, B_MAXIMUM, NULL},
    {"minimum", sdc_kernel_binary, B_MINIMUM, NULL},
    {"equal", sdc_kernel_binary, B_EQUAL, NULL},
    {"not_equal", sdc_kernel_binary, B_NOT_EQUAL, NULL},
    {"less", sdc_kernel_binary, B_LESS, NULL},
    {"less_equal", sdc_kernel_binary, B_LESS_EQUAL, NULL},
    {"greater", sdc_kernel_binary, B_GREATER, NULL},
    {"greater_equal", sdc_kernel_binary, B_GREATER_EQUAL, NULL},
    {"logical_and", sdc_kernel_binary, B_AND, NULL},
    {"logical_or", sdc_kernel_binary, B_OR, NULL},
    {"logical_xor", sdc_kernel_binary, B_XOR, NULL},
    {"select", sdc_kernel_select, 0, NULL},
    {"cast", sdc_kernel_cast, 0, NULL},
    /* linear algebra, normalization */
    {"linear", sdc_kernel_linear, 0, NULL},
    {"matmul", sdc_kernel_matmul, 0, NULL},
    {"einsum", sdc_kernel_einsum, 0, NULL},
    {"conv", sdc_kernel_conv, 0, NULL},
    {"layer_norm", sdc_kernel_layer_norm, 0, NULL},
    {"instance_norm", sdc_kernel_instance_norm, 0, NULL},
    {"batch_norm", sdc_kernel_batch_norm, 0, NULL},
    {"scaled_dot_product_attention", sdc_kernel_sdpa, 0, NULL},
    /* reductions */
    {"reduce_sum", sdc_kernel_reduce, R_SUM, NULL},
    {"reduce_mean", sdc_kernel_reduce, R_MEAN, NULL},
    {"reduce_max", sdc_kernel_reduce, R_MAX, NULL},
    {"reduce_min", sdc_kernel_reduce, R_MIN, NULL},
    {"reduce_prod", sdc_kernel_reduce, R_PROD, NULL},
    {"reduce_l1_norm", sdc_kernel_reduce, R_L1_NORM, NULL},
    {"reduce_l2_norm", sdc_kernel_reduce, R_L2_NORM, NULL},
    {"reduce_log_sum", sdc_kernel_reduce, R_LOG_SUM, NULL},
    {"reduce_log_sum_exp", sdc_kernel_reduce, R_LOG_SUM_EXP, NULL},
    {"reduce_sum_square", sdc_kernel_reduce, R_SUM_SQUARE, NULL},
    {"reduce_argmax", sdc_kernel_reduce_arg, 0, NULL},
    {"reduce_argmin", sdc_kernel_reduce_arg, 1, NULL},
    /* shapes and indexing */
    {"reshape", sdc_kernel_reshape, 0, NULL},
    {"transpose", sdc_kernel_transpose, 0, NULL},
    {"expand_dims", sdc_kernel_expand_dims, 0, NULL},
    {"squeeze", sdc_kernel_squeeze, 0, NULL},
    {"identity", sdc_kernel_identity, 0, NULL},
    {"concat", sdc_kernel_concat, 0, NULL},
    {"stack", sdc_kernel_stack, 0, NULL},
    {"split", sdc_kernel_split, 0, NULL},
    {"slice_by_index", sdc_kernel_slice_by_index, 0, NULL},
    {"slice_by_size", sdc_kernel_slice_by_size, 0, NULL},
    {"gather", sdc_kernel_gather, 0, NULL},
    {"gather_nd", sdc_kernel_gather_nd, 0, NULL},
    {"tile", sdc_kernel_tile, 0, NULL},
    {"pad", sdc_kernel_pad, 0, NULL},
    {"band_part", sdc_kernel_band_part, 0, NULL},
    {"fill", sdc_kernel_fill, 0, NULL},
    {"range_1d", sdc_kernel_range_1d, 0, NULL},
    {"upsample_nearest_neighbor", sdc_kernel_upsample_nn, 0, NULL},
    {"shape", sdc_kernel_shape, 0, NULL},
    {"non_zero", sdc_kernel_non_zero, 0, NULL},
    {"scatter_nd", sdc_kernel_scatter_nd, 0, NULL},
    /* compression: values, not steps */
    {"constexpr_lut_to_dense", NULL, C_LUT, sdc_constexpr_eval},
    {"constexpr_affine_dequantize", NULL, C_AFFINE, sdc_constexpr_eval},
    {"constexpr_cast", NULL, C_CAST, sdc_constexpr_eval},
    {"constexpr_sparse_to_dense", NULL, C_SPARSE, sdc_constexpr_eval},
    {"constexpr_blockwise_shift_scale", NULL, C_BLOCKWISE, sdc_constexpr_eval},
};

const iop_def *sdc_iop_find(const char *type) {
    for (size_t i = 0; i < SDC_COUNT_OF(DEFS); i++)
        if (!strcmp(DEFS[i].type, type)) return &DEFS[i];
    return NULL;
}

/* Ops whose output values are copies of some input values (or zeros): what they copy is
   already rounded to its dtype, so their outputs need no rounding (exec.c). */
static const struct {
    const char *type;
    const char *inputs[SDC_IOP_MOVES];
} MOVERS[] = {
    {"reshape", {"x"}},      {"transpose", {"x"}},      {"expand_dims", {"x"}},
    {"squeeze", {"x"}},      {"identity", {"x"}},       {"concat", {"values"}},
    {"stack", {"values"}},   {"split", {"x"}},          {"slice_by_index", {"x"}},
    {"slice_by_size", {"x"}}, {"gather", {"x"}},        {"gather_nd", {"x"}},
    {"tile", {"x"}},         {"pad", {"x", "constant_val"}}, {"band_part", {"x"}},
    {"upsample_nearest_neighbor", {"x"}}, {"select", {"a", "b"}},
};

/* Ops that read only part of a constant input, by index: a token embedding's 77 rows of 49,408.
   Mapping such a table in whole before the op (exec.c) would cost more than the op. */
static const struct {
    const char *type, *input;
} PART_READERS[] = {
    {"gather", "x"}, /* sdc_kernel_gather reads a large constant table row by row */
};

const char *sdc_iop_reads_part(const char *type) {
    for (size_t i = 0; i < SDC_COUNT_OF(PART_READERS); i++)
        if (!strcmp(PART_READERS[i].type, type)) return PART_READERS[i].input;
    return NULL;
}

const char *const *sdc_iop_moves(const char *type) {
    for (size_t i = 0; i < SDC_COUNT_OF(MOVERS); i++)
        if (!strcmp(MOVERS[i].type, type)) return MOVERS[i].inputs;
    return NULL;
}
