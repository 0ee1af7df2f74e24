"""A float16 overflow inside a decomposed normalization shows in what sdcoreml computes (issue 10
item 3): the interpreter rounds every fp16 op result to fp16, as a device computing in fp16
does, so an intermediate beyond 65504 becomes inf and what follows becomes inf, NaN or a
collapsed value, exactly as float16 arithmetic gives.

The program is GroupNorm as coremltools' torch frontend lowers it (reshape, reduce_mean, sub,
square, reduce_mean, add eps, sqrt, real_div, reshape, mul weight, add bias), built with
coremltools' MIL builder and converted at FLOAT16 precision with the pass that would fuse the
pattern into layer_norm removed. The oracle is NumPy evaluating the same steps in float16 (each
reduction accumulated in float32 and rounded, as MIL's fp16 ops and the interpreter do); a
float64 evaluation shows that every value is finite without fp16."""

import json
import shutil

import numpy as np
import pytest

from conftest import check_ok

import coremltools as ct  # noqa: E402  (a test requirement: never skip without it)
from coremltools.converters.mil import Builder as mb  # noqa: E402

F16 = np.float16
N, C, H, W, G = 1, 8, 4, 8, 4  # 4 groups of 2 channels: 64 values per group
AXES = (2, 3, 4)
EPS = 1e-5
DECOMPOSED = ("reduce_mean", "sub", "square", "sqrt", "real_div")


def params():
    rng = np.random.default_rng(3)
    gamma = (rng.random((1, C, 1, 1)) + 0.5).astype(np.float32)
    beta = rng.standard_normal((1, C, 1, 1)).astype(np.float32)
    return gamma, beta


