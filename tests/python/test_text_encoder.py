"""Text encoder conversion: the I/O contract of reference/anchor-ml-stable-diffusion.md §3-§6,
checked with coremltools on every package, and the numbers checked against transformers."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import coreml_checks
import mil_eval
from conftest import REPO, check_ok, package_name

LICENSE_SD = "OpenRAIL (https://huggingface.co/spaces/CompVis/stable-diffusion-license)"
LICENSE_XL = "OpenRAIL++-M (https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/blob/main/LICENSE.md)"
SHORT_DESCRIPTION = (
    "Stable Diffusion generates images conditioned on text and/or other images as input through the "
    "diffusion process. Please refer to https://arxiv.org/abs/2112.10752 for details."
)

PROMPTS = (
    "a photo of an astronaut riding a horse on mars",
    # longer than 77 tokens: truncated, <|endoftext|> lands at position 76
    " ".join(["a high quality painting of the city at night with a cat"] * 12),
)

# (kind, --xl-version?) -> the encoders the pipeline has
CASES = [("sd1", False), ("sd2", False), ("sdxl", True)]
PRECISIONS = ["FLOAT16", "FLOAT32"]


def encoders(pipeline_dir):
    """[(submodule, tokenizer folder, hidden size H, pooled size P, config)] from the fixture."""
    out = []
    for sub, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        cfg_path = Path(pipeline_dir) / sub / "config.json"
        if not cfg_path.exists():
            continue
        cfg = json.loads(cfg_path.read_text())
        with_proj = "CLIPTextModelWithProjection" in cfg.get("architectures", [])
        h = cfg["hidden_size"]
        p = cfg["projection_dim"] if with_proj else h
        out.append((sub, tok, h, p, cfg))
    return out


def expected_io(h, p, xl):
    inputs = [("input_ids", (1, 77), "FLOAT32")]
    first = "hidden_embeds" if xl else "last_hidden_state"
    outputs = [(first, (1, 77, h), "FLOAT32"), ("pooled_outputs", (1, p), "FLOAT32")]
    return inputs, outputs


def precision_flags(precision):
    return [] if precision == "FLOAT16" else ["--compute-precision", precision]


def xl_flags(xl):
    return ["--xl-version"] if xl else []


def safetensors_params(path):
    """Number of parameters in a safetensors file, from its header (no torch needed)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    total = 0
    for k, v in header.items():
        if k == "__metadata__" or k.endswith("position_ids"):
            continue
        total += int(np.prod(v["shape"])) if v["shape"] else 1
    return total


@pytest.fixture(scope="module")
def inspect_json(sdcoreml):
    cache = {}

    def get(pkg):
        pkg = str(pkg)
        if pkg not in cache:
            r = check_ok(sdcoreml("inspect", pkg, "--json"))
            cache[pkg] = json.loads(r.stdout)
        return cache[pkg]

    return get


# ---------------------------------------------------------------------------------------------
# Contract


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kind,xl", CASES)
def test_contract(convert, pipelines, kind, xl, precision):
    out = convert(kind, *xl_flags(xl), *precision_flags(precision))
    mv = convert.model_version(kind)
    encs = encoders(pipelines[kind])
    assert len(encs) == (2 if kind == "sdxl" else 1)
    want_names = sorted(package_name(mv, sub) for sub, *_ in encs)
    assert sorted(os.listdir(out)) == want_names, "the -o folder must hold exactly the packages"

    for sub, _tok, h, p, cfg in encs:
        pkg = out / package_name(mv, sub)
        ins, outs = expected_io(h, p, xl)
        info = coreml_checks.load_and_check(str(pkg), inputs=ins, outputs=outs, spec_version=7)

        md = info.metadata
        assert md["author"] == f"Please refer to the Model Card available at huggingface.co/{mv}"
        assert md["license"] == (LICENSE_XL if xl else LICENSE_SD)
        assert md["version"] == mv
        assert md["short_description"] == SHORT_DESCRIPTION

        # Compute precision: FLOAT16 stores every weight-sized float const as fp16 (coremltools'
        # fp16 pass does so for Apple's packages); FLOAT32 stores none as fp16.
        if precision == "FLOAT16":
            assert info.const_dtypes.get("fp16", 0) > 0, info.const_dtypes
            assert info.const_dtypes.get("fp32", 0) == 0, f"fp32 weights in a FLOAT16 model: {info.const_dtypes}"
        else:
            assert info.const_dtypes.get("fp32", 0) > 0, info.const_dtypes
            assert info.const_dtypes.get("fp16", 0) == 0, f"fp16 weights in a FLOAT32 model: {info.const_dtypes}"


