"""Safety checker conversion (reference/anchor-ml-stable-diffusion.md §4.6, §5, §8): the I/O
contract checked with coremltools, the skip-with-warning for pipelines without a safety
checker, and the anchor's branch-free forward evaluated by the reference interpreter
(`sdcoreml run`) against diffusers' StableDiffusionSafetyChecker in float32."""

import json
import os

import numpy as np
import pytest

import coreml_checks
from conftest import check_ok, package_name
from test_vae import (
    LICENSE_SD,
    WEIGHT_BIN,
    const_dtypes_ok,
    convert_vae,  # noqa: F401  (fixture)
    copy_pipeline,
    fp16_exact,
    interpret,
    psnr,
    rewrite_safetensors,
    run_cli,
)

SUB = "safety_checker"


def n_concepts(pipeline_dir):
    from safetensors import safe_open

    with safe_open(str(pipeline_dir / SUB / "model.safetensors"), "np") as f:
        return f.get_slice("concept_embeds").get_shape()[0]


def expected_io(image_hw, concepts):
    h, w = image_hw
    inputs = [("clip_input", (1, 3, 224, 224), "FLOAT16"), ("images", (1, h, w, 3), "FLOAT16"),
              ("adjustment", (1,), "FLOAT16")]
    outputs = [("filtered_images", (1, h, w, 3), "FLOAT32"), ("has_nsfw_concepts", (1, 1, 1, 1), "FLOAT32"),
               ("concept_scores", (1, concepts), "FLOAT32")]
    return inputs, outputs


# ---------------------------------------------------------------------------------------------
# Contract


@pytest.mark.parametrize("flags,wdtype", [([], "fp16"), (["--compute-precision", "FLOAT32"], "fp32")])
def test_contract(convert_vae, pipelines, flags, wdtype):  # noqa: F811
    out = convert_vae("sd1", "--convert-safety-checker", *flags)
    mv = pipelines["sd1"].name
    assert os.listdir(out) == [package_name(mv, SUB)]
    # images = the VAE decoder's output: 2 × the 16×16 latent for the 2-block tiny VAE (8× for
    # every real SD VAE, i.e. (1, 512, 512, 3) for SD 1.x, the shape the Swift pipeline feeds)
    ins, outs = expected_io((32, 32), n_concepts(pipelines["sd1"]))
    info = coreml_checks.load_and_check(str(out / package_name(mv, SUB)), inputs=ins, outputs=outs, spec_version=7)
    assert const_dtypes_ok(info, wdtype), info.const_dtypes
    md = info.metadata
    assert md["license"] == LICENSE_SD  # always OpenRAIL, as the anchor
    assert md["version"] == mv
    assert md["author"] == f"Please refer to the Model Card available at huggingface.co/{mv}"


def test_images_follow_latent_size(convert_vae, pipelines):  # noqa: F811
    out = convert_vae("sd1", "--convert-safety-checker", "--latent-h", "8", "--latent-w", "12")
    ins, outs = expected_io((16, 24), n_concepts(pipelines["sd1"]))
    coreml_checks.load_and_check(str(out / package_name(pipelines["sd1"].name, SUB)), inputs=ins, outputs=outs)


def test_images_match_decoder_output(convert_vae, pipelines):  # noqa: F811
    """The Python pipeline passes the decoded image on with strict shape checks: the
    safety checker's `images` is the decoder's `image`, channels last."""
    out = convert_vae("sd1", "--convert-safety-checker", "--convert-vae-decoder")
    mv = pipelines["sd1"].name
    dec = coreml_checks.load_and_check(str(out / package_name(mv, "vae_decoder")))
    sc = coreml_checks.load_and_check(str(out / package_name(mv, SUB)))
    n, c, h, w = dec.outputs[0].shape
    assert sc.inputs[1].shape == (n, h, w, c)


