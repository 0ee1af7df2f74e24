"""UNet conversion (issue 4): the anchor's I/O contract (reference/anchor-ml-stable-diffusion.md
§4.2) checked with coremltools for every fixture and attention implementation, the SDXL
footgun messages, and noise_pred compared with diffusers' UNet2DConditionModel in float32 by
running the package through sdcoreml's interpreter."""

import json
import math
from pathlib import Path

import re
import shutil
import numpy as np
import pytest

import coreml_checks
from conftest import check_ok, package_name

ATTENTIONS = ["ORIGINAL", "SPLIT_EINSUM", "SPLIT_EINSUM_V2"]
# kind -> is it SDXL
KINDS = {"sd1": False, "sd2": False, "sd1-inpaint": False, "sdxl": True, "sdxl-refiner": True}


def unet_config(pipeline):
    return json.loads((Path(pipeline) / "unet" / "config.json").read_text())


def expected_io(pipeline, batch=2, latent=None, xl=False):
    cfg = unet_config(pipeline)
    h, w = latent or (cfg["sample_size"], cfg["sample_size"])
    d = cfg["cross_attention_dim"]
    inputs = [
        ("sample", (batch, cfg["in_channels"], h, w), "FLOAT16"),
        ("timestep", (batch,), "FLOAT16"),
        ("encoder_hidden_states", (batch, d, 1, 77), "FLOAT16"),
    ]
    if xl:
        index = json.loads((Path(pipeline) / "model_index.json").read_text())
        n_ids = 5 if index.get("requires_aesthetics_score") else 6
        text_dim = cfg["projection_class_embeddings_input_dim"] - n_ids * cfg["addition_time_embed_dim"]
        inputs += [("time_ids", (batch, n_ids), "FLOAT16"), ("text_embeds", (batch, text_dim), "FLOAT16")]
    outputs = [("noise_pred", (batch, cfg.get("out_channels", 4), h, w), "FLOAT32")]
    return inputs, outputs


def convert_unet(sdcoreml, pipeline, out, *flags):
    pipeline = Path(pipeline)
    r = sdcoreml("--convert-unet", "--model-version", pipeline.name, "-o", out, *flags, cwd=pipeline.parent)
    return r, Path(out) / package_name(pipeline.name, "unet")


@pytest.fixture(scope="module")
def unet_packages(sdcoreml, pipelines, tmp_path_factory):
    """Converts each (kind, attention, precision) once per module."""
    cache = {}

    def get(kind, attention="SPLIT_EINSUM", precision="FLOAT16", *extra):
        key = (kind, attention, precision) + extra
        if key not in cache:
            out = tmp_path_factory.mktemp(f"unet-{kind}-{attention}-{precision}")
            flags = ["--attention-implementation", attention, "--compute-precision", precision, *extra]
            if KINDS[kind]:
                flags.append("--xl-version")
            r, pkg = convert_unet(sdcoreml, pipelines[kind], out, *flags)
            check_ok(r)
            cache[key] = pkg
        return cache[key]

    return get


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_contract(unet_packages, pipelines, kind, attention):
    pkg = unet_packages(kind, attention)
    inputs, outputs = expected_io(pipelines[kind], xl=KINDS[kind])
    info = coreml_checks.load_and_check(str(pkg), inputs=inputs, outputs=outputs, spec_version=7)
    hist = info.op_histogram
    if attention == "ORIGINAL":
        assert hist["einsum"] == 0 and hist["matmul"] > 0
    else:  # the ANE form: one einsum pair per head, softmax over the key axis
        assert hist["einsum"] > 0 and hist["matmul"] == 0
    assert hist["conv"] > 0 and hist["linear"] == 0, "every Linear must be a 1x1 conv"
    assert info.const_dtypes["fp32"] == 0, "a FLOAT16 package must not carry fp32 weights"


