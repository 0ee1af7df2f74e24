"""VAE decoder and encoder conversion (reference/anchor-ml-stable-diffusion.md §4.4, §4.5, §8):
the I/O contracts and the SDXL float32 rule checked with coremltools on every package,
--custom-vae-version, legacy attention weight names, and the numbers of the reference
interpreter (`sdcoreml run`) against diffusers' AutoencoderKL in float32."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import coreml_checks
from conftest import check_ok, package_name

LICENSE_SD = "OpenRAIL (https://huggingface.co/spaces/CompVis/stable-diffusion-license)"
LICENSE_XL = "OpenRAIL++-M (https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/blob/main/LICENSE.md)"
WEIGHT_BIN = Path("Data/com.apple.CoreML/weights/weight.bin")


# ---------------------------------------------------------------------------------------------
# Helpers shared with test_safety_checker.py


def run_cli(sdcoreml, src, out, *flags):
    """sdcoreml --model-version <folder name> -o out flags..., from the folder's parent."""
    src = Path(src)
    return sdcoreml("--model-version", src.name, "-o", out, *flags, cwd=src.parent)


class VaeConverter:
    """Converts (kind or folder, flags) once per session; returns the output dir."""

    def __init__(self, runner, pipelines, tmp_factory):
        self.runner, self.pipelines, self.tmp_factory = runner, pipelines, tmp_factory
        self.cache = {}

    def __call__(self, kind, *flags):
        key = (kind,) + tuple(flags)
        if key not in self.cache:
            out = self.tmp_factory.mktemp(f"vae-{kind}")
            check_ok(run_cli(self.runner, self.pipelines[kind], out, *flags))
            self.cache[key] = out
        return self.cache[key]


@pytest.fixture(scope="session")
def convert_vae(sdcoreml, pipelines, tmp_path_factory):
    return VaeConverter(sdcoreml, pipelines, tmp_path_factory)


def psnr(ref, cand):
    """Apple's compute_psnr (anchor §13): a reference, b candidate."""
    a = np.asarray(ref, dtype=np.float64).ravel()
    b = np.asarray(cand, dtype=np.float64).ravel()
    rmse = np.sqrt(np.mean((a - b) ** 2))
    return 20 * np.log10((np.abs(b).max() + 1e-5) / (rmse + 1e-10))


def interpret(sdcoreml, pkg, inputs, tmp_path):
    """Runs `sdcoreml run PKG --input NAME=FILE.npy ... -o DIR`; returns {output name: array}.
    (The interpreter is built: a failing `sdcoreml run` fails the test, never skips it.)"""
    d = Path(tmp_path) / ("run-" + Path(pkg).stem)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    args = ["run", pkg]
    for name, value in inputs.items():
        f = d / f"in-{name}.npy"
        np.save(f, value)
        args += ["--input", f"{name}={f}"]
    outdir = d / "out"
    check_ok(sdcoreml(*args, "-o", outdir))
    return {p.stem: np.load(p) for p in outdir.glob("*.npy")}


def fp16_exact(x):
    """Rounds float32 values to float16 and back, so that an fp16 input feature and the
    float32 reference see the same numbers."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


def copy_pipeline(src, dst):
    shutil.copytree(src, dst, symlinks=False)
    return Path(dst)


def rewrite_safetensors(path, edit):
    """Loads a safetensors file, applies edit({name: np.ndarray}) -> dict, saves it back."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path))
    save_file(edit(dict(tensors)), str(path), metadata={"format": "pt"})


def const_dtypes_ok(info, dtype):
    """Every weight-sized const is stored as `dtype` ('fp16' or 'fp32')."""
    other = "fp32" if dtype == "fp16" else "fp16"
    return info.const_dtypes.get(dtype, 0) > 0 and info.const_dtypes.get(other, 0) == 0


# ---------------------------------------------------------------------------------------------
# Contract


def vae_config(pipeline_dir):
    return json.loads((Path(pipeline_dir) / "vae" / "config.json").read_text())


def unet_latent(pipeline_dir):
    return json.loads((Path(pipeline_dir) / "unet" / "config.json").read_text())["sample_size"]