@pytest.mark.parametrize("kind,flags", [("sd2", []), ("sdxl", ["--xl-version"])])
def test_no_safety_checker_is_a_warning(sdcoreml, pipelines, tmp_path, kind, flags):
    """SD 2.x lists [null, null] in model_index.json, SDXL lists nothing: a warning, no package,
    exit 0 — and the other components of the run are still converted."""
    out = tmp_path / "out"
    r = run_cli(sdcoreml, pipelines[kind], out, "--convert-safety-checker", "--convert-vae-decoder", *flags)
    check_ok(r)
    assert "safety_checker" in r.stderr and "ignored" in r.stderr, r.stderr
    assert os.listdir(out) == [package_name(pipelines[kind].name, "vae_decoder")]


def test_only_safety_checker_flag_without_one(sdcoreml, pipelines, tmp_path):
    out = tmp_path / "out"
    r = run_cli(sdcoreml, pipelines["sd2"], out, "--convert-safety-checker")
    check_ok(r)
    assert "ignored" in r.stderr
    assert not os.listdir(out)


def test_existing_package_is_kept(sdcoreml, pipelines, tmp_path):
    out = tmp_path / "out"
    check_ok(run_cli(sdcoreml, pipelines["sd1"], out, "--convert-safety-checker"))
    before, _ = coreml_checks.tree_bytes(out)
    check_ok(run_cli(sdcoreml, pipelines["sd1"], out, "--convert-safety-checker", "--compute-precision", "FLOAT32"))
    assert coreml_checks.tree_bytes(out)[0] == before


def test_missing_concept_embeds_named(sdcoreml, pipelines, tmp_path):
    root = copy_pipeline(pipelines["sd1"], tmp_path / "tiny-sd")
    rewrite_safetensors(root / SUB / "model.safetensors", lambda t: {k: v for k, v in t.items() if k != "concept_embeds"})
    r = run_cli(sdcoreml, root, tmp_path / "out", "--convert-safety-checker")
    assert r.returncode != 0 and "concept_embeds" in r.stderr, r.stderr


def test_custom_vae_sets_images_size(sdcoreml, pipelines, tmp_path):
    """With --custom-vae-version, `images` is the custom decoder's output size."""
    root = copy_pipeline(pipelines["sd2"] / "vae", tmp_path / "vae3")
    cfg = json.loads((root / "config.json").read_text())
    cfg["block_out_channels"] = cfg["block_out_channels"] + [cfg["block_out_channels"][-1]]
    cfg["down_block_types"] = cfg["down_block_types"] + ["DownEncoderBlock2D"]
    cfg["up_block_types"] = cfg["up_block_types"] + ["UpDecoderBlock2D"]
    (root / "config.json").write_text(json.dumps(cfg))  # a 3-block VAE: scale 4
    out = tmp_path / "out"
    check_ok(run_cli(sdcoreml, pipelines["sd1"], out, "--convert-safety-checker", "--custom-vae-version", str(root)))
    ins, _ = expected_io((64, 64), n_concepts(pipelines["sd1"]))
    info = coreml_checks.load_and_check(str(out / package_name(pipelines["sd1"].name, SUB)))
    assert [(f.name, f.shape, f.dtype) for f in info.inputs] == ins


# ---------------------------------------------------------------------------------------------
# Numbers


def anchor_forward(sc, clip_input, images, adjustment):
    """The anchor's forward_coreml (torch2coreml.convert_safety_checker), in float32."""
    import torch
    import torch.nn.functional as F

    def cosine_distance(a, b):
        return F.normalize(a) @ F.normalize(b).transpose(0, 1)

    clip_input, images, adjustment = (torch.from_numpy(v) for v in (clip_input, images, adjustment))
    with torch.no_grad():
        pooled = sc.vision_model(clip_input)[1]
        e = sc.visual_projection(pooled)
        special = cosine_distance(e, sc.special_care_embeds) - sc.special_care_embeds_weights + adjustment
        special_care = special.gt(0).float().sum(dim=1).gt(0).float()
        adj = (special_care * 0.01).unsqueeze(1).expand(-1, sc.concept_embeds.shape[0])
        scores = cosine_distance(e, sc.concept_embeds) - sc.concept_embeds_weights + adj
        has = scores.gt(0).float().sum(dim=1).gt(0)[:, None, None, None]
        mask, _ = torch.broadcast_tensors(has, images)
        images = images.clone()
        images[mask] = 0.0
    return {"filtered_images": images.numpy(), "has_nsfw_concepts": has.float().numpy(),
            "concept_scores": scores.numpy(), "special_care": special_care.numpy()}