@pytest.mark.parametrize("latent", [(48, 48), (40, 56)])
def test_split_einsum_v2_odd_latents(sdcoreml, pipelines, tmp_path, latent):
    """48x48 = 2304 tokens (not a multiple of 512) breaks the anchor's V2; ours must convert."""
    h, w = latent
    r, pkg = convert_unet(sdcoreml, pipelines["sd1"], tmp_path, "--attention-implementation", "SPLIT_EINSUM_V2",
                          "--latent-h", h, "--latent-w", w)
    check_ok(r)
    inputs, outputs = expected_io(pipelines["sd1"], latent=latent)
    coreml_checks.load_and_check(str(pkg), inputs=inputs, outputs=outputs)


def test_batch_one(sdcoreml, pipelines, tmp_path):
    r, pkg = convert_unet(sdcoreml, pipelines["sd2"], tmp_path, "--unet-batch-one")
    check_ok(r)
    inputs, outputs = expected_io(pipelines["sd2"], batch=1)
    coreml_checks.load_and_check(str(pkg), inputs=inputs, outputs=outputs)


def test_latent_size_must_divide(sdcoreml, pipelines, tmp_path):
    r, _ = convert_unet(sdcoreml, pipelines["sd1"], tmp_path, "--latent-h", 31, "--latent-w", 32)
    assert r.returncode == 2
    # names the options the size came from, not the UNet config
    last = r.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"sdcoreml: error: --latent-h 31 --latent-w 32: the latent height and width must be positive "
                        r"multiples of (\d+) up to 1024 \(the UNet halves the latent (\d+) times\)", last), last
    assert list(tmp_path.iterdir()) == []


def test_latent_size_is_refused_before_anything_is_written(sdcoreml, pipelines, tmp_path):
    """The VAE decoder comes first in the anchor's order: a latent size the UNet refuses must stop
    the run before the VAE's package is written."""
    sd1 = pipelines["sd1"]
    r = sdcoreml("--convert-vae-decoder", "--convert-unet", "--latent-h", 31, "--model-version", sd1.name,
                 "-o", tmp_path / "o", cwd=sd1.parent)
    assert r.returncode == 2 and "--latent-h 31" in r.stderr.strip().splitlines()[-1], r.stderr
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_odd_sample_size_names_the_config(sdcoreml, pipelines, tmp_path):
    src = tmp_path / "odd"
    shutil.copytree(pipelines["sd1"], src)
    cfg = json.loads((src / "unet" / "config.json").read_text())
    cfg["sample_size"] = 31
    (src / "unet" / "config.json").write_text(json.dumps(cfg))
    r = sdcoreml("--convert-unet", "--model-version", "odd", "-o", tmp_path / "o", cwd=tmp_path)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("sdcoreml: error: ") and ("odd/unet/config.json: sample_size gives a 31x31 latent; it must "
                                                      "be positive multiples of") in last, last
    assert last.endswith("(give --latent-h/-w)"), last


def test_sdxl_without_xl_version_is_refused(sdcoreml, pipelines, tmp_path):
    for kind in ("sdxl", "sdxl-refiner"):
        r, _ = convert_unet(sdcoreml, pipelines[kind], tmp_path)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert lines == [f"sdcoreml: error: {kind} is an SDXL model (its UNet takes time_ids and text_embeds); "
                         "add --xl-version"], r.stderr
        assert list(tmp_path.iterdir()) == []


def test_xl_version_on_sd1_is_refused(sdcoreml, pipelines, tmp_path):
    r, _ = convert_unet(sdcoreml, pipelines["sd1"], tmp_path, "--xl-version")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["sdcoreml: error: --xl-version given, but tiny-sd is not an SDXL model"]
    assert list(tmp_path.iterdir()) == []


