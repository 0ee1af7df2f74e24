"""The reference interpreter, op by op, on programs it did not write.

Each case builds a small program with coremltools' own MIL builder (`mb.program`), converts it
with `ct.convert(..., convert_to="mlprogram")` on Linux (skip_model_load), runs
`sdcoreml run` on random inputs and compares with a NumPy implementation of the op's MIL
semantics written here (reference/coreml-format.md §6 and coremltools' op definitions).

Every case runs twice: FLOAT32 (tight tolerance) and FLOAT16 (coremltools inserts casts and
stores weights as fp16; the reference then sees fp16-rounded inputs and weights and the
tolerance allows for fp16 intermediate results). FLOAT16 outputs must also be exactly
fp16-representable: the interpreter rounds every fp16 op result, as a device would.
"""

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import check_ok

import coremltools as ct  # noqa: E402  (a test requirement: never skip without it)
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

RNG_SEED = 1234


# ---------------------------------------------------------------------------------------------
# Harness


def save_program(prog, path, precision="FLOAT32", target=None):
    """Converts a PyMIL program to an .mlpackage at `path`."""
    target = target or ct.target.iOS16
    cp = ct.precision.FLOAT32 if precision == "FLOAT32" else ct.precision.FLOAT16
    m = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target, compute_precision=cp,
                   skip_model_load=True)
    if os.path.exists(path):
        shutil.rmtree(path)
    m.save(str(path))
    return m


def run_package(sdcoreml, pkg, inputs, tmp, extra=()):
    """Runs `sdcoreml run` on {name: array}; returns ([(name, array)] in output order, json)."""
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    args = ["run", str(pkg)]
    for name, arr in inputs.items():
        f = tmp / f"in_{name}.npy"
        np.save(f, arr)
        args += ["--input", f"{name}={f}"]
    out = tmp / "out"
    r = check_ok(sdcoreml(*args, "-o", out, "--json", *extra))
    doc = json.loads(r.stdout)
    return [(o["name"], np.load(o["file"])) for o in doc["outputs"]], doc


def f16(a):
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def check_close(name, got, want, precision, rtol32=1e-5, atol32=1e-5, rtol16=1e-2, atol16=None):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    scale = float(np.max(np.abs(want))) if want.size else 1.0
    if precision == "FLOAT32":
        np.testing.assert_allclose(got, want, rtol=rtol32, atol=atol32 * max(scale, 1.0), err_msg=name)
    else:
        atol = atol16 if atol16 is not None else 4e-3 * max(scale, 1e-3)
        np.testing.assert_allclose(got, want, rtol=rtol16, atol=atol, err_msg=name)


class Case:
    """One program: `build(**consts)` -> prog, inputs {name: array}, reference(inputs, consts)."""

    def __init__(self, name, specs, build, ref, consts=None, exact=False, tol=None):
        self.name = name
        self.specs = specs  # [(name, shape, kind)] kind: "f" float32 normal, "u" uniform [0,1), "i" int32
        self.build = build
        self.ref = ref
        self.consts = consts or {}
        self.exact = exact
        self.tol = tol or {}


def make_inputs(specs, rng):
    out = {}
    for name, shape, kind in specs:
        if kind == "f":
            out[name] = rng.standard_normal(shape).astype(np.float32)
        elif kind == "u":
            out[name] = (rng.random(shape) + 0.5).astype(np.float32)  # positive, for sqrt/log/pow
        elif kind == "q":  # quarters in [-8, 8): exact in fp16, and so are small multiples
            out[name] = (rng.integers(-32, 32, shape) / 4).astype(np.float32)
        elif kind.startswith("i"):
            hi = int(kind[1:] or 5)
            out[name] = rng.integers(0, hi, shape).astype(np.int32)
        else:
            raise ValueError(kind)
    return out


def tensor_specs(specs):
    return [mb.TensorSpec(shape=s, dtype=types.int32 if k.startswith("i") else types.fp32) for _, s, k in specs]


def build_prog(case, consts):
    """mb.program names the function inputs after the Python parameters, so the function is
    made with the case's input names as parameters."""
    names = [n for n, _, _ in case.specs]
    env = {"body": lambda *args: case.build(dict(zip(names, args)), consts)}
    exec(f"def main({', '.join(names)}):\n    return body({', '.join(names)})\n", env)
    return mb.program(input_specs=tensor_specs(case.specs), opset_version=ct.target.iOS16)(env["main"])


# ---------------------------------------------------------------------------------------------
# NumPy references