def vae_scale(cfg):
    return 2 ** (len(cfg["block_out_channels"]) - 1)


def expected(pipeline_dir, in_dtype, latent=None, decoder=True):
    cfg = vae_config(pipeline_dir)
    h, w = latent or (unet_latent(pipeline_dir),) * 2
    s, L = vae_scale(cfg), cfg["latent_channels"]
    if decoder:
        return [("z", (1, L, h, w), in_dtype)], [("image", (1, cfg["out_channels"], s * h, s * w), "FLOAT32")]
    return [("x", (1, cfg["in_channels"], s * h, s * w), in_dtype)], [("latent", (1, 2 * L, h, w), "FLOAT32")]


# (kind, flags, decoder input dtype and weights, encoder input dtype and weights)
CONTRACT_CASES = [
    ("sd1", [], ("FLOAT16", "fp16"), ("FLOAT16", "fp16")),
    ("sd1", ["--compute-precision", "FLOAT32"], ("FLOAT16", "fp32"), ("FLOAT16", "fp32")),
    ("sd2", [], ("FLOAT16", "fp16"), ("FLOAT16", "fp16")),
    # The anchor's SDXL rule: float32 input and precision for both (the SDXL VAE overflows in fp16)
    ("sdxl", ["--xl-version"], ("FLOAT32", "fp32"), ("FLOAT32", "fp32")),
    ("sdxl-refiner", ["--xl-version"], ("FLOAT32", "fp32"), ("FLOAT32", "fp32")),
]