def test_refiner_version_names_and_metadata(sdcoreml, pipelines, tmp_path):
    """--refiner-version writes <base>_refiner.mlpackage, whose metadata version is the refiner id."""
    base, refiner = pipelines["sdxl"], pipelines["sdxl-refiner"]
    assert base.parent == refiner.parent
    r = sdcoreml("--convert-unet", "--xl-version", "--model-version", base.name, "--refiner-version", refiner.name,
                 "-o", tmp_path, cwd=base.parent)
    check_ok(r)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [package_name(base.name, "refiner"), package_name(base.name, "unet")]
    inputs, outputs = expected_io(refiner, xl=True)
    info = coreml_checks.load_and_check(str(tmp_path / package_name(base.name, "refiner")), inputs=inputs,
                                        outputs=outputs)
    assert info.metadata["version"] == refiner.name
    # the anchor's UNet and refiner say "text or other images"; its other components "and/or"
    base_inputs, base_outputs = expected_io(base, xl=True)
    base_info = coreml_checks.load_and_check(str(tmp_path / package_name(base.name, "unet")), inputs=base_inputs,
                                             outputs=base_outputs)
    for meta in (info.metadata, base_info.metadata):
        assert meta["short_description"].startswith(
            "Stable Diffusion generates images conditioned on text or other images as input"), meta
    assert {n: s for n, s, _ in inputs}["time_ids"] == (2, 5)


# ---------------------------------------------------------------------------------------------
# Numbers: our interpreter on the package vs diffusers in float32


def psnr(a, b):
    """The anchor's compute_psnr: a = reference, b = candidate."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    max_b = np.abs(b).max()
    rmse = np.sqrt(((a - b) ** 2).mean())
    return 20 * np.log10((max_b + 1e-5) / (rmse + 1e-10))


# SDXL time ids with no two values alike (original h, w, crop top, left, target h, w), so that a
# package that swaps or reorders them computes something else; the refiner's five are original
# h, w, crop top, left and the aesthetic score. ([64, 64, 0, 0, 64, 64], a palindrome, let a
# swap of original and target size through.)
XL_TIME_IDS = {6: [96, 80, 8, 4, 64, 48], 5: [96, 80, 8, 4, 6]}
# One timestep per batch item, not one for both: 981 (the first of a 50-step schedule) and 17.
TIMESTEPS = [981, 17]


def random_inputs(pipeline, xl, seed=0, latent=None):
    """Inputs in the package's dtypes (fp16), like the anchor's torch.rand samples."""
    rng = np.random.default_rng(seed)
    inputs, _ = expected_io(pipeline, xl=xl, latent=latent)
    feeds = {}
    for name, shape, _dtype in inputs:
        feeds[name] = rng.random(shape, dtype=np.float32).astype(np.float16)
    batch = feeds["timestep"].shape[0]
    feeds["timestep"] = np.array(TIMESTEPS[:batch], np.float16)
    if xl:
        n_ids = feeds["time_ids"].shape[1]
        feeds["time_ids"] = np.tile(np.array(XL_TIME_IDS[n_ids], np.float16), (batch, 1))
    return feeds


def float16_sinusoid(t, dim, flip_sin_to_cos, shift):
    """The anchor's timestep sinusoids as a device runs its FLOAT16 graph, in NumPy: diffusers'
    float32 frequency table stored in float16, t·freq, sin and cos each rounded to float16."""
    import torch

    half = dim // 2
    freq = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / (half - shift)).numpy()
    arg = np.float16(t.numpy())[:, None].astype(np.float32) * np.float16(freq).astype(np.float32)  # exact
    arg = np.float16(arg).astype(np.float32)
    emb = np.concatenate([np.float16(np.sin(arg)), np.float16(np.cos(arg))], -1).astype(np.float32)  # (N, dim)
    if flip_sin_to_cos:
        emb = np.concatenate([emb[:, half:], emb[:, :half]], -1)
    return torch.from_numpy(emb)


def with_float16_sinusoids(model):
    """A diffusers UNet or ControlNet whose Timesteps projections (time_proj, SDXL's add_time_proj)
    compute float16_sinusoid: the float32 model with the anchor's float16 sinusoids."""
    for name in ("time_proj", "add_time_proj"):
        tp = getattr(model, name, None)
        if tp is not None:
            tp.forward = lambda t, tp=tp: float16_sinusoid(t, tp.num_channels, tp.flip_sin_to_cos,
                                                           tp.downscale_freq_shift)
    return model


# Where the anchor's own package cannot be measured (a model it cannot convert), a FLOAT16 output
# is held to the usual bar against diffusers with float16_sinusoid: the float16 sinusoids may cost
# what they cost on the device, everything else only what the bar allows.
#
# And against plain diffusers: the usual bar, or, where the float16 sinusoids alone take the
# oracle below it, the oracle's own PSNR minus DEVICE_ORACLE_SLACK_DB. The bar against the oracle
# alone would let an output whose error adds to the sinusoids' (rather than sits beside it) lose
# up to 6 dB against diffusers unseen. The slack is what the rest of a device's float16 arithmetic
# costs on top of the sinusoids in the anchor's own graphs: on sd1-inpaint the oracle scores
# 54.93 dB and the anchor's packages 53.57 / 53.74 dB (tests/data/anchor/psnr.json), 1.36 dB
# below, so 1 dB would ask more than the anchor meets. Measured here: odd UNet 54.3 dB with the
# oracle at 55.0; ControlNet residuals 3 and 4 at the oracle's 53.4 and 46.6 dB.
DEVICE_ORACLE_SLACK_DB = 1.5


def assert_float16_within_device_sinusoid(name, ref, device, got, min_psnr):
    value, against_device, oracle = psnr(ref, got), psnr(device, got), psnr(ref, device)
    print(f"PSNR {name}: {value:.1f} dB (diffusers with float16 sinusoids itself {oracle:.1f} dB); "
          f"against diffusers with float16 sinusoids {against_device:.1f} dB")
    assert against_device >= min_psnr, f"{name}: {against_device:.1f} dB against the float16-sinusoid oracle"
    bar = min(min_psnr, oracle - DEVICE_ORACLE_SLACK_DB)
    assert value >= bar, f"{name}: {value:.1f} dB against diffusers < {bar:.1f} (the oracle itself {oracle:.1f} dB)"


def diffusers_noise_pred(pipeline, feeds, float16_sinusoids=False):
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(pipeline) / "unet", torch_dtype=torch.float32).eval()
    if float16_sinusoids:
        with_float16_sinusoids(unet)
    f = {k: torch.from_numpy(v.astype(np.float32)) for k, v in feeds.items()}
    ehs = f["encoder_hidden_states"].squeeze(2).permute(0, 2, 1)  # (B, D, 1, K) -> (B, K, D)
    extra = {}
    if "time_ids" in f:
        extra["added_cond_kwargs"] = {"time_ids": f["time_ids"], "text_embeds": f["text_embeds"]}
    with torch.no_grad():
        return unet(f["sample"], f["timestep"], encoder_hidden_states=ehs, **extra).sample.numpy()