def np_conv(x, w, b, strides, pad_type, pad, dil, groups):
    S = x.ndim - 2
    N, C = x.shape[:2]
    Co = w.shape[0]
    K = w.shape[2:]
    pads = []
    for i in range(S):
        eff = (K[i] - 1) * dil[i] + 1
        if pad_type == "valid":
            pads.append((0, 0))
        elif pad_type == "custom":
            pads.append((pad[2 * i], pad[2 * i + 1]))
        else:
            n_in = x.shape[2 + i]
            out = -(-n_in // strides[i])
            total = max(0, (out - 1) * strides[i] + eff - n_in)
            before = total // 2 if pad_type == "same" else total - total // 2
            pads.append((before, total - before))
    xp = np.pad(x, [(0, 0), (0, 0)] + pads)
    out_sp = [(xp.shape[2 + i] - ((K[i] - 1) * dil[i] + 1)) // strides[i] + 1 for i in range(S)]
    out = np.zeros((N, Co, *out_sp), np.float64)
    cin_g, cout_g = C // groups, Co // groups
    for g in range(groups):
        xg = xp[:, g * cin_g:(g + 1) * cin_g]
        wg = w[g * cout_g:(g + 1) * cout_g]
        for kidx in np.ndindex(*K):
            sl = [slice(None), slice(None)]
            for i in range(S):
                start = kidx[i] * dil[i]
                sl.append(slice(start, start + (out_sp[i] - 1) * strides[i] + 1, strides[i]))
            patch = xg[tuple(sl)]  # N, cin_g, *out
            wk = wg[(slice(None), slice(None)) + kidx]  # cout_g, cin_g
            out[:, g * cout_g:(g + 1) * cout_g] += np.einsum("nc...,oc->no...", patch, wk)
    if b is not None:
        out += b.reshape((1, Co) + (1,) * S)
    return out


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_layer_norm(x, axes, gamma, beta, eps):
    axes = tuple(a % x.ndim for a in axes)
    m = x.mean(axis=axes, keepdims=True)
    v = ((x - m) ** 2).mean(axis=axes, keepdims=True)
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    y = (x - m) / np.sqrt(v + eps)
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y


def np_gelu(x, mode):
    if mode == "EXACT":
        return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return x / (1 + np.exp(-1.702 * x))


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Cases


def conv_case(name, xshape, wshape, strides, pad_type, pad, dil, groups, bias=True):
    def build(v, c):
        kw = dict(x=v["x"], weight=c["w"], strides=strides, pad_type=pad_type, dilations=dil, groups=groups)
        if pad_type == "custom":
            kw["pad"] = pad
        if bias:
            kw["bias"] = c["b"]
        return mb.conv(**kw)

    def ref(v, c):
        return [np_conv(v["x"].astype(np.float64), c["w"].astype(np.float64), c.get("b"), strides, pad_type, pad, dil, groups)]

    def consts(rng):
        d = {"w": rand(rng, *wshape, scale=0.3)}
        if bias:
            d["b"] = rand(rng, wshape[0])
        return d

    return Case(name, [("x", xshape, "f")], build, ref, consts)


def elementwise_cases():
    ops = {
        "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide,
        "maximum": np.maximum, "minimum": np.minimum,
    }
    cases = []
    for op, fn in ops.items():
        cases.append(Case(
            f"{op}_broadcast", [("x", (2, 1, 4, 3), "u"), ("y", (5, 1, 3), "u")],
            (lambda op: lambda v, c: getattr(mb, op)(x=v["x"], y=v["y"]))(op),
            (lambda fn: lambda v, c: [fn(v["x"].astype(np.float64), v["y"].astype(np.float64))])(fn)))
    cases.append(Case("pow", [("x", (3, 7), "u"), ("y", (7,), "f")],
                      lambda v, c: mb.pow(x=v["x"], y=v["y"]), lambda v, c: [np.power(v["x"].astype(np.float64), v["y"])]))
    cases.append(Case("add_scalar_const", [("x", (4, 5), "f")],
                      lambda v, c: mb.add(x=v["x"], y=np.float32(0.25)), lambda v, c: [v["x"] + 0.25]))
    cases.append(Case(
        "compare_select", [("x", (3, 1, 5), "f"), ("y", (4, 5), "f")],
        lambda v, c: [mb.select(cond=mb.less(x=v["x"], y=v["y"]), a=v["x"], b=v["y"]),
                      mb.select(cond=mb.greater_equal(x=v["x"], y=np.float32(0.0)), a=v["x"], b=np.float32(7.0)),
                      mb.select(cond=mb.equal(x=v["x"], y=v["x"]), a=v["x"], b=v["y"])],
        # (coremltools types select's result as broadcast(a, b) only, so cond never widens it)
        lambda v, c: [np.where(v["x"] < v["y"], v["x"], v["y"]), np.where(v["x"] >= 0, v["x"], 7.0),
                      np.broadcast_to(v["x"], (3, 4, 5))],
        exact=True))
    unary = {
        "sin": np.sin, "cos": np.cos, "exp": np.exp, "sqrt": np.sqrt, "abs": np.abs, "tanh": np.tanh,
        "sigmoid": sigmoid, "relu": lambda x: np.maximum(x, 0), "silu": lambda x: x * sigmoid(x),
        "erf": np.vectorize(math.erf), "floor": np.floor, "ceil": np.ceil, "square": np.square,
    }
    for op, fn in unary.items():
        kind = "u" if op == "sqrt" else "f"
        cases.append(Case(op, [("x", (3, 17), kind)], (lambda op: lambda v, c: getattr(mb, op)(x=v["x"]))(op),
                          (lambda fn: lambda v, c: [fn(v["x"].astype(np.float64))])(fn)))
    cases.append(Case("log_eps", [("x", (3, 9), "u")], lambda v, c: mb.log(x=v["x"], epsilon=np.float32(0.5)),
                      lambda v, c: [np.log(v["x"].astype(np.float64) + 0.5)]))
    cases.append(Case("rsqrt_eps", [("x", (3, 9), "u")], lambda v, c: mb.rsqrt(x=v["x"], epsilon=np.float32(1e-3)),
                      lambda v, c: [1 / np.sqrt(v["x"].astype(np.float64) + 1e-3)]))
    cases.append(Case("inverse", [("x", (3, 9), "u")], lambda v, c: mb.inverse(x=v["x"], epsilon=np.float32(1e-4)),
                      lambda v, c: [1 / (v["x"].astype(np.float64) + 1e-4)]))
    cases.append(Case("clip", [("x", (4, 6), "f")], lambda v, c: mb.clip(x=v["x"], alpha=np.float32(-0.5), beta=np.float32(0.7)),
                      lambda v, c: [np.clip(v["x"], -0.5, 0.7)], exact=True))
    for mode in ("EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION"):
        cases.append(Case(f"gelu_{mode}", [("x", (2, 3, 11), "f")], (lambda mode: lambda v, c: mb.gelu(x=v["x"], mode=mode))(mode),
                          (lambda mode: lambda v, c: [np_gelu(v["x"].astype(np.float64), mode)])(mode)))
    cases.append(Case("leaky_relu", [("x", (5, 4), "f")], lambda v, c: mb.leaky_relu(x=v["x"], alpha=np.float32(0.1)),
                      lambda v, c: [np.where(v["x"] >= 0, v["x"], 0.1 * v["x"])]))
    return cases


def cast_case():
    # fp32 -> int32 truncates toward zero, int32 -> fp32 back, plus an int32 input
    return Case(
        "cast", [("x", (3, 8), "q"), ("k", (3, 8), "i9")],
        lambda v, c: [mb.cast(x=mb.cast(x=mb.mul(x=v["x"], y=np.float32(3.0)), dtype="int32"), dtype="fp32"),
                      mb.cast(x=mb.add(x=v["k"], y=np.int32(2)), dtype="fp32")],
        lambda v, c: [np.trunc(v["x"] * 3.0), v["k"] + 2.0], exact=True)


def shape_cases():
    cs = []
    cs.append(Case("reshape", [("x", (2, 3, 4), "f")],
                   lambda v, c: [mb.reshape(x=v["x"], shape=[4, -1]), mb.reshape(x=v["x"], shape=[0, -1, 2]),
                                 mb.reshape(x=v["x"], shape=[0, 0, 4])],
                   lambda v, c: [v["x"].reshape(4, 6), v["x"].reshape(2, 6, 2), v["x"].reshape(2, 3, 4)], exact=True))
    cs.append(Case("transpose", [("x", (2, 3, 4, 5), "f")], lambda v, c: mb.transpose(x=v["x"], perm=[2, 0, 3, 1]),
                   lambda v, c: [v["x"].transpose(2, 0, 3, 1)], exact=True))
    cs.append(Case("expand_squeeze", [("x", (3, 1, 4), "f")],
                   lambda v, c: [mb.expand_dims(x=v["x"], axes=[0, -1]), mb.squeeze(x=v["x"], axes=[1]), mb.squeeze(x=v["x"])],
                   lambda v, c: [v["x"][None, ..., None], v["x"][:, 0], v["x"][:, 0]], exact=True))
    cs.append(Case("tile", [("x", (2, 3), "f")], lambda v, c: mb.tile(x=v["x"], reps=[3, 2]),
                   lambda v, c: [np.tile(v["x"], (3, 2))], exact=True))
    cs.append(Case("concat", [("a", (2, 3, 4), "f"), ("b", (2, 1, 4), "f"), ("c", (2, 5, 4), "f")],
                   lambda v, c: [mb.concat(values=[v["a"], v["b"], v["c"]], axis=1), mb.concat(values=[v["a"], v["a"]], axis=-1)],
                   lambda v, c: [np.concatenate([v["a"], v["b"], v["c"]], 1), np.concatenate([v["a"], v["a"]], -1)], exact=True))
    cs.append(Case("split", [("x", (4, 9, 2), "f")],
                   lambda v, c: list(mb.split(x=v["x"], num_splits=3, axis=1)) + list(mb.split(x=v["x"], split_sizes=[1, 3], axis=0)),
                   lambda v, c: list(np.split(v["x"], 3, 1)) + [v["x"][:1], v["x"][1:]], exact=True))
    cs.append(Case(
        "slice_by_index", [("x", (5, 6, 7), "f")],
        lambda v, c: [mb.slice_by_index(x=v["x"], begin=[1, 0, 6], end=[5, 6, 0], stride=[2, 1, -2]),
                      mb.slice_by_index(x=v["x"], begin=[0, -2, 1], end=[0, 0, 4], begin_mask=[True, False, False],
                                        end_mask=[True, True, False], squeeze_mask=[False, False, False]),
                      mb.slice_by_index(x=v["x"], begin=[2, 0, 0], end=[3, 6, 7], squeeze_mask=[True, False, False])],
        lambda v, c: [v["x"][1:5:2, 0:6, 6:0:-2], v["x"][:, -2:, 1:4], v["x"][2]], exact=True))
    cs.append(Case("slice_by_size", [("x", (5, 6, 7), "f")], lambda v, c: mb.slice_by_size(x=v["x"], begin=[1, 2, 0], size=[3, -1, 4]),
                   lambda v, c: [v["x"][1:4, 2:, 0:4]], exact=True))
    cs.append(Case("gather", [("x", (6, 5, 4), "f"), ("i", (2, 3), "i5")],
                   lambda v, c: [mb.gather(x=v["x"], indices=v["i"], axis=1), mb.gather(x=v["x"], indices=v["i"], axis=0)],
                   lambda v, c: [np.take(v["x"], v["i"], axis=1), np.take(v["x"], v["i"], axis=0)], exact=True))
    cs.append(Case("gather_batch_dims", [("x", (2, 5, 4), "f"), ("i", (2, 3), "i5")],
                   lambda v, c: mb.gather(x=v["x"], indices=v["i"], axis=1, batch_dims=1),
                   lambda v, c: [np.stack([np.take(v["x"][b], v["i"][b], axis=0) for b in range(2)])], exact=True))
    cs.append(Case("gather_const_table", [("i", (7,), "i50")], lambda v, c: mb.gather(x=c["t"], indices=v["i"], axis=0),
                   lambda v, c: [c["t"][v["i"]]], consts=lambda rng: {"t": rand(rng, 50, 96)}, exact=True))
    # gather_nd: indices[..., :K] address x's first K axes (after batch_dims); out = indices.shape[:-1] + x.shape[bd+K:]
    cs.append(Case("gather_nd", [("x", (5, 5, 4), "f"), ("i", (2, 3, 2), "i5"), ("j", (4, 3), "i4")],
                   lambda v, c: [mb.gather_nd(x=v["x"], indices=v["i"]), mb.gather_nd(x=v["x"], indices=v["j"])],
                   lambda v, c: [v["x"][v["i"][..., 0], v["i"][..., 1]], v["x"][v["j"][:, 0], v["j"][:, 1], v["j"][:, 2]]],
                   exact=True))
    cs.append(Case("gather_nd_batch_dims", [("x", (2, 5, 3, 4), "f"), ("i", (2, 3, 1), "i5")],
                   lambda v, c: mb.gather_nd(x=v["x"], indices=v["i"], batch_dims=1),
                   lambda v, c: [np.stack([v["x"][b][v["i"][b, :, 0]] for b in range(2)])], exact=True))
    # the text encoders' pooled row: last_hidden_state[arange(1), argmax(ids)] as torch traces it
    cs.append(Case("gather_nd_pooled_row", [("x", (1, 7, 6), "f"), ("ids", (1, 7), "i50")],
                   lambda v, c: mb.gather_nd(x=v["x"], indices=mb.stack(values=[np.array([0], np.int32),
                                                                               mb.reduce_argmax(x=v["ids"], axis=-1)], axis=1)),
                   lambda v, c: [v["x"][np.arange(1), np.argmax(v["ids"], -1)]], exact=True))
    cs.append(Case("upsample_nn", [("x", (1, 2, 3, 4), "f")],
                   lambda v, c: [mb.upsample_nearest_neighbor(x=v["x"], scale_factor_height=2, scale_factor_width=3)],
                   lambda v, c: [v["x"].repeat(2, axis=2).repeat(3, axis=3)], exact=True))
    cs.append(Case("pad", [("x", (2, 3, 4), "f")],
                   lambda v, c: [mb.pad(x=v["x"], pad=[1, 2, 0, 3], mode="constant", constant_val=np.float32(0.5)),
                                 mb.pad(x=v["x"], pad=[2, 1], mode="reflect"), mb.pad(x=v["x"], pad=[1, 1, 2, 0], mode="replicate")],
                   lambda v, c: [np.pad(v["x"], [(0, 0), (1, 2), (0, 3)], constant_values=0.5),
                                 np.pad(v["x"], [(0, 0), (0, 0), (2, 1)], mode="reflect"),
                                 np.pad(v["x"], [(0, 0), (1, 1), (2, 0)], mode="edge")], exact=True))
    cs.append(Case("band_part", [("x", (2, 5, 6), "f")],
                   lambda v, c: [mb.band_part(x=v["x"], lower=-1, upper=0), mb.band_part(x=v["x"], lower=1, upper=2)],
                   lambda v, c: [np.tril(v["x"]), np.triu(np.tril(v["x"], 2), -1)], exact=True))
    return cs


def reduce_cases():
    cs = []
    for op, fn in (("reduce_mean", np.mean), ("reduce_sum", np.sum), ("reduce_max", np.max), ("reduce_min", np.min),
                   ("reduce_prod", np.prod)):
        cs.append(Case(op, [("x", (3, 4, 5), "u")],
                       (lambda op: lambda v, c: [getattr(mb, op)(x=v["x"], axes=[0, 2], keep_dims=True),
                                                 getattr(mb, op)(x=v["x"], axes=[-1], keep_dims=False)])(op),
                       (lambda fn: lambda v, c: [fn(v["x"].astype(np.float64), axis=(0, 2), keepdims=True),
                                                 fn(v["x"].astype(np.float64), axis=-1)])(fn)))
    cs.append(Case("reduce_argmax", [("x", (3, 4, 5), "f")],
                   lambda v, c: [mb.cast(x=mb.reduce_argmax(x=v["x"], axis=1, keep_dims=False), dtype="fp32")],
                   lambda v, c: [np.argmax(v["x"], axis=1).astype(np.float32)], exact=True))
    return cs


def nn_cases():
    cs = []
    cs.append(conv_case("conv2d_3x3_same", (1, 4, 9, 8), (6, 4, 3, 3), [1, 1], "same", None, [1, 1], 1))
    cs.append(conv_case("conv2d_custom_stride_dil_groups", (2, 6, 11, 10), (4, 3, 3, 2), [2, 1], "custom", [1, 2, 0, 1], [2, 1], 2))
    cs.append(conv_case("conv2d_valid_stride", (1, 3, 10, 9), (5, 3, 4, 3), [3, 2], "valid", None, [1, 1], 1))
    cs.append(conv_case("conv2d_same_stride2", (1, 2, 9, 10), (3, 2, 3, 3), [2, 2], "same", None, [1, 1], 1))
    cs.append(conv_case("conv2d_same_lower_even", (1, 2, 7, 8), (3, 2, 2, 4), [1, 1], "same_lower", None, [1, 1], 1, bias=False))
    cs.append(conv_case("conv2d_1x1", (2, 8, 5, 6), (12, 8, 1, 1), [1, 1], "valid", None, [1, 1], 1))
    cs.append(conv_case("conv2d_depthwise", (1, 6, 8, 8), (12, 1, 3, 3), [1, 1], "same", None, [1, 1], 6))
    cs.append(conv_case("conv1d", (2, 3, 17), (4, 3, 5), [2], "custom", [2, 1], [2], 1))
    # more im2col columns (18 x 1.05M) than one 64 MiB buffer holds: cut in tiles that start and end
    # inside output lines
    cs.append(conv_case("conv2d_tiled_columns", (1, 2, 701, 1499), (3, 2, 3, 3), [1, 1], "same", None, [2, 1], 1))

    cs.append(Case("matmul_broadcast_transpose", [("x", (2, 1, 3, 4), "f"), ("y", (3, 5, 4), "f")],
                   lambda v, c: mb.matmul(x=v["x"], y=v["y"], transpose_y=True),
                   lambda v, c: [np.matmul(v["x"].astype(np.float64), np.swapaxes(v["y"], -1, -2))]))
    cs.append(Case("matmul_transpose_x", [("x", (2, 6, 3), "f"), ("y", (2, 6, 5), "f")],
                   lambda v, c: mb.matmul(x=v["x"], y=v["y"], transpose_x=True),
                   lambda v, c: [np.matmul(np.swapaxes(v["x"].astype(np.float64), -1, -2), v["y"])]))
    # (coremltools' matmul accepts a 1-D x, not a 1-D y; it mistypes a 1-D x against batched y)
    cs.append(Case("matmul_1d", [("x", (7,), "f"), ("y", (7, 4), "f")],
                   lambda v, c: mb.matmul(x=v["x"], y=v["y"]), lambda v, c: [np.matmul(v["x"].astype(np.float64), v["y"])]))
    cs.append(Case("matmul_const_weight", [("x", (2, 5, 6), "f")], lambda v, c: mb.matmul(x=v["x"], y=c["w"]),
                   lambda v, c: [np.matmul(v["x"].astype(np.float64), c["w"])], consts=lambda rng: {"w": rand(rng, 6, 3)}))
    cs.append(Case("linear", [("x", (2, 5, 7), "f")], lambda v, c: mb.linear(x=v["x"], weight=c["w"], bias=c["b"]),
                   lambda v, c: [v["x"].astype(np.float64) @ c["w"].T.astype(np.float64) + c["b"]],
                   consts=lambda rng: {"w": rand(rng, 3, 7), "b": rand(rng, 3)}))
    cs.append(Case("linear_large", [("x", (1, 77, 96), "f")], lambda v, c: mb.linear(x=v["x"], weight=c["w"], bias=c["b"]),
                   lambda v, c: [v["x"].astype(np.float64) @ c["w"].T.astype(np.float64) + c["b"]],
                   consts=lambda rng: {"w": rand(rng, 130, 96, scale=0.1), "b": rand(rng, 130)}))
    cs.append(Case("einsum_nchw", [("a", (2, 3, 4, 5), "f"), ("b", (1, 5, 4, 6), "f")],
                   lambda v, c: mb.einsum(values=(v["a"], v["b"]), equation="bchk,bkhq->bchq"),
                   lambda v, c: [np.einsum("nchw,nwhu->nchu", v["a"].astype(np.float64), np.broadcast_to(v["b"], (2, 5, 4, 6)))]))
    cs.append(Case("einsum_chw", [("a", (3, 1, 5), "f"), ("b", (5, 4, 2), "f")],
                   lambda v, c: mb.einsum(values=(v["a"], v["b"]), equation="chw,whr->chr"),
                   lambda v, c: [np.einsum("chw,whr->chr", np.broadcast_to(v["a"], (3, 4, 5)).astype(np.float64), v["b"])]))
    cs.append(Case("softmax", [("x", (2, 3, 4, 5), "f")],
                   lambda v, c: [mb.softmax(x=v["x"], axis=1), mb.softmax(x=v["x"], axis=-1)],
                   lambda v, c: [np_softmax(v["x"].astype(np.float64), 1), np_softmax(v["x"].astype(np.float64), -1)]))
    # a strided softmax wider than one column block (256), and results written in place: the
    # second softmax and the add read their first input last
    cs.append(Case("softmax_wide", [("x", (2, 9, 1, 600), "f")],
                   lambda v, c: [mb.softmax(x=v["x"], axis=1), mb.add(x=mb.softmax(x=v["x"], axis=-1), y=v["x"])],
                   lambda v, c: [np_softmax(v["x"].astype(np.float64), 1),
                                 np_softmax(v["x"].astype(np.float64), -1) + v["x"]]))
    # attention's product -> softmax -> product, large enough (Sq = Sk = 260 keys, not a multiple of
    # the interpreter's 64-query blocks; 4 MFLOP per product) that the interpreter runs the three
    # ops as one, block by block: SPLIT_EINSUM's per-head form and ORIGINAL's
    cs.append(Case("attention_split_einsum", [("kt", (2, 260, 1, 32), "f"), ("q", (2, 32, 1, 260), "f"),
                                              ("v", (2, 40, 1, 260), "f")],
                   lambda v, c: mb.einsum(values=(v["v"], mb.softmax(x=mb.einsum(values=(v["kt"], v["q"]),
                                                                                 equation="bchk,bkhq->bchq"), axis=1)),
                                          equation="nchw,nwhu->nchu"),
                   lambda v, c: [np.einsum("nchw,nwhu->nchu", v["v"].astype(np.float64), np_softmax(
                       np.einsum("nchw,nwhu->nchu", v["kt"].astype(np.float64), v["q"].astype(np.float64)), 1))]))
    cs.append(Case("attention_original", [("q", (1, 2, 32, 260), "f"), ("k", (1, 2, 32, 260), "f"),
                                          ("v", (1, 2, 40, 260), "f")],
                   lambda v, c: mb.matmul(x=v["v"], y=mb.softmax(x=mb.matmul(x=v["q"], y=v["k"], transpose_x=True),
                                                                 axis=-1), transpose_y=True),
                   lambda v, c: [v["v"].astype(np.float64) @ np.swapaxes(np_softmax(
                       np.swapaxes(v["q"].astype(np.float64), -1, -2) @ v["k"].astype(np.float64), -1), -1, -2)]))
    # the same with the anchor's scale of the weights (a mul by a scalar after the first product,
    # either operand order), which the interpreter runs inside the fused op
    cs.append(Case("attention_split_einsum_scaled", [("kt", (2, 260, 1, 32), "f"), ("q", (2, 32, 1, 260), "f"),
                                                     ("v", (2, 40, 1, 260), "f")],
                   lambda v, c: mb.einsum(values=(v["v"], mb.softmax(x=mb.mul(x=mb.einsum(values=(v["kt"], v["q"]),
                                                                                          equation="bchk,bkhq->bchq"),
                                                                              y=np.float32(0.17677669)), axis=1)),
                                          equation="nchw,nwhu->nchu"),
                   lambda v, c: [np.einsum("nchw,nwhu->nchu", v["v"].astype(np.float64), np_softmax(
                       np.einsum("nchw,nwhu->nchu", v["kt"].astype(np.float64), v["q"].astype(np.float64)) * 0.17677669, 1))]))
    cs.append(Case("attention_original_scaled", [("q", (1, 2, 32, 260), "f"), ("k", (1, 2, 32, 260), "f"),
                                                 ("v", (1, 2, 40, 260), "f")],
                   lambda v, c: mb.matmul(x=v["v"], y=mb.softmax(x=mb.mul(x=np.float32(0.5), y=mb.matmul(
                       x=v["q"], y=v["k"], transpose_x=True)), axis=-1), transpose_y=True),
                   lambda v, c: [v["v"].astype(np.float64) @ np.swapaxes(np_softmax(
                       0.5 * (np.swapaxes(v["q"].astype(np.float64), -1, -2) @ v["k"].astype(np.float64)), -1), -1, -2)]))
    cs.append(Case("layer_norm", [("x", (2, 7, 6), "f")],
                   lambda v, c: [mb.layer_norm(x=v["x"], axes=[-1], gamma=c["g"], beta=c["b"], epsilon=np.float32(1e-5)),
                                 mb.layer_norm(x=v["x"], axes=[0, 2], epsilon=np.float32(1e-3))],
                   lambda v, c: [np_layer_norm(v["x"].astype(np.float64), [-1], c["g"], c["b"], 1e-5),
                                 np_layer_norm(v["x"].astype(np.float64), [0, 2], None, None, 1e-3)],
                   consts=lambda rng: {"g": rand(rng, 6), "b": rand(rng, 6)}))
    # over the channels of (B, C, 1, S), as SPLIT_EINSUM's transformer blocks normalise: 70
    # positions per batch item side by side in runs of 64, then a tail of 6 one by one
    cs.append(Case("layer_norm_channels", [("x", (2, 12, 1, 70), "f")],
                   lambda v, c: mb.layer_norm(x=v["x"], axes=[1], gamma=c["g"], beta=c["b"], epsilon=np.float32(1e-5)),
                   lambda v, c: [np_layer_norm(v["x"].astype(np.float64), [1], c["g"].reshape(1, 12, 1, 1),
                                               c["b"].reshape(1, 12, 1, 1), 1e-5)],
                   consts=lambda rng: {"g": rand(rng, 12), "b": rand(rng, 12)}))
    cs.append(Case("instance_norm", [("x", (2, 3, 5, 4), "f")],
                   lambda v, c: mb.instance_norm(x=v["x"], gamma=c["g"], beta=c["b"], epsilon=np.float32(1e-5)),
                   lambda v, c: [np_layer_norm(v["x"].astype(np.float64), [2, 3], None, None, 1e-5) * c["g"].reshape(1, 3, 1, 1)
                                 + c["b"].reshape(1, 3, 1, 1)],
                   consts=lambda rng: {"g": rand(rng, 3), "b": rand(rng, 3)}))
    cs.append(Case("batch_norm", [("x", (2, 3, 4, 2), "f")],
                   lambda v, c: mb.batch_norm(x=v["x"], mean=c["m"], variance=c["v"], gamma=c["g"], beta=c["b"], epsilon=np.float32(1e-3)),
                   lambda v, c: [(v["x"] - c["m"].reshape(1, 3, 1, 1)) / np.sqrt(c["v"].reshape(1, 3, 1, 1) + 1e-3)
                                 * c["g"].reshape(1, 3, 1, 1) + c["b"].reshape(1, 3, 1, 1)],
                   consts=lambda rng: {"m": rand(rng, 3), "v": np.abs(rand(rng, 3)) + 0.5, "g": rand(rng, 3), "b": rand(rng, 3)}))
    # group norm as coremltools lowers it: reshape, reduce_mean, variance, normalise, affine
    def gn_build(v, c):
        x = mb.reshape(x=v["x"], shape=[2, 2, 3, 4, 5])
        m = mb.reduce_mean(x=x, axes=[2, 3, 4], keep_dims=True)
        d = mb.sub(x=x, y=m)
        var = mb.reduce_mean(x=mb.mul(x=d, y=d), axes=[2, 3, 4], keep_dims=True)
        y = mb.real_div(x=d, y=mb.sqrt(x=mb.add(x=var, y=np.float32(1e-5))))
        return mb.add(x=mb.mul(x=mb.reshape(x=y, shape=[2, 6, 4, 5]), y=c["g"]), y=c["b"])

    def gn_ref(v, c):
        x = v["x"].astype(np.float64).reshape(2, 2, 3, 4, 5)
        y = np_layer_norm(x, [2, 3, 4], None, None, 1e-5).reshape(2, 6, 4, 5)
        return [y * c["g"] + c["b"]]

    cs.append(Case("group_norm_lowered", [("x", (2, 6, 4, 5), "f")], gn_build, gn_ref,
                   consts=lambda rng: {"g": rand(rng, 1, 6, 1, 1), "b": rand(rng, 1, 6, 1, 1)}))
    return cs


CASES = elementwise_cases() + [cast_case()] + shape_cases() + reduce_cases() + nn_cases()


def case_consts(case, rng):
    if callable(case.consts):
        return case.consts(rng)
    return dict(case.consts)


def round_consts_fp16(consts):
    return {k: f16(v) if v.dtype == np.float32 else v for k, v in consts.items()}


@pytest.mark.parametrize("precision", ["FLOAT32", "FLOAT16"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_op(sdcoreml, tmp_path, case, precision):
    rng = np.random.default_rng(RNG_SEED)
    consts = case_consts(case, rng)
    inputs = make_inputs(case.specs, rng)
    prog = build_prog(case, consts)
    pkg = tmp_path / f"{case.name}.mlpackage"
    save_program(prog, pkg, precision)
    # the converted model's input names (the builder names them after the lambda's parameters)
    spec = ct.utils.load_spec(str(pkg))
    in_names = [i.name for i in spec.description.input]
    feed = dict(zip(in_names, inputs.values()))
    got, _ = run_package(sdcoreml, pkg, feed, tmp_path / "run")
    ref_in = inputs
    ref_consts = consts
    if precision == "FLOAT16":
        # the program sees fp16-rounded inputs and weights
        ref_in = {k: f16(v) if v.dtype == np.float32 else v for k, v in inputs.items()}
        ref_consts = round_consts_fp16(consts)
    want = case.ref(ref_in, ref_consts)
    assert len(got) == len(want), f"{len(got)} outputs, expected {len(want)}"
    for (name, g), w in zip(got, want):
        w = np.asarray(w)
        if precision == "FLOAT16":
            assert np.array_equal(f16(g), g.astype(np.float32)), f"{name}: an fp16 program produced values that are not fp16"
        if case.exact and precision == "FLOAT32":
            assert np.array_equal(g, w.astype(g.dtype)), f"{case.name} {name}: not exact"
        else:
            check_close(f"{case.name} {name}", g, w, precision)


# ---------------------------------------------------------------------------------------------
# Sizes only the run knows: non_zero and scatter_nd (the safety checker's `images[mask] = 0.0`)


@pytest.mark.parametrize("flagged", ["some", "none", "all"])
@pytest.mark.parametrize("precision", ["FLOAT32", "FLOAT16"])
def test_non_zero_and_scatter_nd(sdcoreml, tmp_path, flagged, precision):
    """non_zero's [?, rank] coordinates and scatter_nd writing that many updates, against NumPy
    (argwhere, where, add), with no element set (an empty non_zero: nothing is written), some,
    and all. The updates are gathered from y at the same coordinates, or are zeros tiled by the
    count read back through shape / rank-0 slice / concat (tile with 0 reps when nothing is
    set), so their number is the run's too; x and y are fp16-exact, so `update` is exact in
    both precisions."""
    rng = np.random.default_rng(RNG_SEED)
    shape = (2, 3, 4)
    x, y = f16(rng.standard_normal(shape)), f16(rng.standard_normal(shape))
    mask = {"some": rng.integers(0, 2, shape), "none": np.zeros(shape), "all": np.ones(shape)}[flagged].astype(np.int32)

    @mb.program(input_specs=[mb.TensorSpec(shape=shape), mb.TensorSpec(shape=shape), mb.TensorSpec(shape=shape, dtype=types.int32)],
                opset_version=ct.target.iOS16)
    def prog(x, y, m):
        where = mb.non_zero(x=m)
        picked = mb.gather_nd(x=y, indices=where)
        # the count as coremltools lowers torch's `x[mask] = 0.0`: shape, a rank-0 slice, a
        # concat of it, tile by that (0 reps when nothing is set)
        count = mb.concat(values=[mb.slice_by_index(x=mb.shape(x=where), begin=[0], end=[0], squeeze_mask=[True])], axis=0)
        zeros = mb.tile(x=np.zeros(1, np.float32), reps=count)
        return (where, mb.scatter_nd(data=x, indices=where, updates=picked, mode="update"),
                mb.scatter_nd(data=x, indices=where, updates=picked, mode="add"),
                mb.scatter_nd(data=x, indices=where, updates=zeros, mode="update"))

    pkg = tmp_path / "scatter.mlpackage"
    save_program(prog, pkg, precision)
    names = [d.name for d in ct.utils.load_spec(str(pkg)).description.input]
    got, _ = run_package(sdcoreml, pkg, dict(zip(names, (x, y, mask))), tmp_path / "run")
    coords, updated, added, zeroed = (g for _, g in got)
    want = np.argwhere(mask)
    assert coords.shape == want.shape and np.array_equal(coords, want), (coords, want)
    assert np.array_equal(updated, np.where(mask != 0, y, x))
    add = np.where(mask != 0, x + y, x)
    check_close("scatter_nd add", added, f16(add) if precision == "FLOAT16" else add, precision)
    assert np.array_equal(zeroed, np.where(mask != 0, 0, x))


def test_scatter_nd_index_out_of_range_is_named(sdcoreml, tmp_path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(3, 4)), mb.TensorSpec(shape=(2, 1), dtype=types.int32)],
                opset_version=ct.target.iOS16)
    def prog(x, i):
        return mb.scatter_nd(data=x, indices=i, updates=np.zeros((2, 4), np.float32), mode="update", name="my_rows")

    pkg = tmp_path / "snd.mlpackage"
    save_program(prog, pkg)
    names = [d.name for d in ct.utils.load_spec(str(pkg)).description.input]
    np.save(tmp_path / "x.npy", np.zeros((3, 4), np.float32))
    np.save(tmp_path / "i.npy", np.array([[0], [3]], np.int32))  # row 3 of 3
    r = sdcoreml("run", pkg, "--input", f"{names[0]}={tmp_path / 'x.npy'}", "--input", f"{names[1]}={tmp_path / 'i.npy'}",
                 "-o", tmp_path / "o")
    assert r.returncode == 1 and "scatter_nd" in r.stderr and "my_rows" in r.stderr and "outside" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# run --profile: time and matrix-product FLOPs per op type


def test_profile_counts_matrix_products(sdcoreml, tmp_path):
    """--profile's FLOPs are 2·M·N·K of each product, from the shapes (NumPy's arithmetic); the
    scaled attention runs as one fused op (no einsum, mul or softmax left); times add up to at
    most the predict time."""
    rng = np.random.default_rng(3)
    cw = rand(rng, 6, 4, 3, 3)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 260, 1, 32)), mb.TensorSpec(shape=(2, 32, 1, 260)),
                             mb.TensorSpec(shape=(2, 40, 1, 260)), mb.TensorSpec(shape=(2, 4, 9, 7))],
                opset_version=ct.target.iOS16)
    def prog(kt, q, v, x):
        w = mb.mul(x=mb.einsum(values=(kt, q), equation="bchk,bkhq->bchq"), y=np.float32(0.125))
        a = mb.einsum(values=(v, mb.softmax(x=w, axis=1)), equation="nchw,nwhu->nchu")
        return a, mb.conv(x=x, weight=cw, strides=[2, 1], pad_type="same")

    pkg = tmp_path / "profile.mlpackage"
    save_program(prog, pkg, "FLOAT16")
    names = [i.name for i in ct.utils.load_spec(str(pkg)).description.input]
    shapes = [(2, 260, 1, 32), (2, 32, 1, 260), (2, 40, 1, 260), (2, 4, 9, 7)]
    _, doc = run_package(sdcoreml, pkg, {n: rand(rng, *s) for n, s in zip(names, shapes)}, tmp_path / "run",
                         extra=("--profile",))
    prof = doc["profile"]
    att = prof["attention (fused)"]
    assert att["calls"] == 1 and att["flops"] == 2 * 2 * 260 * 260 * (32 + 40), att
    out_positions = 5 * 7  # ceil(9 / 2) x 7 with "same" padding
    assert prof["conv"]["calls"] == 1 and prof["conv"]["flops"] == 2 * 2 * 6 * out_positions * (4 * 3 * 3), prof["conv"]
    assert not {"einsum", "mul", "softmax"} & prof.keys(), sorted(prof)
    assert all(row["seconds"] >= 0 for row in prof.values())
    assert sum(row["seconds"] for row in prof.values()) <= doc["predict_seconds"] * 1.01 + 1e-3
    assert all(row["flops"] == 0 for k, row in prof.items() if k not in ("conv", "attention (fused)")), prof