@pytest.mark.parametrize("kind,xl", CASES)
def test_float32_weights_twice_float16(convert, kind, xl):
    o16 = convert(kind, *xl_flags(xl))
    o32 = convert(kind, *xl_flags(xl), "--compute-precision", "FLOAT32")
    for name in os.listdir(o16):
        w = Path("Data/com.apple.CoreML/weights/weight.bin")
        s16 = (o16 / name / w).stat().st_size
        s32 = (o32 / name / w).stat().st_size
        assert 1.7 < s32 / s16 < 2.1, f"{name}: weight.bin {s32} (FLOAT32) vs {s16} (FLOAT16)"


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kind,xl", CASES)
def test_inspect_json(convert, pipelines, inspect_json, kind, xl, precision):
    out = convert(kind, *xl_flags(xl), *precision_flags(precision))
    mv = convert.model_version(kind)
    elem = 2 if precision == "FLOAT16" else 4
    for sub, _tok, h, p, cfg in encoders(pipelines[kind]):
        pkg = out / package_name(mv, sub)
        info = coreml_checks.load_and_check(str(pkg))
        j = inspect_json(pkg)
        for key in ("inputs", "outputs", "metadata", "op_histogram", "weight_bytes", "specification_version"):
            assert key in j, f"inspect --json has no {key!r}: {sorted(j)}"
        as_tuples = lambda fs: [(f["name"], tuple(f["shape"]), f["dtype"]) for f in fs]  # noqa: E731
        assert as_tuples(j["inputs"]) == [(f.name, f.shape, f.dtype) for f in info.inputs]
        assert as_tuples(j["outputs"]) == [(f.name, f.shape, f.dtype) for f in info.outputs]
        assert j["specification_version"] == info.spec_version
        for k in ("author", "license", "version", "short_description", "user_defined"):
            assert j["metadata"][k] == info.metadata[k], f"metadata[{k!r}]"
        assert j["op_histogram"] == dict(info.op_histogram), "op histogram differs from coremltools' reading"
        # weight_bytes: the weights' payload, so at least the checkpoint's tensors at this
        # precision (a little less is allowed for dropped unused tensors) and at most weight.bin.
        params = safetensors_params(pipelines[kind] / sub / "model.safetensors")
        wb = j["weight_bytes"]
        assert isinstance(wb, int)
        assert 0.8 * params * elem <= wb <= info.weight_bin_size, (wb, params * elem, info.weight_bin_size)


@pytest.mark.parametrize(
    "target,spec_version",
    [("macOS13", 7), ("iOS16", 7), ("macOS14", 8), ("iOS17", 8), ("macOS15", 9), ("iOS18", 9)],
)
def test_min_deployment_target(convert, target, spec_version):
    out = convert("sd1", "--min-deployment-target", target)
    pkg = out / package_name(convert.model_version("sd1"), "text_encoder")
    coreml_checks.load_and_check(
        str(pkg),
        inputs=[("input_ids", (1, 77), "FLOAT32")],
        outputs=[("last_hidden_state", (1, 77, 32), "FLOAT32"), ("pooled_outputs", (1, 32), "FLOAT32")],
        spec_version=spec_version,
    )