def load_checker(root):
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    return StableDiffusionSafetyChecker.from_pretrained(str(root / SUB), torch_dtype=torch.float32).eval()


def sample_inputs(seed, image_hw=(32, 32)):
    rng = np.random.default_rng(seed)
    return {
        "clip_input": fp16_exact(rng.standard_normal((1, 3, 224, 224))),
        "images": fp16_exact(rng.uniform(-1, 1, (1, *image_hw, 3))),
    }


def shifted_checker(src, dst, inputs, concept_margin, special_margin):
    """A copy of the pipeline whose thresholds put this input's best concept score at
    `concept_margin` and its best special score (with adjustment 0) at `special_margin`, so
    both branches of the anchor's math are exercised with a known outcome."""
    root = copy_pipeline(src, dst)
    sc = load_checker(root)
    r = anchor_forward(sc, inputs["clip_input"], inputs["images"], np.zeros(1, np.float32))
    special_care = float(r["special_care"][0])
    best_concept = float(r["concept_scores"].max()) - 0.01 * special_care
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        e = sc.visual_projection(sc.vision_model(torch.from_numpy(inputs["clip_input"]))[1])
        special = F.normalize(e) @ F.normalize(sc.special_care_embeds).T - sc.special_care_embeds_weights
    best_special = float(special.max())

    def edit(t):
        t = dict(t)
        t["concept_embeds_weights"] = t["concept_embeds_weights"] + np.float32(best_concept - concept_margin)
        t["special_care_embeds_weights"] = t["special_care_embeds_weights"] + np.float32(best_special - special_margin)
        return t

    rewrite_safetensors(root / SUB / "model.safetensors", edit)
    return root


# (concept margin, special margin, adjustment, expected special care, expected NSFW):
#   safe; unsafe; safe lifted over 0 by special care (adjustment makes a special score > 0)
SCENARIOS = [
    (-0.05, -0.05, 0.0, 0, 0),
    (0.05, -0.05, 0.0, 0, 1),
    (-0.004, -0.05, 0.0, 0, 0),
    (-0.004, -0.05, 0.1, 1, 1),
]


