"""A tiny numpy evaluator for PyMIL programs, used as a numeric oracle on Linux.

coremltools cannot run a model on Linux, but most MIL op classes carry a numpy
`value_inference` (coremltools uses it for constant folding). Feeding the program's inputs as
values and calling each op's value_inference in order evaluates the program with Apple's own
op semantics. That is independent of sdcoreml's interpreter and enough for text encoders
(gather, linear, matmul, layer_norm, softmax, gelu, sigmoid, elementwise ops, reshapes, casts,
band_part, reductions). Ops without value_inference get a numpy fallback here or raise
NotImplementedError naming the op.

fp16 tensors are computed in numpy float16, op by op, which is close to (not bit-equal with)
what a device does; compare with a PSNR threshold, never exactly.
"""

import numpy as np

_FALLBACKS = {}


def _fallback(name):
    def deco(fn):
        _FALLBACKS[name] = fn
        return fn

    return deco


@_fallback("silu")
def _silu(op):
    x = op.x.val
    return (x / (1 + np.exp(-x.astype(np.float32)))).astype(x.dtype)


@_fallback("gather_nd")
def _gather_nd(op):
    x, idx = op.x.val, op.indices.val.astype(np.int64)
    bd = op.batch_dims.val if getattr(op, "batch_dims", None) is not None else 0
    assert bd == 0, "gather_nd with batch_dims is not implemented in mil_eval"
    k = idx.shape[-1]
    flat = idx.reshape(-1, k)
    out = np.stack([x[tuple(i)] for i in flat])
    return out.reshape(idx.shape[:-1] + x.shape[k:])


def _set_val(var, value):
    sv = var.sym_type()
    sv.val = value
    var._sym_val = sv


def _ops(block):
    for op in block.operations:
        yield op


def evaluate(prog, inputs, function="main"):
    """Evaluate `prog` (a PyMIL Program) on `inputs` {name: np.ndarray}; returns
    {output name: np.ndarray}."""
    from coremltools.converters.mil.mil import types

    fn = prog.functions[function]
    for name, var in fn.inputs.items():
        if name not in inputs:
            raise KeyError(f"missing input {name!r}")
        want = types.nptype_from_builtin(var.dtype)
        _set_val(var, np.asarray(inputs[name]).astype(want).reshape(var.shape))
    for op in _ops(fn):
        if op.op_type == "const":
            continue
        if op.blocks:
            raise NotImplementedError(f"mil_eval: op {op.name} ({op.op_type}) has nested blocks")
        fb = _FALLBACKS.get(op.op_type)
        try:
            res = fb(op) if fb else op.value_inference()
        except NotImplementedError:
            raise NotImplementedError(f"mil_eval: no numpy semantics for op type {op.op_type!r} ({op.name})")
        if len(op.outputs) == 1:
            res = (res,)
        for var, val in zip(op.outputs, res):
            want = types.nptype_from_builtin(var.dtype)
            val = np.asarray(val)
            if val.dtype != want:
                val = val.astype(want)
            if var.shape and tuple(val.shape) != tuple(var.shape):
                val = val.reshape(var.shape)
            _set_val(var, val)
    return {v.name: np.asarray(v.val) for v in fn.outputs}


def psnr(ref, cand):
    """Apple's compute_psnr (reference/anchor-ml-stable-diffusion.md §13)."""
    ref = np.asarray(ref, dtype=np.float64).ravel()
    cand = np.asarray(cand, dtype=np.float64).ravel()
    max_b = np.abs(cand).max()
    rmse = np.sqrt(np.mean((ref - cand) ** 2))
    return 20 * np.log10((max_b + 1e-5) / (rmse + 1e-10))
