"""Device parity: the op types of sdcoreml's packages against the packages Apple's torch2coreml
(the anchor) writes for the same tiny fixtures.

Nothing here runs a package on a Neural Engine or GPU; the anchor's graphs are what devices are
known to run. tests/data/anchor/histograms.json holds, per fixture × attention implementation ×
component, the op-type counts of the anchor's main function, measured from its packages
(tests/data/anchor/README.md says how), and, for a --quantize-nbits 6 run, which weights it
palettized. The oracle is that file (the anchor, read by coremltools); the histograms of
sdcoreml's packages are read with coremltools' load_spec, not with sdcoreml's own inspect.

A difference fails unless ALLOWED below lists that op for that component, with the reason.
"""
import collections
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import check_ok

DATA = json.loads((Path(__file__).resolve().parent.parent / "data" / "anchor" / "histograms.json").read_text())

# The anchor's runs (keys of the data) → the tiny pipeline and the flags it ran with (besides
# --attention-implementation and the component flags). sd1-cn has its own test.
RUNS = {
    "sd1": ("sd1", []), "sd2": ("sd2", []), "sd1-inpaint": ("sd1-inpaint", []), "odd": ("odd", []),
    "sdxl": ("sdxl", ["--xl-version"]), "sdxl-refiner": ("sdxl-refiner", ["--xl-version"]),
    "sd1-ios17": ("sd1", ["--min-deployment-target", "iOS17"]),
    "sd1-identity-gn": ("sd1-identity-gn", []),
}

COMPONENT_FLAGS = {
    "text_encoder": ["--convert-text-encoder"],
    "text_encoder_2": ["--convert-text-encoder"],
    "unet": ["--convert-unet"],
    "vae_decoder": ["--convert-vae-decoder"],
    "vae_encoder": ["--convert-vae-encoder"],
    "safety_checker": ["--convert-safety-checker"],
}

# op type -> why its count may differ, in every component
ALLOWED_EVERYWHERE = {
    "const": "coremltools materialises and deduplicates consts in its own passes (one per "
             "distinct value and dtype); sdcoreml writes one per parameter. Consts are not "
             "computed on the device; the weights they hold are compared by the fidelity tests "
             "and, for palettization, by test_palettized_tensors_match_the_anchor.",
}

# component -> {op type: (the differences sdcoreml − anchor allowed, why)}: a known difference
# kept on purpose goes here with its reason. Empty: every component's op types and counts other
# than const equal the anchor's (the float16 sinusoids and the safety checker's tail were the last
# entries).
ALLOWED = {}

# run -> component -> {op type: (differences allowed, why)}, on top of ALLOWED
IOS17_IDS = "from iOS17 on, coremltools lowers the token-embedding lookup with a wrap of negative ids " \
            "(greater_equal, add, select) and three int16/int32 index casts; sdcoreml keeps the one " \
            "int32 cast and gather of the anchor's iOS16/macOS13 graph (ids come in as float " \
            "token ids, never negative)"
RUN_ALLOWED = {
    "sd1-ios17": {"text_encoder": {"add": ({-1}, IOS17_IDS), "cast": ({-3}, IOS17_IDS),
                                   "greater_equal": ({-1}, IOS17_IDS), "select": ({-1}, IOS17_IDS)}},
}


def histogram(package):
    import coremltools as ct

    spec = ct.utils.load_spec(str(package))
    fn = spec.mlProgram.functions["main"]
    return collections.Counter(op.type for op in fn.block_specializations[fn.opset].operations)


def component_of(name):
    m = re.search(r"_(text_encoder_2|text_encoder|control-unet|unet|vae_decoder|vae_encoder|safety_checker)"
                  r"\.mlpackage$", name)
    if m:
        return m.group(1)
    return "controlnet" if name.startswith("ControlNet_") else None


def differences(run, component, anchor, ours):
    """{op: (anchor's count, sdcoreml's)} for each difference ALLOWED does not explain"""
    allowed = {**ALLOWED.get(component, {}), **RUN_ALLOWED.get(run, {}).get(component, {})}
    out = {}
    for op in sorted(set(anchor) | set(ours)):
        a, o = anchor.get(op, 0), ours.get(op, 0)
        if a == o or op in ALLOWED_EVERYWHERE:
            continue
        deltas = allowed.get(op, ({0}, ""))[0]
        if deltas is not None and o - a not in deltas:
            out[op] = (a, o)
    return out