# ---------------------------------------------------------------------------------------------
# Determinism and naming


def test_deterministic(convert, tmp_path):
    for kind, flags in (("sd1", []), ("sdxl", ["--xl-version"])):
        a = convert(kind, *flags)
        r, b = convert.run(kind, *flags, out=tmp_path / kind)
        check_ok(r)
        fa, da = coreml_checks.tree_bytes(a)
        fb, db = coreml_checks.tree_bytes(b)
        assert sorted(fa) == sorted(fb) and da == db, "different file trees"
        for rel in fa:
            assert fa[rel] == fb[rel], f"{kind}: {rel} differs between two identical runs"


def test_default_precision_is_float16(convert, tmp_path):
    """No --compute-precision and --compute-precision FLOAT16 make the same model: the same
    weights and program; only metadata that records the command line may differ."""
    import coremltools as ct

    name = package_name(convert.model_version("sd1"), "text_encoder")
    specs = []
    for i, flags in enumerate(([], ["--compute-precision", "FLOAT16"])):
        pkg = convert("sd1", *flags) / name
        copy = tmp_path / str(i) / name
        shutil.copytree(pkg, copy)
        spec = ct.utils.load_spec(str(copy))
        spec.description.metadata.ClearField("userDefined")
        specs.append((spec.SerializeToString(deterministic=True),
                      (pkg / "Data/com.apple.CoreML/weights/weight.bin").read_bytes()))
    assert specs[0][1] == specs[1][1], "weight.bin differs"
    assert specs[0][0] == specs[1][0], "model.mlmodel differs (beyond metadata.userDefined)"


def test_model_version_path_with_slashes(sdcoreml, tmp_path):
    # From the repository root, as in the README: '/' -> '_', a trailing '/' is dropped.
    out = tmp_path / "out"
    r = sdcoreml("--model-version", "examples/tiny-sd/", "-o", out, "--convert-text-encoder", cwd=REPO)
    check_ok(r)
    assert os.listdir(out) == ["Stable_Diffusion_version_examples_tiny-sd_text_encoder.mlpackage"]
    coreml_checks.load_and_check(str(out / os.listdir(out)[0]), spec_version=7)


def test_output_dir_created(sdcoreml, tmp_path):
    out = tmp_path / "does" / "not" / "exist"
    r = sdcoreml("--model-version", "tiny-sd", "-o", out, "--convert-text-encoder", cwd=REPO / "examples")
    check_ok(r)
    assert os.listdir(out) == [package_name("tiny-sd", "text_encoder")]


# ---------------------------------------------------------------------------------------------
# Numbers: the package evaluated with coremltools' own op semantics (mil_eval) vs transformers


def reference_outputs(pipeline_dir, sub, tok_dir, xl, prompt):
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    cfg = json.loads((pipeline_dir / sub / "config.json").read_text())
    cls = CLIPTextModelWithProjection if "CLIPTextModelWithProjection" in cfg["architectures"] else CLIPTextModel
    model = cls.from_pretrained(pipeline_dir / sub, torch_dtype=torch.float32).eval()
    tok = CLIPTokenizer.from_pretrained(pipeline_dir / tok_dir)
    ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        o = model(ids, output_hidden_states=True, return_dict=True)
    if xl:
        pooled = o.text_embeds if hasattr(o, "text_embeds") else o.pooler_output
        return ids.numpy(), {"hidden_embeds": o.hidden_states[-2].numpy(), "pooled_outputs": pooled.numpy()}
    return ids.numpy(), {"last_hidden_state": o.last_hidden_state.numpy(), "pooled_outputs": o.pooler_output.numpy()}


def load_program(pkg, tmp_path):
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    copy = tmp_path / Path(pkg).name
    shutil.copytree(pkg, copy)
    spec = ct.utils.load_spec(str(copy))
    m = ct.models.MLModel(str(copy), skip_model_load=True)
    return load(model_spec=spec, specification_version=spec.specificationVersion, file_weights_dir=m.weights_dir)