# Measured (concept_scores, interpreter vs diffusers float32, the four scenarios): FLOAT32
# 145.6-149.4 dB, FLOAT16 71.2-72.1 dB with the anchor's float16 tail (folded cosine linears,
# threshold biases and the 0.01 lift all in float16; 73.1-75.7 dB when sdcoreml ran that tail
# in float32). On tiny-sd's own weights the anchor's FLOAT16 package, run by the same
# interpreter on the same inputs, gives bit-identical outputs. Bars: 110 and 55 dB.
@pytest.mark.parametrize("precision,min_psnr", [("FLOAT16", 55.0), ("FLOAT32", 110.0)])
@pytest.mark.parametrize("scenario", range(len(SCENARIOS)), ids=["safe", "unsafe", "safe-near-0", "special-care"])
def test_numbers_match_diffusers(sdcoreml, pipelines, tmp_path, precision, min_psnr, scenario):
    concept_margin, special_margin, adjustment, want_care, want_nsfw = SCENARIOS[scenario]
    inputs = sample_inputs(100 + scenario)
    root = shifted_checker(pipelines["sd1"], tmp_path / "tiny-sd", inputs, concept_margin, special_margin)
    out = tmp_path / "out"
    check_ok(run_cli(sdcoreml, root, out, "--convert-safety-checker", "--compute-precision", precision))
    pkg = out / package_name(root.name, SUB)
    inputs["adjustment"] = fp16_exact(np.array([adjustment]))
    ref = anchor_forward(load_checker(root), inputs["clip_input"], inputs["images"], inputs["adjustment"])
    assert ref["special_care"][0] == want_care and ref["has_nsfw_concepts"].ravel()[0] == want_nsfw
    got = interpret(sdcoreml, pkg, inputs, tmp_path)
    assert sorted(got) == ["concept_scores", "filtered_images", "has_nsfw_concepts"]
    for name in got:
        assert got[name].shape == ref[name].shape and got[name].dtype == np.float32, name
    v = psnr(ref["concept_scores"], got["concept_scores"])
    print(f"PSNR safety_checker concept_scores {precision} {scenario}: {v:.1f} dB")
    assert v >= min_psnr, f"concept_scores {precision}: PSNR {v:.1f} dB < {min_psnr}"
    assert np.array_equal(got["has_nsfw_concepts"], ref["has_nsfw_concepts"])
    assert np.array_equal(got["filtered_images"], ref["filtered_images"])
    if want_nsfw:
        assert not got["filtered_images"].any()
    else:
        assert np.array_equal(got["filtered_images"], inputs["images"])


@pytest.mark.parametrize("precision", ["FLOAT16", "FLOAT32"])
def test_folded_score_tables(convert_vae, pipelines, precision):  # noqa: F811
    """The cosine scores are linear ops on the normalised embedding tables with the negated
    thresholds as biases, folded at conversion as coremltools folds the anchor's trace; in
    float16 from the table rounded to float16 first (the anchor loads the pipeline in float16).
    Oracle: NumPy on the checkpoint's tensors; the package is read by coremltools."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load
    from safetensors.numpy import load_file

    out = convert_vae("sd1", "--convert-safety-checker", "--compute-precision", precision)
    pkg = str(out / package_name(pipelines["sd1"].name, SUB))
    spec = ct.utils.load_spec(pkg)
    prog = load(model_spec=spec, specification_version=spec.specificationVersion,
                file_weights_dir=pkg + "/Data/com.apple.CoreML/weights")
    # the graph's last two linear ops, in the order the anchor's trace has them (special-care
    # scores first): keyed by order, not by row count, which two tables may share
    linears = dict(zip(("special_care_embeds", "concept_embeds"),
                       [op for op in prog.functions["main"].operations if op.op_type == "linear"][-2:]))
    t = load_file(str(pipelines["sd1"] / SUB / "model.safetensors"))
    dtype = np.float16 if precision == "FLOAT16" else np.float32
    for table in ("special_care_embeds", "concept_embeds"):
        e = t[table].astype(dtype).astype(np.float32)
        want_w = (e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)).astype(dtype)
        want_b = (-t[table + "_weights"]).astype(dtype)
        op = linears[table]
        assert op.weight.val.dtype == dtype and op.bias.val.dtype == dtype, table
        np.testing.assert_allclose(op.weight.val, want_w, rtol=0 if precision == "FLOAT16" else 1e-6, atol=0, err_msg=table)
        assert np.array_equal(op.bias.val, want_b), table


def test_same_weights_as_checkpoint(convert_vae, pipelines):  # noqa: F811
    """FLOAT32 keeps every checkpoint tensor the graph uses: weight.bin holds at least the
    safety checker's parameters (position_ids and the unused text tower excepted)."""
    out = convert_vae("sd1", "--convert-safety-checker", "--compute-precision", "FLOAT32")
    from safetensors import safe_open

    with safe_open(str(pipelines["sd1"] / SUB / "model.safetensors"), "np") as f:
        n = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys() if not k.endswith("position_ids"))
    size = (out / package_name(pipelines["sd1"].name, SUB) / WEIGHT_BIN).stat().st_size
    assert size >= 4 * n