def rewire_input(pkg, op_type, param, to_name):
    """Points input `param` of the program's `op_type` op at the value named `to_name` (a
    malformed package coremltools' builder would not write), in place."""
    spec = ct.utils.load_spec(str(pkg))
    block = next(iter(spec.mlProgram.functions["main"].block_specializations.values()))
    for op in block.operations:
        if op.type == op_type:
            op.inputs[param].arguments[0].name = to_name
    (Path(pkg) / "Data/com.apple.CoreML/model.mlmodel").write_bytes(spec.SerializeToString())


@pytest.mark.parametrize("dtype", ["fp32", "int32"])
def test_string_value_as_tensor_input_is_refused(sdcoreml, tmp_path, dtype):
    """scatter_nd's `updates` wired to the string const `mode`: one line naming the op and the
    input, exit 1 (it crashed on int32 data: the kernel read the string's absent numbers)."""
    np_t, mil_t = (np.float32, types.fp32) if dtype == "fp32" else (np.int32, types.int32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(3, 4), dtype=mil_t)], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.scatter_nd(data=x, indices=np.array([1, 2], np.int32), updates=np_t(5), mode="update",
                             name="my_scatter")

    pkg = tmp_path / "snd.mlpackage"
    save_program(prog, pkg)
    spec = ct.utils.load_spec(str(pkg))
    block = next(iter(spec.mlProgram.functions["main"].block_specializations.values()))
    mode = next(o.outputs[0].name for o in block.operations
                if o.type == "const" and o.attributes["val"].immediateValue.HasField("tensor")
                and o.attributes["val"].type.tensorType.dataType == ct.proto.MIL_pb2.STRING)
    rewire_input(pkg, "scatter_nd", "updates", mode)
    name = spec.description.input[0].name
    np.save(tmp_path / "x.npy", np.zeros((3, 4), np_t))
    r = sdcoreml("run", pkg, "--input", f"{name}={tmp_path / 'x.npy'}", "-o", tmp_path / "o")
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "my_scatter" in r.stderr and "'updates'" in r.stderr and "string" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists(), r.stderr