# Measured with coremltools' own op evaluation (mil_eval) vs transformers float32, over sd1, sd2
# and both SDXL encoders, both outputs and prompts: FLOAT32 139.1-146.9 dB, FLOAT16 65.6-74.7 dB.
# Bars: 120 and 55 dB (gelu for quick_gelu gives 47 dB, layer_norm eps x 0.1 100-106 dB).
@pytest.mark.parametrize("precision,min_psnr", [("FLOAT16", 55.0), ("FLOAT32", 120.0)])
@pytest.mark.parametrize("kind,xl", CASES)
def test_numbers_match_transformers(convert, pipelines, tmp_path, kind, xl, precision, min_psnr):
    out = convert(kind, *xl_flags(xl), *precision_flags(precision))
    mv = convert.model_version(kind)
    for sub, tok_dir, h, p, cfg in encoders(pipelines[kind]):
        prog = load_program(out / package_name(mv, sub), tmp_path / sub)
        for prompt in PROMPTS:
            ids, ref = reference_outputs(pipelines[kind], sub, tok_dir, xl, prompt)
            got = mil_eval.evaluate(prog, {"input_ids": ids.astype(np.float32)})
            assert sorted(got) == sorted(ref)
            for name in ref:
                assert got[name].shape == ref[name].shape, name
                v = mil_eval.psnr(ref[name], got[name])
                print(f"PSNR coremltools-eval {kind} {sub} {precision} {name}: {v:.1f} dB")
                assert v >= min_psnr, f"{sub} {name} {precision}: PSNR {v:.1f} dB < {min_psnr} ({prompt[:30]!r})"


def test_existing_package_is_kept(sdcoreml, tmp_path):
    """As torch2coreml: a package already in -o is skipped, not rewritten."""
    out = tmp_path / "out"
    args = ("--model-version", "tiny-sd", "-o", out, "--convert-text-encoder")
    check_ok(sdcoreml(*args, cwd=REPO / "examples"))
    before, _ = coreml_checks.tree_bytes(out)
    check_ok(sdcoreml(*args, "--compute-precision", "FLOAT32", cwd=REPO / "examples"))
    after, _ = coreml_checks.tree_bytes(out)
    assert before == after


@pytest.mark.parametrize("precision", PRECISIONS)
def test_fp16_variant_only(sdcoreml, pipelines, tmp_path, precision):
    """A folder with only text_encoder/model.fp16.safetensors (how Apple's converter reads Hub
    checkpoints: variant="fp16") converts, and its numbers match transformers."""
    from safetensors.numpy import load_file, save_file

    src = tmp_path / "tiny-sd-fp16"
    shutil.copytree(pipelines["sd1"], src)
    st = src / "text_encoder" / "model.safetensors"
    tensors = {k: v.astype(np.float16) for k, v in load_file(str(st)).items()}
    save_file(tensors, str(src / "text_encoder" / "model.fp16.safetensors"), metadata={"format": "pt"})
    st.unlink()
    out = tmp_path / "out"
    check_ok(sdcoreml("--model-version", src.name, "-o", out, "--convert-text-encoder",
                      *precision_flags(precision), cwd=tmp_path))
    pkg = out / package_name(src.name, "text_encoder")
    coreml_checks.load_and_check(str(pkg), *expected_io(32, 32, False), spec_version=7)
    prog = load_program(pkg, tmp_path / "copy")
    ids, ref = reference_outputs(pipelines["sd1"], "text_encoder", "tokenizer", False, PROMPTS[0])
    got = mil_eval.evaluate(prog, {"input_ids": ids.astype(np.float32)})
    for name in ref:
        v = mil_eval.psnr(ref[name], got[name])
        assert v >= 35.0, f"{name}: PSNR {v:.1f} dB"
