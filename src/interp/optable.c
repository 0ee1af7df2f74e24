/*
 * optable.c — the interpreter's op table: MIL op type → kernel (ops_*.c) and its variant.
 * constexpr_* ops are values, not steps: their row names the function that computes the
 * value (consts.c) instead of a kernel.
 *
 * It sits above the kernels and consts.c, which reach values only through the accessors
 * (access.c); the loader finds kernels here, so no file of the interpreter calls back up.
 */
#include "interp/interp.h"

static const iop_def DEFS[] = {
    /* elementwise unary */
    {"abs", k_unary, U_ABS, NULL},
    {"acos", k_unary, U_ACOS, NULL},
    {"asin", k_unary, U_ASIN, NULL},
    {"atan", k_unary, U_ATAN, NULL},
    {"atanh", k_unary, U_ATANH, NULL},
    {"ceil", k_unary, U_CEIL, NULL},
    {"cos", k_unary, U_COS, NULL},
    {"cosh", k_unary, U_COSH, NULL},
    {"erf", k_unary, U_ERF, NULL},
    {"exp", k_unary, U_EXP, NULL},
    {"exp2", k_unary, U_EXP2, NULL},
    {"floor", k_unary, U_FLOOR, NULL},
    {"round", k_unary, U_ROUND, NULL},
    {"sign", k_unary, U_SIGN, NULL},
    {"sin", k_unary, U_SIN, NULL},
    {"sinh", k_unary, U_SINH, NULL},
    {"sqrt", k_unary, U_SQRT, NULL},
    {"square", k_unary, U_SQUARE, NULL},
    {"tan", k_unary, U_TAN, NULL},
    {"tanh", k_unary, U_TANH, NULL},
    {"relu", k_unary, U_RELU, NULL},
    {"relu6", k_unary, U_RELU6, NULL},
    {"sigmoid", k_unary, U_SIGMOID, NULL},
    {"silu", k_unary, U_SILU, NULL},
    {"softplus", k_unary, U_SOFTPLUS, NULL},
    {"softsign", k_unary, U_SOFTSIGN, NULL},
    {"logical_not", k_unary, U_LOGICAL_NOT, NULL},
    {"inverse", k_unary, U_INVERSE, NULL},
    {"log", k_unary, U_LOG, NULL},
    {"rsqrt", k_unary, U_RSQRT, NULL},
    /* activations with parameters */
    {"gelu", k_gelu, 0, NULL},
    {"leaky_relu", k_act_alpha, A_LEAKY_RELU, NULL},
    {"elu", k_act_alpha, A_ELU, NULL},
    {"threshold", k_act_alpha, A_THRESHOLD, NULL},
    {"linear_activation", k_act_alpha, A_LINEAR, NULL},
    {"sigmoid_hard", k_act_alpha, A_SIGMOID_HARD, NULL},
    {"scaled_tanh", k_act_alpha, A_SCALED_TANH, NULL},
    {"clamped_relu", k_act_alpha, A_CLAMPED_RELU, NULL},
    {"softplus_parametric", k_act_alpha, A_SOFTPLUS_PARAM, NULL},
    {"prelu", k_act_alpha, A_PRELU, NULL},
    {"clip", k_clip, 0, NULL},
    {"softmax", k_softmax, 0, NULL},
    /* elementwise binary */
    {"add", k_binary, B_ADD, NULL},
    {"sub", k_binary, B_SUB, NULL},
    {"mul", k_binary, B_MUL, NULL},
    {"real_div", k_binary, B_REAL_DIV, NULL},
    {"floor_div", k_binary, B_FLOOR_DIV, NULL},
    {"mod", k_binary, B_MOD, NULL},
    {"pow", k_binary, B_POW, NULL},
    {"maximum", k_binary, B_MAXIMUM, NULL},
    {"minimum", k_binary, B_MINIMUM, NULL},
    {"equal", k_binary, B_EQUAL, NULL},
    {"not_equal", k_binary, B_NOT_EQUAL, NULL},
    {"less", k_binary, B_LESS, NULL},
    {"less_equal", k_binary, B_LESS_EQUAL, NULL},
    {"greater", k_binary, B_GREATER, NULL},
    {"greater_equal", k_binary, B_GREATER_EQUAL, NULL},
    {"logical_and", k_binary, B_AND, NULL},
    {"logical_or", k_binary, B_OR, NULL},
    {"logical_xor", k_binary, B_XOR, NULL},
    {"select", k_select, 0, NULL},
    {"cast", k_cast, 0, NULL},
    /* linear algebra, normalization */
    {"linear", k_linear, 0, NULL},
    {"matmul", k_matmul, 0, NULL},
    {"einsum", k_einsum, 0, NULL},
    {"conv", k_conv, 0, NULL},
    {"layer_norm", k_layer_norm, 0, NULL},
    {"instance_norm", k_instance_norm, 0, NULL},
    {"batch_norm", k_batch_norm, 0, NULL},
    {"scaled_dot_product_attention", k_sdpa, 0, NULL},
    /* reductions */
    {"reduce_sum", k_reduce, R_SUM, NULL},
    {"reduce_mean", k_reduce, R_MEAN, NULL},
    {"reduce_max", k_reduce, R_MAX, NULL},
    {"reduce_min", k_reduce, R_MIN, NULL},
    {"reduce_prod", k_reduce, R_PROD, NULL},
    {"reduce_l1_norm", k_reduce, R_L1_NORM, NULL},
    {"reduce_l2_norm", k_reduce, R_L2_NORM, NULL},
    {"reduce_log_sum", k_reduce, R_LOG_SUM, NULL},
    {"reduce_log_sum_exp", k_reduce, R_LOG_SUM_EXP, NULL},
    {"reduce_sum_square", k_reduce, R_SUM_SQUARE, NULL},
    {"reduce_argmax", k_reduce_arg, 0, NULL},
    {"reduce_argmin", k_reduce_arg, 1, NULL},
    /* shapes and indexing */
    {"reshape", k_reshape, 0, NULL},
    {"transpose", k_transpose, 0, NULL},
    {"expand_dims", k_expand_dims, 0, NULL},
    {"squeeze", k_squeeze, 0, NULL},
    {"identity", k_identity, 0, NULL},
    {"concat", k_concat, 0, NULL},
    {"stack", k_stack, 0, NULL},
    {"split", k_split, 0, NULL},
    {"slice_by_index", k_slice_by_index, 0, NULL},
    {"slice_by_size", k_slice_by_size, 0, NULL},
    {"gather", k_gather, 0, NULL},
    {"tile", k_tile, 0, NULL},
    {"pad", k_pad, 0, NULL},
    {"band_part", k_band_part, 0, NULL},
    {"fill", k_fill, 0, NULL},
    {"range_1d", k_range_1d, 0, NULL},
    {"upsample_nearest_neighbor", k_upsample_nn, 0, NULL},
    {"shape", k_shape, 0, NULL},
    /* compression: values, not steps */
    {"constexpr_lut_to_dense", NULL, C_LUT, constexpr_eval},
    {"constexpr_affine_dequantize", NULL, C_AFFINE, constexpr_eval},
    {"constexpr_cast", NULL, C_CAST, constexpr_eval},
    {"constexpr_sparse_to_dense", NULL, C_SPARSE, constexpr_eval},
    {"constexpr_blockwise_shift_scale", NULL, C_BLOCKWISE, constexpr_eval},
};

const iop_def *iop_find(const char *type) {
    for (size_t i = 0; i < SDC_COUNT_OF(DEFS); i++)
        if (!strcmp(DEFS[i].type, type)) return &DEFS[i];
    return NULL;
}