def run_package(sdcoreml, pkg, feeds, tmp_path):
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    args = ["run", pkg]
    for name, value in feeds.items():
        p = tmp_path / f"in-{name}.npy"
        np.save(p, value)
        args += ["--input", f"{name}={p}"]
    out = tmp_path / "run-out"
    check_ok(sdcoreml(*args, "-o", out))
    return {p.stem: np.load(p) for p in out.glob("*.npy")}


# Measured (interpreter vs diffusers float32, these inputs, every kind): FLOAT32 112.5-114.4 dB,
# FLOAT16 53.6-58.4 dB; SPLIT_EINSUM_V2 at 48x48 / 40x56 114.0-115.6 and 56.7-57.1 dB. Bars: FLOAT32
# 110 dB (a GroupNorm eps of 1e-5 for 1e-6 in the transformer blocks gives 101-106 dB), FLOAT16 55 dB.
# FLOAT32 was 125-128 dB until d4715a2 (GroupNorm as the anchor's reduce_mean, sub, square,
# reduce_mean, add, sqrt, real_div instead of layer_norm over a grouped view): each step now
# rounds to float32 as a device's would, where the layer_norm kernel kept the statistics and
# 1/sqrt in double. Measured on sd1 / sd1-inpaint SPLIT_EINSUM: 127.7 / 125.1 dB at d4715a2's
# parent, 114.4 / 112.5 dB at d4715a2 (the later float16 sinusoids leave FLOAT32 as it was).
MIN_PSNR = {"FLOAT32": 110.0, "FLOAT16": 55.0}