def tile_runtime_reps_package(tmp_path):
    """tile of a (1, 1) const by reps read from input `reps` (int32) — or, rewired, from the
    float input `freps` (a malformed package): the output's size is the run's."""
    @mb.program(input_specs=[mb.TensorSpec(shape=(2,), dtype=types.int32), mb.TensorSpec(shape=(2,))],
                opset_version=ct.target.iOS16)
    def prog(reps, freps):
        return mb.tile(x=np.ones((1, 1), np.float32), reps=reps, name="my_tile"), mb.add(x=freps, y=np.float32(0))

    pkg = tmp_path / "tile.mlpackage"
    save_program(prog, pkg)
    return pkg, [d.name for d in ct.utils.load_spec(str(pkg)).description.input]


def run_tile(sdcoreml, tmp_path, pkg, names, reps, freps=(1.0, 1.0)):
    np.save(tmp_path / "r.npy", np.array(reps, np.int32))
    np.save(tmp_path / "f.npy", np.array(freps, np.float32))
    out = tmp_path / f"o{len(list(tmp_path.iterdir()))}"
    return sdcoreml("run", pkg, "--input", f"{names[0]}={tmp_path / 'r.npy'}", "--input",
                    f"{names[1]}={tmp_path / 'f.npy'}", "-o", out), out