def group_norm_program():
    gamma, beta = params()

    @mb.program(input_specs=[mb.TensorSpec(shape=(N, C, H, W))], opset_version=ct.target.iOS16)
    def prog(x):
        g = mb.reshape(x=x, shape=[N, G, C // G, H, W])
        mean = mb.reduce_mean(x=g, axes=list(AXES), keep_dims=True)
        centred = mb.sub(x=g, y=mean)
        var = mb.reduce_mean(x=mb.square(x=centred), axes=list(AXES), keep_dims=True)
        std = mb.sqrt(x=mb.add(x=var, y=EPS), name="std")
        y = mb.reshape(x=mb.real_div(x=centred, y=std), shape=[N, C, H, W])
        return mb.add(x=mb.mul(x=y, y=gamma), y=beta, name="y"), std

    return prog


def save_fp16(path):
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.remove_passes(["common::fuse_layernorm_or_instancenorm"])
    m = ct.convert(group_norm_program(), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                   compute_precision=ct.precision.FLOAT16, pass_pipeline=pipeline, skip_model_load=True)
    m.save(str(path))
    return m


def reference(x, dtype):
    """The program step by step in `dtype` (float16: every step rounded; reductions accumulate
    in float32, then round). Returns (y, std)."""
    gamma, beta = params()
    r = (lambda v: np.asarray(v, np.float32).astype(F16)) if dtype == F16 else (lambda v: np.asarray(v, np.float64))
    up = (lambda v: v.astype(np.float32)) if dtype == F16 else (lambda v: v)
    with np.errstate(all="ignore"):
        g = r(x).reshape(N, G, C // G, H, W)
        mean = r(up(g).mean(axis=AXES, keepdims=True))
        centred = r(up(g) - up(mean))
        square = r(up(centred) * up(centred))
        var = r(up(square).mean(axis=AXES, keepdims=True))
        std = r(np.sqrt(up(r(up(var) + up(r(EPS))))))
        y = r(up(centred) / up(std)).reshape(N, C, H, W)
        y = r(up(r(up(y) * up(r(gamma)))) + up(r(beta)))
    return y, std


def inputs():
    """Group 0: ordinary values. Group 1: ±300, so (x - mean)² ≈ 90 000 overflows fp16 in
    square (std becomes inf, the group collapses to beta). Group 2: one value of 60 000 among
    -20 000s, so x - mean ≈ 77 500 overflows already in sub (inf / inf: NaN). Group 3: large
    but safe values (±100: squares of 10 000)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    x[:, 2:4] = np.where(rng.random((N, 2, H, W)) < 0.5, -300.0, 300.0)
    x[:, 4:6] = -20000.0
    x[0, 4, 0, 0] = 60000.0
    x[:, 6:8] = np.where(rng.random((N, 2, H, W)) < 0.5, -100.0, 100.0)
    return x


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    pkg = tmp_path_factory.mktemp("overflow") / "group_norm_fp16.mlpackage"
    save_fp16(pkg)
    return pkg


def run(sdcoreml, pkg, x, out):
    out.mkdir()
    np.save(out / "x.npy", x)
    r = check_ok(sdcoreml("run", pkg, "--input", f"x={out / 'x.npy'}", "-o", out / "o", "--json"))
    outputs = json.loads(r.stdout)["outputs"]
    got = {o["name"]: np.load(o["file"]) for o in outputs}
    for o in outputs:  # --json counts them too
        assert o["nonfinite"] == int(np.sum(~np.isfinite(got[o["name"]]))), o
    return got, r.stderr


def test_package_is_the_decomposed_fp16_form(package):
    spec = ct.utils.load_spec(str(package))
    fn = spec.mlProgram.functions["main"]
    ops = fn.block_specializations[fn.opset].operations
    types = [op.type for op in ops]
    assert "layer_norm" not in types and all(t in types for t in DECOMPOSED), types
    square = next(op for op in ops if op.type == "square")
    assert square.outputs[0].type.tensorType.dataType == 10, "square is not computed in float16"  # MIL FLOAT16


def test_overflow_shows_as_inf_and_nan(sdcoreml, package, tmp_path):
    x = inputs()
    want_y, want_std = reference(x, F16)
    exact_y, exact_std = reference(x, np.float64)
    assert np.isfinite(exact_y).all() and np.isfinite(exact_std).all(), "the case overflows without fp16"
    # the oracle: group 1 overflows in square, group 2 already in sub; groups 0 and 3 do not
    assert np.isinf(want_std.ravel()).tolist() == [False, True, True, False]
    assert np.isnan(want_y).sum() == 1 and np.isnan(want_y[0, 4, 0, 0])

    got, stderr = run(sdcoreml, package, x, tmp_path / "run")
    y, std = got["y"], got["std"].astype(np.float32)
    assert y.dtype == np.float32 and y.shape == (N, C, H, W)
    for name, g, w in (("y", y, want_y), ("std", std, want_std)):
        w = w.astype(np.float32).reshape(g.shape)
        assert (np.isnan(g) == np.isnan(w)).all(), f"{name}: NaN where float16 gives {w[np.isnan(g)]}"
        assert (np.isposinf(g) == np.isposinf(w)).all() and (np.isneginf(g) == np.isneginf(w)).all(), name
        fin = np.isfinite(w)
        np.testing.assert_allclose(g[fin], w[fin], rtol=1e-2, atol=1e-2, err_msg=name)
    # where fp16 does not overflow, the result is the normalization (group 0 and 3 as float64)
    np.testing.assert_allclose(y[:, [0, 1, 6, 7]], exact_y[:, [0, 1, 6, 7]], rtol=1e-2, atol=2e-2)
    # the square overflow collapses group 1 to beta: finite, and wrong
    _, beta = params()
    np.testing.assert_allclose(y[:, 2:4], np.broadcast_to(beta[:, 2:4], (N, 2, H, W)), atol=1e-2)
    # run says so on stderr, naming each output and counting, and still succeeds
    lines = [line for line in stderr.splitlines() if "NaN/inf" in line]
    n_std = int(np.sum(~np.isfinite(want_std)))
    assert lines == [f"sdcoreml: warning: output 'y': 1 of {y.size} values are NaN/inf",
                     f"sdcoreml: warning: output 'std': {n_std} of {std.size} values are NaN/inf"], stderr


def test_no_overflow_no_warning(sdcoreml, package, tmp_path):
    x = inputs()
    x[:, 2:6] = x[:, 0:2].repeat(2, axis=1)  # only ordinary and ±100 groups
    got, stderr = run(sdcoreml, package, x, tmp_path / "run")
    want_y, want_std = reference(x, F16)
    assert np.isfinite(got["y"]).all() and np.isfinite(got["std"]).all()
    np.testing.assert_allclose(got["y"], want_y.astype(np.float32), rtol=1e-2, atol=1e-2)
    assert "NaN/inf" not in stderr, stderr



# ---------------------------------------------------------------------------------------------
# --check-output-correctness: a package whose float16 computation overflows fails, naming the
# output. tiny-sd's text encoder with its final LayerNorm weight set to 60 000 (exact in
# float16) is such a package: normalized values beyond about ±1.09 overflow 65 504, while the
# float32 reference stays finite, as SDXL's VAE does at float16.


def seeded_input_ids(vocab_size, n=77):
    """The check's seeded input_ids (src/convert/check.c: xorshift64* from 0x5DC0DE1, modulo
    the vocabulary), so the oracle sees what the check feeds the package."""
    mask, s, ids = (1 << 64) - 1, 0x5DC0DE1, []
    for _ in range(n):
        s ^= s >> 12
        s = (s ^ (s << 25)) & mask
        s ^= s >> 27
        ids.append(((s * 2685821657736338717) & mask) % vocab_size)
    return ids


@pytest.fixture(scope="module")
def loud_text_encoder(pipelines, tmp_path_factory):
    from safetensors.numpy import load_file, save_file

    src = tmp_path_factory.mktemp("loud") / "tiny-sd-loud"
    shutil.copytree(pipelines["sd1"], src)
    f = src / "text_encoder" / "model.safetensors"
    tensors = load_file(f)
    key = "text_model.final_layer_norm.weight"
    tensors[key] = np.full_like(tensors[key], 60000.0)
    save_file(tensors, f, metadata={"format": "pt"})
    return src


def test_check_names_the_overflowing_output(sdcoreml, loud_text_encoder, tmp_path):
    import torch
    from transformers import CLIPTextModel

    src = loud_text_encoder
    model = CLIPTextModel.from_pretrained(src / "text_encoder", torch_dtype=torch.float32).eval()
    ids = torch.tensor([seeded_input_ids(model.config.vocab_size)])
    with torch.no_grad():
        exact = model(ids).last_hidden_state.numpy()
    assert np.isfinite(exact).all()
    # float16 rounds to inf from 65 520; the package's own fp16 steps move values by ~0.1 %
    low, high = int(np.sum(np.abs(exact) >= 65520 * 1.01)), int(np.sum(np.abs(exact) >= 65520 * 0.99))
    assert low > 0, "the oracle sees no overflow: the case tests nothing"

    out = tmp_path / "out"
    r = sdcoreml("--model-version", src.name, "--convert-text-encoder", "--check-output-correctness", "-o", out,
                 cwd=src.parent)
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    pkg = "Stable_Diffusion_version_tiny-sd-loud_text_encoder.mlpackage"
    prefix = f"sdcoreml: error: --check-output-correctness: {pkg} output 'last_hidden_state': "
    assert last.startswith(prefix) and last.endswith(f" of {exact.size} values are NaN/inf"), last
    n = int(last[len(prefix):].split()[0])
    assert low <= n <= high, (n, low, high)

    # the same weights converted to float32 pass: the failure is float16's
    r = check_ok(sdcoreml("--model-version", src.name, "--convert-text-encoder", "--check-output-correctness",
                          "--compute-precision", "FLOAT32", "-o", tmp_path / "out32", cwd=src.parent))
    assert "NaN/inf" not in r.stderr