# A FLOAT16 package computes the timestep sinusoids as the anchor's does: a float16 frequency table,
# the product and sin/cos in float16 (t·freq near 1000 has float16 steps of 0.5). For sd1-inpaint
# that alone takes noise_pred below 55 dB — and the anchor's own packages, run by the same
# interpreter on the same inputs, score the same (53.57 / 53.74 dB; bit for bit the same noise_pred),
# so the drop is the device's float16 arithmetic, not ours. Where the anchor's own package
# (tests/data/anchor/psnr.json) is below MIN_PSNR, the bar is the anchor's number minus
# ANCHOR_SLACK_DB; everywhere else MIN_PSNR holds.
#
# The slack: ours scores 0.06-0.1 dB under the anchor's number, and a different libm (macOS's
# sinf, expf, erff...) rounds an occasional float32 result to the other float16 neighbour. The
# sinusoids themselves cannot flip the bar: a libm 1 float32 ulp off changes none of sd1-inpaint's
# 64 float16 sin/cos values on these inputs, and the worst any libm could do (every value to its
# other float16 neighbour) costs 0.016 dB (54.93 -> 54.91 dB for the float16-sinusoid oracle).
# The remaining float16 ops move the number by about what the anchor's two attention forms differ
# by — the same arithmetic in another op order: 53.57 vs 53.74 dB, 0.17 dB. ANCHOR_SLACK_DB is
# about three times that.
ANCHOR_PSNR = json.loads((Path(__file__).resolve().parent.parent / "data" / "anchor" / "psnr.json").read_text())["unet"]
ANCHOR_SLACK_DB = 0.5


def min_psnr_for(kind, attention, precision):
    anchor = ANCHOR_PSNR.get(precision, {}).get(f"{kind}/{attention}")
    if anchor is not None and anchor < MIN_PSNR[precision]:
        return anchor - ANCHOR_SLACK_DB
    return MIN_PSNR[precision]


def diffusers_frequency_table(half, shift):
    """diffusers 0.30.2 get_timestep_embedding's frequencies, its steps in torch float32:
    exponent = -ln(max_period) · arange(half) / (half - shift), then exp."""
    import torch

    exponent = -math.log(10000) * torch.arange(start=0, end=half, dtype=torch.float32)
    return torch.exp(exponent / (half - shift)).numpy()