CASES = [(run, attn) for run in sorted(DATA["histograms"]) if run != "sd1-cn" for attn in sorted(DATA["histograms"][run])]


def test_every_recorded_run_is_tested():
    assert set(DATA["histograms"]) - {"sd1-cn"} == set(RUNS)
    assert set(DATA["palettized"]) <= set(RUNS)


@pytest.fixture(scope="module")
def identity_gn(pipelines, tmp_path_factory):
    """tiny-sd with every 1-D norm weight of its VAE set to 1 and bias to 0 (GroupNorm as freshly
    initialised, as in random-weight benchmark models), the rest linked: the anchor's graph then
    has no GroupNorm affine at all (coremltools' noop_elimination)."""
    from safetensors.numpy import load_file, save_file

    d = tmp_path_factory.mktemp("identity-gn") / "sd1-identity-gn"
    d.mkdir()
    src = pipelines["sd1"]
    for p in src.iterdir():
        if p.name != "vae":
            os.symlink(p, d / p.name)
    (d / "vae").mkdir()
    (d / "vae" / "config.json").write_bytes((src / "vae" / "config.json").read_bytes())
    w = load_file(str(src / "vae" / "diffusion_pytorch_model.safetensors"))
    for k, v in w.items():
        if "norm" in k and v.ndim == 1:
            w[k] = np.ones_like(v) if k.endswith(".weight") else np.zeros_like(v)
    save_file(w, str(d / "vae" / "diffusion_pytorch_model.safetensors"))
    return d


@pytest.fixture(scope="module")
def converted(sdcoreml, pipelines, identity_gn, tmp_path_factory):
    cache = {}
    sources = {**pipelines, "sd1-identity-gn": identity_gn}

    def run(fixture, attention, *extra):
        key = (fixture, attention) + extra
        if key not in cache:
            kind, run_flags = RUNS[fixture]
            src = sources[kind]
            out = tmp_path_factory.mktemp(f"parity-{fixture}-{attention}")
            flags = [f for comp in DATA["histograms"][fixture][attention] for f in COMPONENT_FLAGS.get(comp, [])]
            flags = list(dict.fromkeys(flags))  # text_encoder and text_encoder_2 share a flag
            check_ok(sdcoreml("--model-version", src.name, "-o", out, "--attention-implementation", attention,
                              *run_flags, *flags, *extra, cwd=src.parent))
            cache[key] = {component_of(p.name): p for p in out.glob("*.mlpackage")}
        return cache[key]

    return run


@pytest.mark.parametrize("fixture,attention", CASES)
def test_op_histograms_match_the_anchor(converted, fixture, attention):
    packages = converted(fixture, attention)
    failures = {}
    for component, anchor in DATA["histograms"][fixture][attention].items():
        assert component in packages, f"{fixture} {attention}: sdcoreml wrote no {component} package"
        diff = differences(fixture, component, anchor, histogram(packages[component]))
        if diff:
            failures[component] = diff
    assert not failures, f"{fixture} {attention}: op counts (anchor, sdcoreml) differ: {failures}"