@pytest.mark.parametrize("kind,flags,dec,enc", CONTRACT_CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_contract(convert_vae, pipelines, kind, flags, dec, enc):
    out = convert_vae(kind, "--convert-vae-decoder", "--convert-vae-encoder", *flags)
    mv = pipelines[kind].name
    assert sorted(os.listdir(out)) == sorted([package_name(mv, "vae_decoder"), package_name(mv, "vae_encoder")])
    xl = "--xl-version" in flags
    for sub, (in_dtype, wdtype) in (("vae_decoder", dec), ("vae_encoder", enc)):
        ins, outs = expected(pipelines[kind], in_dtype, decoder=sub == "vae_decoder")
        info = coreml_checks.load_and_check(str(out / package_name(mv, sub)), inputs=ins, outputs=outs, spec_version=7)
        assert const_dtypes_ok(info, wdtype), f"{sub}: {info.const_dtypes}"
        md = info.metadata
        assert md["license"] == (LICENSE_XL if xl else LICENSE_SD)
        assert md["version"] == mv
        assert md["author"] == f"Please refer to the Model Card available at huggingface.co/{mv}"
        # pure ConvNet plus one attention: no einsum, and the mid-block attention is there
        assert info.op_histogram["matmul"] == 2 and info.op_histogram["softmax"] == 1, info.op_histogram


def test_latent_size_flags(convert_vae, pipelines):
    out = convert_vae("sd1", "--convert-vae-decoder", "--convert-vae-encoder", "--latent-h", "8", "--latent-w", "12")
    mv = pipelines["sd1"].name
    for sub in ("vae_decoder", "vae_encoder"):
        ins, outs = expected(pipelines["sd1"], "FLOAT16", latent=(8, 12), decoder=sub == "vae_decoder")
        coreml_checks.load_and_check(str(out / package_name(mv, sub)), inputs=ins, outputs=outs)


def test_min_deployment_target(convert_vae, pipelines):
    out = convert_vae("sd1", "--convert-vae-decoder", "--min-deployment-target", "iOS17")
    info = coreml_checks.load_and_check(str(out / package_name(pipelines["sd1"].name, "vae_decoder")))
    assert info.spec_version == 8


def test_scaling_factor_not_inside(sdcoreml, convert_vae, pipelines, tmp_path):
    """The scaling factor stays outside the model (callers divide by it first, anchor §4.4):
    the same VAE with another scaling_factor gives a byte-identical package."""
    root = copy_pipeline(pipelines["sd1"], tmp_path / pipelines["sd1"].name)
    cfg_path = root / "vae" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["scaling_factor"] = 0.5
    cfg_path.write_text(json.dumps(cfg))
    out = tmp_path / "out"
    check_ok(run_cli(sdcoreml, root, out, "--convert-vae-decoder", "--convert-vae-encoder"))
    assert coreml_checks.tree_bytes(out) == coreml_checks.tree_bytes(
        convert_vae("sd1", "--convert-vae-decoder", "--convert-vae-encoder"))


def test_existing_package_is_kept(sdcoreml, pipelines, tmp_path):
    out = tmp_path / "out"
    check_ok(run_cli(sdcoreml, pipelines["sd1"], out, "--convert-vae-decoder"))
    before, _ = coreml_checks.tree_bytes(out)
    check_ok(run_cli(sdcoreml, pipelines["sd1"], out, "--convert-vae-decoder", "--compute-precision", "FLOAT32"))
    after, _ = coreml_checks.tree_bytes(out)
    assert before == after


def test_deterministic(convert_vae, sdcoreml, pipelines, tmp_path):
    a = convert_vae("sdxl", "--convert-vae-decoder", "--convert-vae-encoder", "--xl-version")
    check_ok(run_cli(sdcoreml, pipelines["sdxl"], tmp_path / "b", "--convert-vae-decoder", "--convert-vae-encoder",
                     "--xl-version"))
    assert coreml_checks.tree_bytes(a) == coreml_checks.tree_bytes(tmp_path / "b")


# ---------------------------------------------------------------------------------------------
# Errors


def test_sdxl_needs_xl_version(sdcoreml, pipelines, tmp_path):
    r = run_cli(sdcoreml, pipelines["sdxl"], tmp_path / "out", "--convert-vae-decoder")
    assert r.returncode != 0 and "--xl-version" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_xl_version_on_sd1_refused(sdcoreml, pipelines, tmp_path):
    r = run_cli(sdcoreml, pipelines["sd1"], tmp_path / "out", "--convert-vae-encoder", "--xl-version")
    assert r.returncode != 0 and "not an SDXL pipeline" in r.stderr, r.stderr


def test_custom_vae_missing(sdcoreml, pipelines, tmp_path):
    missing = tmp_path / "no-such-vae"
    r = run_cli(sdcoreml, pipelines["sd1"], tmp_path / "out", "--convert-vae-decoder", "--custom-vae-version",
                str(missing))
    assert r.returncode != 0 and "no-such-vae" in r.stderr, r.stderr


def test_custom_vae_without_config(sdcoreml, pipelines, tmp_path):
    empty = tmp_path / "empty-vae"
    empty.mkdir()
    r = run_cli(sdcoreml, pipelines["sd1"], tmp_path / "out", "--convert-vae-decoder", "--custom-vae-version",
                str(empty))
    assert r.returncode != 0 and "empty-vae" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------
# --custom-vae-version


def weights_of(out, mv, sub):
    return (Path(out) / package_name(mv, sub) / WEIGHT_BIN).read_bytes()


@pytest.mark.parametrize("layout", ["pipeline", "root", "hub"])
def test_custom_vae_replaces_the_vae(sdcoreml, convert_vae, pipelines, tmp_path, layout):
    """sd1 with sd2's VAE gives exactly the weights of sd2's own VAE conversion (same latent
    size), whether the custom VAE is a pipeline folder (vae/), a bare AutoencoderKL folder
    (config.json at its root) or a Hub id in the cache."""
    env = None
    if layout == "pipeline":
        custom = str(pipelines["sd2"].resolve())
    elif layout == "root":
        custom = str(shutil.copytree(pipelines["sd2"] / "vae", tmp_path / "bare-vae"))
    else:
        from test_hub_cache import make_hub_cache

        make_hub_cache(tmp_path / "hf", "testorg/tiny-vae", pipelines["sd2"] / "vae")
        custom, env = "testorg/tiny-vae", {"HF_HOME": str(tmp_path / "hf")}
    out = tmp_path / "out"
    src = pipelines["sd1"]
    r = sdcoreml("--model-version", src.name, "-o", out, "--convert-vae-decoder", "--convert-vae-encoder",
                 "--custom-vae-version", custom, cwd=src.parent, env=env)
    check_ok(r)
    ref = convert_vae("sd2", "--convert-vae-decoder", "--convert-vae-encoder")
    for sub in ("vae_decoder", "vae_encoder"):
        assert weights_of(out, src.name, sub) == weights_of(ref, pipelines["sd2"].name, sub), sub
        assert weights_of(out, src.name, sub) != weights_of(convert_vae("sd1", "--convert-vae-decoder",
                                                                         "--convert-vae-encoder"), src.name, sub)
        info = coreml_checks.load_and_check(str(out / package_name(src.name, sub)))
        assert info.metadata["version"] == src.name  # the anchor names the pipeline, not the VAE


def test_custom_vae_lifts_sdxl_decoder_fp32_rule(convert_vae, pipelines):
    """With --custom-vae-version (e.g. madebyollin/sdxl-vae-fp16-fix) the SDXL decoder is
    float16 again; the encoder stays float32 whenever --xl-version."""
    custom = str((pipelines["sdxl"] / "vae").resolve())
    out = convert_vae("sdxl", "--convert-vae-decoder", "--convert-vae-encoder", "--xl-version",
                      "--custom-vae-version", custom)
    mv = pipelines["sdxl"].name
    for sub, dtype, wd in (("vae_decoder", "FLOAT16", "fp16"), ("vae_encoder", "FLOAT32", "fp32")):
        ins, outs = expected(pipelines["sdxl"], dtype, decoder=sub == "vae_decoder")
        info = coreml_checks.load_and_check(str(out / package_name(mv, sub)), inputs=ins, outputs=outs)
        assert const_dtypes_ok(info, wd), f"{sub}: {info.const_dtypes}"
        assert info.metadata["license"] == LICENSE_XL


# ---------------------------------------------------------------------------------------------
# Legacy attention names (VAEs saved by diffusers <= 0.10) and LDM's conv-shaped projections

LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def legacy_copy(src, dst, conv_shaped):
    root = copy_pipeline(src, dst)

    def edit(t):
        out = {}
        for k, v in t.items():
            for new, old in LEGACY.items():
                tag = f".attentions.0.{new}."
                if tag in k:
                    k = k.replace(tag, f".attentions.0.{old}.")
                    if conv_shaped and v.ndim == 2:
                        v = v.reshape(*v.shape, 1, 1)
            out[k] = v
        return out

    rewrite_safetensors(root / "vae" / "diffusion_pytorch_model.safetensors", edit)
    return root


@pytest.mark.parametrize("conv_shaped", [False, True], ids=["linear", "conv1x1"])
def test_legacy_attention_names(sdcoreml, convert_vae, pipelines, tmp_path, conv_shaped):
    root = legacy_copy(pipelines["sd1"], tmp_path / "tiny-sd", conv_shaped)
    from safetensors import safe_open

    with safe_open(str(root / "vae" / "diffusion_pytorch_model.safetensors"), "np") as f:
        names = list(f.keys())
    assert any(".attentions.0.query." in n for n in names) and not any(".to_q." in n for n in names)
    out = tmp_path / "out"
    check_ok(run_cli(sdcoreml, root, out, "--convert-vae-decoder", "--convert-vae-encoder"))
    ref = convert_vae("sd1", "--convert-vae-decoder", "--convert-vae-encoder")
    mv = pipelines["sd1"].name
    for sub in ("vae_decoder", "vae_encoder"):
        coreml_checks.load_and_check(str(out / package_name(root.name, sub)))
        assert weights_of(out, root.name, sub) == weights_of(ref, mv, sub), sub


def test_missing_attention_weights_named(sdcoreml, pipelines, tmp_path):
    root = copy_pipeline(pipelines["sd1"], tmp_path / "tiny-sd")
    rewrite_safetensors(root / "vae" / "diffusion_pytorch_model.safetensors",
                        lambda t: {k: v for k, v in t.items() if "decoder.mid_block.attentions.0.to_q" not in k})
    r = run_cli(sdcoreml, root, tmp_path / "out", "--convert-vae-decoder")
    assert r.returncode != 0, r.stderr
    assert "decoder.mid_block.attentions.0.to_q.weight" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------
# Numbers: the reference interpreter against diffusers' AutoencoderKL in float32


def diffusers_vae(vae_dir):
    import torch
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(vae_dir), torch_dtype=torch.float32).eval()