@pytest.mark.parametrize("kind", list(KINDS))
def test_float16_frequency_table_is_torch_table(unet_packages, pipelines, kind):
    """The frequency table a FLOAT16 package multiplies the timestep by (src/nets/blocks.c
    frequency_table, stored in float16) is torch's float32 table rounded to float16, bit for
    bit — the bytes the anchor's package stores — for time_proj and SDXL's add_time_proj."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    pkg = str(unet_packages(kind))
    spec = ct.utils.load_spec(pkg)
    prog = load(model_spec=spec, specification_version=spec.specificationVersion,
                file_weights_dir=pkg + "/Data/com.apple.CoreML/weights")
    cfg = json.loads((Path(pipelines[kind]) / "unet" / "config.json").read_text())
    dims = [cfg["block_out_channels"][0]] + ([cfg["addition_time_embed_dim"]] if KINDS[kind] else [])
    # the table: the const operand of a mul whose other operand is the expanded timestep column
    tables = [op.y.val for op in prog.functions["main"].operations
              if op.op_type == "mul" and op.x.op is not None and op.x.op.op_type == "expand_dims"
              and op.y.val is not None and op.y.val.ndim == 2 and op.y.val.shape[0] == 1]
    assert sorted(t.shape[1] for t in tables) == sorted(d // 2 for d in dims), [t.shape for t in tables]
    for table in tables:
        half = table.shape[1]
        want = np.float16(diffusers_frequency_table(half, cfg["freq_shift"]))[None, :]
        assert table.dtype == np.float16 and np.array_equal(table.view(np.uint16), want.view(np.uint16)), (
            half, table, want)


# SPLIT_EINSUM_V2 is left out here: at these 16x16 latents (256 tokens per attention, below
# its 512-token chunk) it writes the same program as SPLIT_EINSUM. test_split_einsum_v2_* below
# run it where it chunks (48x48: 2304 tokens at the first level, 576 at SDXL's second).
@pytest.mark.parametrize("precision", ["FLOAT16", "FLOAT32"])
@pytest.mark.parametrize("attention", ["ORIGINAL", "SPLIT_EINSUM"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_noise_pred_matches_diffusers(sdcoreml, unet_packages, pipelines, tmp_path, kind, attention, precision):
    min_psnr = min_psnr_for(kind, attention, precision)
    pkg = unet_packages(kind, attention, precision)
    feeds = random_inputs(pipelines[kind], KINDS[kind])
    ref = diffusers_noise_pred(pipelines[kind], feeds)
    got = run_package(sdcoreml, pkg, feeds, tmp_path)["noise_pred"]
    assert got.shape == ref.shape and got.dtype == np.float32
    value = psnr(ref, got)
    print(f"PSNR unet {kind} {attention} {precision}: {value:.1f} dB")
    assert value >= min_psnr, f"{kind} {attention} {precision}: PSNR {value:.1f} dB < {min_psnr}"


# SPLIT_EINSUM_V2 where it chunks the queries: sd1 attends at the first level (48x48 = 2304 and
# 40x56 = 2240 tokens, not multiples of 512), SDXL at the second (24x24 = 576 tokens).
@pytest.mark.parametrize("kind,latent,precision", [
    ("sd1", (48, 48), "FLOAT32"),
    ("sd1", (40, 56), "FLOAT32"),
    ("sd1", (48, 48), "FLOAT16"),
    ("sdxl", (48, 48), "FLOAT32"),
    ("sdxl", (48, 48), "FLOAT16"),
])
def test_split_einsum_v2_odd_latents_match(sdcoreml, pipelines, tmp_path, kind, latent, precision):
    h, w = latent
    flags = ["--xl-version"] if KINDS[kind] else []
    r, pkg = convert_unet(sdcoreml, pipelines[kind], tmp_path / "pkg", "--attention-implementation",
                          "SPLIT_EINSUM_V2", "--latent-h", h, "--latent-w", w, "--compute-precision", precision, *flags)
    check_ok(r)
    feeds = random_inputs(pipelines[kind], KINDS[kind], seed=1, latent=latent)
    ref = diffusers_noise_pred(pipelines[kind], feeds)
    got = run_package(sdcoreml, pkg, feeds, tmp_path)["noise_pred"]
    value = psnr(ref, got)
    print(f"PSNR unet {kind} SPLIT_EINSUM_V2 {h}x{w} {precision}: {value:.1f} dB")
    assert value >= MIN_PSNR[precision], f"{value:.1f} dB"


def test_context_shape_flags(sdcoreml, pipelines, tmp_path):
    """--text-token-sequence-length and --text-encoder-hidden-size set encoder_hidden_states'
    (B, D, 1, S) as the anchor (e.g. S = 256 for the multilingual text encoder). The tiny UNet's
    attention weights take D = cross_attention_dim, so a different D is refused naming the tensor."""
    r, pkg = convert_unet(sdcoreml, pipelines["sd1"], tmp_path / "a", "--text-token-sequence-length", 256,
                          "--compute-unit", "CPU_AND_NE")
    check_ok(r)
    d = unet_config(pipelines["sd1"])["cross_attention_dim"]
    info = coreml_checks.load_and_check(str(pkg))
    assert {f.name: f.shape for f in info.inputs}["encoder_hidden_states"] == (2, d, 1, 256)
    r, _ = convert_unet(sdcoreml, pipelines["sd1"], tmp_path / "b", "--text-encoder-hidden-size", d + 1)
    assert r.returncode == 1
    assert "attn2.to_k.weight" in r.stderr and list((tmp_path / "b").iterdir()) == []


def test_compute_unit_choices(sdcoreml, pipelines, tmp_path):
    r, _ = convert_unet(sdcoreml, pipelines["sd1"], tmp_path, "--compute-unit", "GPU")
    assert r.returncode == 2 and "--compute-unit: invalid choice 'GPU'" in r.stderr