def assert_one_line_error(r, out, *words):
    assert r.returncode == 1 and all(w in r.stderr for w in words), (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists(), r.stderr


def test_runtime_sized_output_limits(sdcoreml, tmp_path):
    """Sizes from run-time data: a shape no tensor holds is "too large" (not "out of memory");
    one over the run-time budget (1 GiB here: the graph's static tensors are tiny) is refused
    naming op and output; a size that fits runs and equals np.tile."""
    pkg, names = tile_runtime_reps_package(tmp_path)
    r, out = run_tile(sdcoreml, tmp_path, pkg, names, [2, 3])
    check_ok(r)
    assert np.array_equal(np.load(next(out.glob("my_tile*.npy"))), np.tile(np.ones((1, 1), np.float32), (2, 3)))
    r, out = run_tile(sdcoreml, tmp_path, pkg, names, [2 ** 31 - 1, 2 ** 31 - 1])
    assert_one_line_error(r, out, "my_tile", "too large")
    assert "out of memory" not in r.stderr, r.stderr
    r, out = run_tile(sdcoreml, tmp_path, pkg, names, [20000, 20000])  # 1.5 GiB of float32
    assert_one_line_error(r, out, "my_tile", "run-time shape [20000, 20000]", "1024 MiB")


@pytest.mark.parametrize("bad", [float("nan"), 1e30, 2.5])
def test_float_reps_must_be_int32_values(sdcoreml, tmp_path, bad):
    """A float vector wired into an integer list (tile's reps): NaN, 1e30 or 2.5 is refused
    naming the op and the input rather than becoming an arbitrary size."""
    pkg, names = tile_runtime_reps_package(tmp_path)
    rewire_input(pkg, "tile", "reps", names[1])
    r, out = run_tile(sdcoreml, tmp_path, pkg, names, [1, 1], freps=(2.0, bad))
    assert_one_line_error(r, out, "my_tile", "'reps'", "int32 value")


# ---------------------------------------------------------------------------------------------
# fp16 rounding of every op result


def test_fp16_results_are_rounded(sdcoreml, tmp_path):
    """In an fp16 program, 1 + 2^-12 + 2^-12 is 1 (each add rounds to fp16), not 1 + 2^-11."""
    x = np.full((1, 8), 1.0, np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8))], opset_version=ct.target.iOS16)
    def prog(x):
        h = mb.cast(x=x, dtype="fp16")
        a = mb.add(x=h, y=np.float16(2 ** -12))
        b = mb.add(x=a, y=np.float16(2 ** -12))
        return mb.cast(x=b, dtype="fp32")

    pkg = tmp_path / "round.mlpackage"
    save_program(prog, pkg, "FLOAT32")
    name = ct.utils.load_spec(str(pkg)).description.input[0].name
    got, _ = run_package(sdcoreml, pkg, {name: x}, tmp_path / "run")
    assert np.all(got[0][1] == 1.0), got[0][1]