def reference_decode(vae, z):
    import torch

    with torch.no_grad():
        return vae.decoder(vae.post_quant_conv(torch.from_numpy(z))).numpy()


def reference_encode(vae, x):
    import torch

    with torch.no_grad():
        return vae.quant_conv(vae.encoder(torch.from_numpy(x))).numpy()


# (kind, flags, min PSNR). Measured (decoder / encoder, interpreter vs diffusers float32):
# sd1 float16 66.2 / 67.9, sd1 float32 131.8 / 131.5, sd1 8x12 64.2 / 67.3, sd2 65.5 / 66.8,
# sdxl (float32) 130.0 / 130.9 dB. Bars: 110 dB for float32 packages, 55 dB for float16.
NUMBER_CASES = [
    ("sd1", [], 55.0),
    ("sd1", ["--compute-precision", "FLOAT32"], 110.0),
    ("sd1", ["--latent-h", "8", "--latent-w", "12"], 55.0),
    ("sd2", [], 55.0),
    ("sdxl", ["--xl-version"], 110.0),
]


@pytest.mark.parametrize("kind,flags,min_psnr", NUMBER_CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_numbers_match_diffusers(sdcoreml, convert_vae, pipelines, tmp_path, kind, flags, min_psnr):
    out = convert_vae(kind, "--convert-vae-decoder", "--convert-vae-encoder", *flags)
    mv = pipelines[kind].name
    vae = diffusers_vae(pipelines[kind] / "vae")
    dec = coreml_checks.load_and_check(str(out / package_name(mv, "vae_decoder")))
    enc = coreml_checks.load_and_check(str(out / package_name(mv, "vae_encoder")))
    rng = np.random.default_rng(1234)
    z = fp16_exact(rng.standard_normal(dec.inputs[0].shape))  # latents / scaling_factor are ~N(0, 1)
    x = fp16_exact(rng.uniform(-1, 1, enc.inputs[0].shape))  # images in [-1, 1]
    got = interpret(sdcoreml, out / package_name(mv, "vae_decoder"), {"z": z}, tmp_path)["image"]
    ref = reference_decode(vae, z)
    assert got.shape == ref.shape and got.dtype == np.float32
    v = psnr(ref, got)
    print(f"PSNR vae_decoder {kind} {flags}: {v:.1f} dB")
    assert v >= min_psnr, f"vae_decoder {kind} {flags}: PSNR {v:.1f} dB < {min_psnr}"
    got = interpret(sdcoreml, out / package_name(mv, "vae_encoder"), {"x": x}, tmp_path)["latent"]
    ref = reference_encode(vae, x)
    assert got.shape == ref.shape and got.dtype == np.float32
    v = psnr(ref, got)
    print(f"PSNR vae_encoder {kind} {flags}: {v:.1f} dB")
    assert v >= min_psnr, f"vae_encoder {kind} {flags}: PSNR {v:.1f} dB < {min_psnr}"


def test_legacy_names_same_numbers(sdcoreml, pipelines, tmp_path):
    """A legacy-named copy decodes exactly as the original does (same package weights and
    program, so the interpreter's outputs are bit-identical)."""
    root = legacy_copy(pipelines["sd1"], tmp_path / "tiny-sd", conv_shaped=False)
    a, b = tmp_path / "a", tmp_path / "b"
    check_ok(run_cli(sdcoreml, root, a, "--convert-vae-decoder"))
    check_ok(run_cli(sdcoreml, pipelines["sd1"], b, "--convert-vae-decoder"))
    z = fp16_exact(np.random.default_rng(7).standard_normal((1, 4, 16, 16)))
    ga = interpret(sdcoreml, a / package_name(root.name, "vae_decoder"), {"z": z}, tmp_path / "ra")["image"]
    gb = interpret(sdcoreml, b / package_name(pipelines["sd1"].name, "vae_decoder"), {"z": z}, tmp_path / "rb")["image"]
    assert np.array_equal(ga, gb)
    vae = diffusers_vae(root / "vae")  # diffusers renames the legacy keys at load time
    assert psnr(reference_decode(vae, z), ga) >= 40.0