@pytest.fixture(scope="module")
def controlnet_dir(pipelines, tmp_path_factory):
    """The ControlNet the anchor was run with: ControlNetModel.from_unet of tiny-sd's UNet with
    diffusers' default conditioning channels (the anchor takes an 8x hint), every weight drawn
    from a seeded normal (from_unet zero-initialises the output convs)."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    d = tmp_path_factory.mktemp("parity-controlnet")
    os.symlink(pipelines["sd1"], d / "tiny-sd")
    cn = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(pipelines["sd1"] / "unet"),
                                   conditioning_embedding_out_channels=(16, 32, 96, 256))
    rng = np.random.default_rng(7)
    with torch.no_grad():
        for p in cn.parameters():
            p.copy_(torch.from_numpy((rng.standard_normal(tuple(p.shape)) * 0.2).astype(np.float32)))
    cn.save_pretrained(d / "tiny-controlnet8", safe_serialization=True)
    return d


@pytest.mark.parametrize("attention", sorted(DATA["histograms"].get("sd1-cn", {})))
def test_controlnet_and_control_unet_match_the_anchor(sdcoreml, controlnet_dir, tmp_path, attention):
    check_ok(sdcoreml("--model-version", "tiny-sd", "-o", tmp_path, "--attention-implementation", attention,
                      "--convert-unet", "--unet-support-controlnet", "--convert-controlnet", "tiny-controlnet8",
                      cwd=controlnet_dir))
    packages = {component_of(p.name): p for p in tmp_path.glob("*.mlpackage")}
    failures = {}
    for component, anchor in DATA["histograms"]["sd1-cn"][attention].items():
        assert component in packages, f"sdcoreml wrote no {component} package"
        diff = differences("sd1-cn", component, anchor, histogram(packages[component]))
        if diff:
            failures[component] = diff
    assert not failures, f"sd1-cn {attention}: op counts (anchor, sdcoreml) differ: {failures}"


def palettized(package):
    """Each palettized weight as (consumer op type, its parameter, dense shape), sorted."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(package))
    fn = spec.mlProgram.functions["main"]
    ops = list(fn.block_specializations[fn.opset].operations)
    lut = {op.outputs[0].name: [d.constant.size for d in op.outputs[0].type.tensorType.dimensions]
           for op in ops if op.type.startswith("constexpr_lut_to_dense")}
    rows = [{"op": op.type, "param": param, "shape": lut[b.name]}
            for op in ops for param, arg in op.inputs.items() for b in arg.arguments if b.name in lut]
    return sorted(rows, key=lambda r: (r["op"], r["param"], r["shape"]))


@pytest.mark.parametrize("fixture", sorted(DATA["palettized"]))
def test_palettized_tensors_match_the_anchor(converted, fixture):
    anchor = DATA["palettized"][fixture]
    packages = converted(fixture, "SPLIT_EINSUM", "--quantize-nbits", "6")
    for component in ("text_encoder", "unet", "vae_decoder", "vae_encoder", "safety_checker"):
        if component not in packages:
            continue
        want = anchor.get(component, [])
        got = palettized(packages[component])
        assert got == want, (f"{fixture} {component}: palettized weights differ: only sdcoreml "
                             f"{[r for r in got if r not in want][:5]}, only the anchor {[r for r in want if r not in got][:5]}")


def test_unet_layer_norm_betas_are_the_anchors_folded_biases(converted, pipelines):
    """The anchor's LayerNormANE adds bias/weight before scaling by weight; coremltools folds
    that into layer_norm's beta = float16(float16(b16 / w16) · w16) (b16, w16: the float16
    parameters). Measured on the anchor's sd1 UNet: this chain gives all 480 elements of its 12
    betas, where float16(bias) misses 41. The oracle here is that chain in NumPy float16 over
    diffusers' weights, matched to each layer_norm by its gamma."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milload
    from safetensors.numpy import load_file

    package = converted("sd1", "SPLIT_EINSUM")["unet"]
    model = ct.models.MLModel(str(package), skip_model_load=True)
    prog = milload(model.get_spec(), model.get_spec().specificationVersion, model.weights_dir)
    norms = [op for op in prog.functions["main"].operations if op.op_type == "layer_norm"]
    weights = load_file(str(pipelines["sd1"] / "unet" / "diffusion_pytorch_model.safetensors"))
    names = [k[: -len(".weight")] for k in weights if re.search(r"transformer_blocks\.\d+\.norm\d\.weight$", k)]
    assert len(norms) == len(names) == 12
    plain_misses = 0
    for op in norms:
        gamma = op.gamma.val
        match = [k for k in names if np.array_equal(weights[k + ".weight"].astype(np.float16), gamma)]
        assert len(match) == 1, f"{op.name}: gamma matches {match}"
        w16 = weights[match[0] + ".weight"].astype(np.float16)
        b16 = weights[match[0] + ".bias"].astype(np.float16)
        folded = (b16 / w16).astype(np.float16) * w16
        assert np.array_equal(op.beta.val, folded), f"{match[0]}: beta is not the anchor's folded bias"
        plain_misses += int(np.sum(folded != b16))
    assert plain_misses > 0  # the fixture tells the folded form from float16(bias)