@pytest.mark.parametrize("mover", ["reshape", "transpose", "concat"])
def test_moved_values_are_rounded_unless_already_fp16(sdcoreml, tmp_path, mover):
    """Ops that only move values skip the fp16 rounding of their output when what they move is
    fp16 already (then it cannot change anything). Rewired to read the fp32 input, whose
    1 + 2^-12 is not an fp16 value, the same op's fp16 output must still be rounded to 1."""
    x = np.full((1, 8), 1.0 + 2 ** -12, np.float32)
    move = {"reshape": lambda h: mb.reshape(x=h, shape=[8, 1], name="mover"),
            "transpose": lambda h: mb.transpose(x=h, perm=[1, 0], name="mover"),
            "concat": lambda h: mb.concat(values=[h], axis=0, name="mover")}[mover]

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8))], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.cast(x=move(mb.cast(x=x, dtype="fp16")), dtype="fp32")

    pkg = tmp_path / "moved.mlpackage"
    save_program(prog, pkg, "FLOAT32")
    name = ct.utils.load_spec(str(pkg)).description.input[0].name
    got, _ = run_package(sdcoreml, pkg, {name: x}, tmp_path / "run")
    assert np.all(got[0][1] == 1.0), got[0][1]  # fp16 in, fp16 out: moved as is
    rewire_input(pkg, mover, "values" if mover == "concat" else "x", name)
    got, _ = run_package(sdcoreml, pkg, {name: x}, tmp_path / "rewired")
    assert np.all(got[0][1] == 1.0), got[0][1]


# ---------------------------------------------------------------------------------------------
# GroupNorm's standardisation as SD graphs lower it (reduce_mean, sub, square, reduce_mean, add,
# sqrt, real_div) runs fused (interp/fuse_norm.c): bit-identical to the ops one by one, which
# run when an intermediate value is also an output (the fusion then does not apply)


def gn_chain_program(shape, groups, expose_square, silu=False):
    B, C, H, W = shape
    grouped = [B, groups, C // groups, H, W]

    @mb.program(input_specs=[mb.TensorSpec(shape=shape)], opset_version=ct.target.iOS16)
    def prog(x):
        h = mb.reshape(x=x, shape=grouped)
        mean = mb.reduce_mean(x=h, axes=[2, 3, 4], keep_dims=True)
        dev = mb.sub(x=h, y=mean)
        sq = mb.square(x=dev)
        var = mb.reduce_mean(x=sq, axes=[2, 3, 4], keep_dims=True)
        y = mb.reshape(x=mb.real_div(x=dev, y=mb.sqrt(x=mb.add(x=var, y=np.float32(1e-5)))), shape=list(shape))
        y = mb.silu(x=y) if silu else y  # a ResNet block's norm → activation
        return (y, mb.reduce_sum(x=sq, axes=[0, 1, 2, 3, 4])) if expose_square else y

    return prog


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("precision", ["FLOAT32", "FLOAT16"])
def test_group_norm_chain_fused_is_bit_identical(sdcoreml, tmp_path, precision, silu):
    # 3·37·61 = 6771 values per group: several of the fused kernel's blocks and a tail of 3
    # after its 8-wide partial sums; values off-centre and spread, as activations are. With a
    # silu after it, the silu is computed by the fused op too (its profile row says so).
    shape, groups = (1, 6, 37, 61), 2
    rng = np.random.default_rng(RNG_SEED)
    x = (rng.standard_normal(shape) * 3.0 + 1.5).astype(np.float32)
    outs = {}
    for expose in (False, True):
        pkg = tmp_path / f"gn-{expose}.mlpackage"
        save_program(gn_chain_program(shape, groups, expose, silu), pkg, precision)
        ops = {op.type for op in ct.utils.load_spec(str(pkg)).mlProgram.functions["main"].block_specializations.values()
               for op in op.operations}
        assert {"reduce_mean", "sub", "square", "add", "sqrt", "real_div"} <= ops, ops
        name = ct.utils.load_spec(str(pkg)).description.input[0].name
        got, doc = run_package(sdcoreml, pkg, {name: x}, tmp_path / f"run-{expose}", extra=("--profile",))
        outs[expose] = got[0][1]
        fused = {k for k in doc["profile"] if "fused" in k}
        assert fused == (set() if expose else {"group norm + silu (fused)" if silu else "group norm (fused)"}), fused
    assert np.array_equal(outs[False], outs[True]), "fused and unfused group norm differ"
    # and both against float64 NumPy on the rounded input
    xin = f16(x) if precision == "FLOAT16" else x
    want = np_layer_norm(xin.astype(np.float64).reshape(1, groups, -1), [2], None, None, 1e-5).reshape(shape)
    if silu:
        want = f16(want) if precision == "FLOAT16" else want  # the norm's result is rounded before the silu
        want = want / (1.0 + np.exp(-want))
    check_close("group norm", outs[False], want, precision)
    if precision == "FLOAT16":
        assert np.array_equal(f16(outs[False]), outs[False].astype(np.float32))


# ---------------------------------------------------------------------------------------------
# GEGLU's split → gelu → mul runs fused (interp/fuse_geglu.c): bit-identical to the three ops,
# which run when a half is also an output (the fusion then does not apply)


def geglu_program(shape, gated, gelu_first, mode, expose_half):
    @mb.program(input_specs=[mb.TensorSpec(shape=shape)], opset_version=ct.target.iOS16)
    def prog(x):
        halves = mb.split(x=x, num_splits=2, axis=1)
        g = mb.gelu(x=halves[gated], mode=mode)
        y = mb.mul(x=g, y=halves[1 - gated]) if gelu_first else mb.mul(x=halves[1 - gated], y=g)
        return (y, mb.reduce_sum(x=halves[0], axes=[0, 1, 2, 3])) if expose_half else y

    return prog


@pytest.mark.parametrize("gated,gelu_first,mode", [(1, False, "EXACT"), (0, True, "TANH_APPROXIMATION")])
@pytest.mark.parametrize("precision", ["FLOAT32", "FLOAT16"])
def test_geglu_fused_is_bit_identical(sdcoreml, tmp_path, precision, gated, gelu_first, mode):
    # (2, 2·6, 1, 1500): 1500 values per half and batch item, more than one of the fused
    # kernel's blocks of 1024 and a tail; the gated half either one, the mul's operands in
    # either order
    shape = (2, 12, 1, 1500)
    x = (np.random.default_rng(RNG_SEED).standard_normal(shape) * 2.0).astype(np.float32)
    outs = {}
    for expose in (False, True):
        pkg = tmp_path / f"geglu-{expose}.mlpackage"
        save_program(geglu_program(shape, gated, gelu_first, mode, expose), pkg, precision)
        name = ct.utils.load_spec(str(pkg)).description.input[0].name
        got, doc = run_package(sdcoreml, pkg, {name: x}, tmp_path / f"run-{expose}", extra=("--profile",))
        outs[expose] = got[0][1]
        fused = {k for k in doc["profile"] if "fused" in k}
        assert fused == (set() if expose else {"split + gelu + mul (fused)"}), fused
    assert np.array_equal(outs[False], outs[True]), "fused and unfused GEGLU differ"
    xin = (f16(x) if precision == "FLOAT16" else x).astype(np.float64)
    a, b = xin[:, :6], xin[:, 6:]
    g = np_gelu(b if gated else a, mode)
    g = f16(g) if precision == "FLOAT16" else g  # the gelu's result is rounded before the product
    check_close("geglu", outs[False], (a if gated else b) * g, precision)
    if precision == "FLOAT16":
        assert np.array_equal(f16(outs[False]), outs[False].astype(np.float32))


# ---------------------------------------------------------------------------------------------
# Compressed weights: coremltools' own palettization / quantization vs its own decompression


def compress_model(kind, m):
    import coremltools.optimize.coreml as cto

    if kind == "palettize":
        cfg = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="uniform", nbits=4, weight_threshold=16))
        return cto.palettize_weights(m, cfg)
    cfg = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear", dtype="int8", weight_threshold=16))
    return cto.linear_quantize_weights(m, cfg)


@pytest.mark.parametrize("target", ["iOS16", "iOS18"])
@pytest.mark.parametrize("kind", ["palettize", "quantize"])
def test_compressed_weights(sdcoreml, tmp_path, kind, target):
    import coremltools.optimize.coreml as cto

    rng = np.random.default_rng(7)
    w = rand(rng, 24, 40)
    cw = rand(rng, 8, 4, 3, 3)
    tgt = getattr(ct.target, target)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 40)), mb.TensorSpec(shape=(1, 4, 6, 6))], opset_version=tgt)
    def prog(x, y):
        return mb.linear(x=x, weight=w), mb.conv(x=y, weight=cw, pad_type="same")

    m = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=tgt, compute_precision=ct.precision.FLOAT32,
                   skip_model_load=True)
    cm = compress_model(kind, m)
    ops = {op.type for op in cm.get_spec().mlProgram.functions["main"].block_specializations[
        next(iter(cm.get_spec().mlProgram.functions["main"].block_specializations))].operations}
    assert any(t.startswith("constexpr_") for t in ops), ops
    dm = cto.decompress_weights(cm)
    p1, p2 = tmp_path / "compressed.mlpackage", tmp_path / "dense.mlpackage"
    cm.save(str(p1))
    dm.save(str(p2))
    names = [i.name for i in ct.utils.load_spec(str(p1)).description.input]
    feed = {names[0]: rand(rng, 2, 40), names[1]: rand(rng, 1, 4, 6, 6)}
    a, _ = run_package(sdcoreml, p1, feed, tmp_path / "r1")
    b, _ = run_package(sdcoreml, p2, feed, tmp_path / "r2")
    for (na, ga), (nb, gb) in zip(a, b):
        np.testing.assert_allclose(ga, gb, rtol=1e-5, atol=1e-5, err_msg=f"{kind} {target} {na}")


@pytest.mark.parametrize("masked", [False, True])
def test_scaled_dot_product_attention(sdcoreml, tmp_path, masked):
    """iOS 18's scaled_dot_product_attention (which coremltools writes for torch's SDPA; our
    builders never do) against NumPy: softmax(QKᵀ/sqrt(E) + mask)·V, float32. The mask is a
    float additive mask."""
    rng = np.random.default_rng(11)
    q, k, v = rand(rng, 2, 3, 7, 8), rand(rng, 2, 3, 5, 8), rand(rng, 2, 3, 5, 6)
    mask = rand(rng, 7, 5) if masked else None
    specs = [mb.TensorSpec(shape=s.shape) for s in (q, k, v)]

    @mb.program(input_specs=specs, opset_version=ct.target.iOS18)
    def prog(q, k, v):
        kw = {"attn_mask": mask} if masked else {}
        return mb.scaled_dot_product_attention(query=q, key=k, value=v, **kw)

    pkg = tmp_path / "sdpa.mlpackage"
    save_program(prog, pkg, target=ct.target.iOS18)
    names = [i.name for i in ct.utils.load_spec(str(pkg)).description.input]
    got, _ = run_package(sdcoreml, pkg, dict(zip(names, (q, k, v))), tmp_path / "run")
    s = np.einsum("bhle,bhse->bhls", q.astype(np.float64), k.astype(np.float64)) / np.sqrt(8)
    if masked:
        s = s + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    want = np.einsum("bhls,bhse->bhle", p / p.sum(-1, keepdims=True), v.astype(np.float64))
    np.testing.assert_allclose(got[0][1], want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Errors


def test_unknown_op_is_named(sdcoreml, tmp_path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.cumsum(x=x, axis=1, name="my_cumsum")

    pkg = tmp_path / "cumsum.mlpackage"
    save_program(prog, pkg)
    name = ct.utils.load_spec(str(pkg)).description.input[0].name
    np.save(tmp_path / "x.npy", np.zeros((2, 3), np.float32))
    r = sdcoreml("run", pkg, "--input", f"{name}={tmp_path / 'x.npy'}", "-o", tmp_path / "o")
    assert r.returncode == 1
    assert "cumsum" in r.stderr and "my_cumsum" in r.stderr, r.stderr


def test_gather_nd_index_out_of_range_is_named(sdcoreml, tmp_path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(3, 4)), mb.TensorSpec(shape=(2, 2), dtype=types.int32)],
                opset_version=ct.target.iOS16)
    def prog(x, i):
        return mb.gather_nd(x=x, indices=i, name="my_rows")

    pkg = tmp_path / "gnd.mlpackage"
    save_program(prog, pkg)
    names = [d.name for d in ct.utils.load_spec(str(pkg)).description.input]
    np.save(tmp_path / "x.npy", np.zeros((3, 4), np.float32))
    np.save(tmp_path / "i.npy", np.array([[0, 1], [3, 0]], np.int32))  # row 3 of 3
    r = sdcoreml("run", pkg, "--input", f"{names[0]}={tmp_path / 'x.npy'}", "--input", f"{names[1]}={tmp_path / 'i.npy'}",
                 "-o", tmp_path / "o")
    assert r.returncode == 1 and "gather_nd" in r.stderr and "my_rows" in r.stderr and "out of range" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def simple_package(tmp_path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.add(x=x, y=np.float32(1.0), name="y")

    pkg = tmp_path / "simple.mlpackage"
    save_program(prog, pkg)
    return pkg, ct.utils.load_spec(str(pkg)).description.input[0].name


def test_input_errors_are_named(sdcoreml, tmp_path):
    pkg, name = simple_package(tmp_path)
    np.save(tmp_path / "bad_shape.npy", np.zeros((3, 2), np.float32))
    np.save(tmp_path / "i64.npy", np.zeros((2, 3), np.int64))  # float64 is read as float32 (test_cli)
    np.save(tmp_path / "fortran.npy", np.asfortranarray(np.zeros((2, 3), np.float32)))
    np.save(tmp_path / "ok.npy", np.zeros((2, 3), np.float32))
    r = sdcoreml("run", pkg, "-o", tmp_path / "o")
    assert r.returncode == 1 and f"missing input '{name}'" in r.stderr and "[2, 3]" in r.stderr, r.stderr
    r = sdcoreml("run", pkg, "--input", f"{name}={tmp_path / 'bad_shape.npy'}", "-o", tmp_path / "o")
    assert r.returncode == 1 and name in r.stderr and "[3, 2]" in r.stderr and "[2, 3]" in r.stderr, r.stderr
    r = sdcoreml("run", pkg, "--input", f"{name}={tmp_path / 'i64.npy'}", "-o", tmp_path / "o")
    assert r.returncode == 1 and "i64.npy" in r.stderr and "<i8" in r.stderr, r.stderr
    r = sdcoreml("run", pkg, "--input", f"{name}={tmp_path / 'fortran.npy'}", "-o", tmp_path / "o")
    assert r.returncode == 1 and "fortran.npy" in r.stderr and "Fortran" in r.stderr, r.stderr
    r = sdcoreml("run", pkg, "--input", f"nope={tmp_path / 'ok.npy'}", "--input", f"{name}={tmp_path / 'ok.npy'}", "-o", tmp_path / "o")
    assert r.returncode == 1 and "'nope' is not an input" in r.stderr, r.stderr
    r = sdcoreml("run", pkg, "--input", f"{name}={tmp_path / 'ok.npy'}")
    assert r.returncode == 2, r.stderr
    r = sdcoreml("run", pkg, "--input", f"{name}={tmp_path / 'ok.npy'}", "-o", tmp_path / "o")
    check_ok(r)
    assert np.array_equal(np.load(tmp_path / "o" / "y.npy"), np.ones((2, 3), np.float32))


def test_damaged_weights_are_rejected(sdcoreml, tmp_path):
    rng = np.random.default_rng(3)
    w = rand(rng, 16, 8)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8))], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.linear(x=x, weight=w, name="y")

    pkg = tmp_path / "w.mlpackage"
    save_program(prog, pkg)
    name = ct.utils.load_spec(str(pkg)).description.input[0].name
    np.save(tmp_path / "x.npy", np.zeros((1, 8), np.float32))
    wb = pkg / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(wb.read_bytes())
    data[64:68] = b"\0\0\0\0"  # the first record's sentinel
    wb.write_bytes(bytes(data))
    r = sdcoreml("run", pkg, "--input", f"{name}={tmp_path / 'x.npy'}", "-o", tmp_path / "o")
    assert r.returncode == 1 and "weight.bin" in r.stderr and "sentinel" in r.stderr, r.stderr
    wb.write_bytes(bytes(data[:100]))  # truncated
    r = sdcoreml("run", pkg, "--input", f"{name}={tmp_path / 'x.npy'}", "-o", tmp_path / "o")
    assert r.returncode == 1 and "weight.bin" in r.stderr, r.stderr
