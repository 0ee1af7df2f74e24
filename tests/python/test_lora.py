"""--lora FILE[:SCALE] (issue 12 item 3): kohya and diffusers/PEFT LoRAs merged into the UNet and
text encoders while the weights stream. Oracle: diffusers' own loader, pipe.load_lora_weights +
fuse_lora(lora_scale=...) in float32, on the tiny SD 1.x and SDXL pipelines; the packages
(FLOAT32, ORIGINAL attention) run in sdcoreml's interpreter on the same inputs. The fixtures
(tests/fixtures/make_loras.py) are validated here too: diffusers must change exactly the
weights their keys name, by the LoRA formula."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_np
from safetensors.torch import save_file

from conftest import REPO, check_ok, package_name

spec = importlib.util.spec_from_file_location("make_loras", REPO / "tests" / "fixtures" / "make_loras.py")
make_loras = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_loras)
make_single_files = make_loras.make_single_files
WEIGHT_BIN = Path("Data/com.apple.CoreML/weights/weight.bin")

# name -> (pipeline kind, format, rank, seed)
LORAS = {
    "sd1-peft": ("sd1", "peft", 4, 1),
    "sd1-kohya": ("sd1", "kohya", 2, 2),
    "sdxl-kohya": ("sdxl", "kohya", 4, 3),
    "sdxl-peft": ("sdxl", "peft", 3, 4),
    # the kohya files above with their UNet module paths in LDM/SGM names (same tensors)
    "sd1-kohya-ldm": ("sd1", "kohya-ldm", 2, 2),
    "sdxl-kohya-ldm": ("sdxl", "kohya-ldm", 4, 3),
}
ENCODERS = {"sd1": ["text_encoder"], "sdxl": ["text_encoder", "text_encoder_2"]}
# Measured (interpreter vs diffusers float32 with the LoRA fused): UNet 126.1-127.0 dB, text
# encoders 137.1-145.5 dB; with vs without the LoRA: 8.1-21.6 dB. Bars: 60 dB against diffusers,
# 40 dB apart.
MIN_PSNR, MAX_PSNR_APART = 60.0, 40.0


def psnr(a, b):
    """The anchor's compute_psnr: a = reference, b = candidate."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return 20 * np.log10((np.abs(b).max() + 1e-5) / (np.sqrt(((a - b) ** 2).mean()) + 1e-10))


@pytest.fixture(scope="module")
def lora_files(pipelines, tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    out = {}
    for name, (kind, fmt, rank, seed) in LORAS.items():
        out[name] = d / f"{name}.safetensors"
        save_file(make_loras.make(pipelines[kind], fmt, rank, seed), str(out[name]), metadata={"format": "pt"})
    return out


def load_pipe(pipeline):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(str(pipeline), torch_dtype=torch.float32)


def components(pipe):
    return [c for c in ("unet", "text_encoder", "text_encoder_2") if getattr(pipe, c, None) is not None]


def is_ldm_style(path):
    return any(k.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_")) for k in load_np(str(path)))


def lora_input(pipe, path):
    """What diffusers' loader is given: the file; for LDM-style kohya names, the state dict after
    diffusers' own SGM block remap with the UNet's config, which its SDXL loader applies itself
    and its SD 1.x loader (0.30) does not (its kohya key conversion then renames the layers)."""
    if getattr(pipe, "text_encoder_2", None) is not None or not is_ldm_style(path):
        return str(path)
    from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers
    from safetensors.torch import load_file

    return _maybe_map_sgm_blocks_to_diffusers(load_file(str(path)), pipe.unet.config)


def fuse(pipe, loras):
    """diffusers' merge of each (file, scale) in turn: load, fuse at the scale, drop the layers."""
    for path, scale in loras:
        pipe.load_lora_weights(lora_input(pipe, path))
        pipe.fuse_lora(lora_scale=scale, components=components(pipe))
        pipe.unload_lora_weights()
    return pipe


def expected_deltas(pipe, pipeline, path, scale):
    """{component.weight: scale·alpha/rank·up·down} from the file's keys, kohya's rule alpha =
    rank when absent; kohya module paths matched to the weight whose dotted name they spell, or
    whose LDM name (make_single_files.py's map, checked by diffusers' from_single_file)."""
    sd = load_np(str(path))
    ldm = {m: n.replace(".", "_") for m, n in make_loras.ldm_modules(pipeline).items()}
    prefixes = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2"}
    names = {c: [n for n in getattr(pipe, c).state_dict() if n.endswith(".weight")] for c in components(pipe)}
    out = {}
    for key in sd:
        m = re.match(r"(.*)\.(lora_A|lora_down)\.weight$", key)
        if not m:
            continue
        base = m.group(1)
        down = sd[key].astype(np.float32)
        up = sd[base + (".lora_B.weight" if m.group(2) == "lora_A" else ".lora_up.weight")].astype(np.float32)
        r = down.shape[0]
        alpha = float(sd[base + ".alpha"]) if base + ".alpha" in sd else r
        if base.startswith("lora_"):
            p = next(p for p in prefixes if base.startswith(p))
            comp, module = prefixes[p], base[len(p):]
            (name,) = [n for n in names[comp] if n[: -len(".weight")].replace(".", "_") == module
                       or comp == "unet" and ldm.get(n[: -len(".weight")]) == module]
        else:
            comp, name = base.split(".", 1)[0], base.split(".", 1)[1] + ".weight"
        out[f"{comp}.{name}"] = scale * alpha / r * (up.reshape(up.shape[0], r) @ down.reshape(r, -1))
    return out


@pytest.mark.parametrize("name", list(LORAS))
def test_fixture_is_what_diffusers_merges(pipelines, lora_files, name):
    """The fixture's own oracle check: diffusers changes exactly the weights the keys name, by the
    formula (so a key diffusers ignored, or an alpha it reads otherwise, cannot pass unseen)."""
    kind = LORAS[name][0]
    pipe = load_pipe(pipelines[kind])
    before = {c: {k: v.clone() for k, v in getattr(pipe, c).state_dict().items()} for c in components(pipe)}
    fuse(pipe, [(lora_files[name], 0.8)])
    changed = {}
    for c in components(pipe):
        for k, v in getattr(pipe, c).state_dict().items():
            if not torch.equal(v, before[c][k]):
                changed[f"{c}.{k}"] = (v - before[c][k]).numpy()
    expected = expected_deltas(pipe, pipelines[kind], lora_files[name], 0.8)
    assert sorted(changed) == sorted(expected)
    convs = [k for k, v in changed.items() if v.ndim == 4]
    assert any(changed[k].shape[2:] == (3, 3) for k in convs), "no 3x3 convolution LoRA"
    for k, delta in expected.items():
        err = np.abs(changed[k].reshape(delta.shape) - delta).max() / np.abs(delta).max()
        assert err < 1e-5, f"{k}: diffusers' delta differs from the formula by {err:.2g}"
    if LORAS[name][1].startswith("kohya"):
        sd = load_np(str(lora_files[name]))
        alphas = [float(v) for k, v in sd.items() if k.endswith(".alpha")]
        downs = [k for k in sd if k.endswith(".lora_down.weight")]
        assert len(alphas) < len(downs) and len(set(alphas)) == 3, "alphas: absent, = rank and others"


def convert(sdcoreml, pipeline, out, loras, *flags):
    args = ["--model-version", pipeline.name, "-o", out, "--compute-precision", "FLOAT32",
            "--attention-implementation", "ORIGINAL", *flags]
    for path, scale in loras:
        args += ["--lora", f"{path}:{scale}" if scale is not None else str(path)]
    if (pipeline / "text_encoder_2").is_dir():
        args.append("--xl-version")
    return sdcoreml(*args, cwd=pipeline.parent)


def run_package(sdcoreml, pkg, feeds, tmp):
    tmp.mkdir(parents=True, exist_ok=True)
    args = ["run", pkg]
    for name, value in feeds.items():
        np.save(tmp / f"in-{name}.npy", value)
        args += ["--input", f"{name}={tmp / f'in-{name}.npy'}"]
    check_ok(sdcoreml(*args, "-o", tmp / "out"))
    return {p.stem: np.load(p) for p in (tmp / "out").glob("*.npy")}


def unet_feeds(pipe, xl):
    cfg = pipe.unet.config
    rng = np.random.default_rng(0)
    s = cfg.sample_size
    feeds = {"sample": rng.random((2, cfg.in_channels, s, s), dtype=np.float32),
             "timestep": np.array([981, 17], np.float32),
             "encoder_hidden_states": rng.random((2, cfg.cross_attention_dim, 1, 77), dtype=np.float32)}
    if xl:
        text_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        feeds["time_ids"] = np.tile(np.array([96, 80, 8, 4, 64, 48], np.float32), (2, 1))
        feeds["text_embeds"] = rng.random((2, text_dim), dtype=np.float32)
    return {k: v.astype(np.float16) for k, v in feeds.items()}  # the package's input dtype


def unet_reference(pipe, feeds):
    f = {k: torch.from_numpy(v.astype(np.float32)) for k, v in feeds.items()}
    ehs = f["encoder_hidden_states"].squeeze(2).permute(0, 2, 1)
    extra = {}
    if "time_ids" in f:
        extra["added_cond_kwargs"] = {"time_ids": f["time_ids"], "text_embeds": f["text_embeds"]}
    with torch.no_grad():
        return {"noise_pred": pipe.unet(f["sample"], f["timestep"], encoder_hidden_states=ehs, **extra).sample.numpy()}


def encoder_reference(pipe, sub, xl):
    tok = pipe.tokenizer if sub == "text_encoder" else pipe.tokenizer_2
    ids = tok("a photo of an astronaut riding a horse on mars", padding="max_length", max_length=tok.model_max_length,
              truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        o = getattr(pipe, sub)(ids, output_hidden_states=True, return_dict=True)
    if xl:
        pooled = o.text_embeds if hasattr(o, "text_embeds") else o.pooler_output
        ref = {"hidden_embeds": o.hidden_states[-2].numpy(), "pooled_outputs": pooled.numpy()}
    else:
        ref = {"last_hidden_state": o.last_hidden_state.numpy(), "pooled_outputs": o.pooler_output.numpy()}
    return {"input_ids": ids.numpy().astype(np.float32)}, ref


def references(pipeline, loras):
    """{package submodule: (feeds, outputs)} of diffusers in float32 with the LoRAs fused."""
    pipe = fuse(load_pipe(pipeline), loras)
    xl = getattr(pipe, "text_encoder_2", None) is not None
    feeds = unet_feeds(pipe, xl)
    out = {"unet": (feeds, unet_reference(pipe, feeds))}
    for sub in ENCODERS["sdxl" if xl else "sd1"]:
        out[sub] = encoder_reference(pipe, sub, xl)
    return out


def compare(sdcoreml, pipeline, out, loras, tmp):
    """PSNR of every output of every package against diffusers with the LoRAs, and against
    diffusers without them."""
    want, plain = references(pipeline, loras), references(pipeline, [])
    result = {}
    for sub, (feeds, ref) in want.items():
        got = run_package(sdcoreml, out / package_name(pipeline.name, sub), feeds, tmp / sub)
        assert sorted(got) == sorted(ref)
        for name in ref:
            result[f"{sub}.{name}"] = (psnr(ref[name], got[name]), psnr(plain[sub][1][name], got[name]),
                                       psnr(plain[sub][1][name], ref[name]))
    return result


def check_psnrs(result, label):
    for output, (with_lora, without, apart) in result.items():
        print(f"PSNR {label} {output}: {with_lora:.1f} dB vs diffusers+LoRA, {without:.1f} dB vs diffusers without, "
              f"diffusers with/without {apart:.1f} dB")
        assert with_lora >= MIN_PSNR, f"{label} {output}: {with_lora:.1f} dB < {MIN_PSNR}"
        assert without < MAX_PSNR_APART and apart < MAX_PSNR_APART, f"{label} {output}: the LoRA changes too little"


@pytest.mark.parametrize("name,scale", [("sd1-peft", None), ("sd1-kohya", 0.7), ("sdxl-kohya", 1.3), ("sdxl-peft", 0.6),
                                        ("sd1-kohya-ldm", 0.7), ("sdxl-kohya-ldm", 1.3)])
def test_outputs_match_diffusers_fuse_lora(sdcoreml, pipelines, lora_files, tmp_path, name, scale):
    pipeline = Path(pipelines[LORAS[name][0]])
    loras = [(lora_files[name], scale)]
    check_ok(convert(sdcoreml, pipeline, tmp_path / "out", loras, "--convert-unet", "--convert-text-encoder"))
    result = compare(sdcoreml, pipeline, tmp_path / "out", [(p, 1.0 if s is None else s) for p, s in loras], tmp_path)
    check_psnrs(result, name)


def test_two_loras_with_scales(sdcoreml, pipelines, lora_files, tmp_path):
    pipeline = Path(pipelines["sd1"])
    loras = [(lora_files["sd1-kohya"], 0.7), (lora_files["sd1-peft"], -0.4)]
    check_ok(convert(sdcoreml, pipeline, tmp_path / "out", loras, "--convert-unet", "--convert-text-encoder"))
    check_psnrs(compare(sdcoreml, pipeline, tmp_path / "out", loras, tmp_path), "sd1 kohya:0.7 + peft:-0.4")
    # each LoRA counts: the same run without the second one is another model
    check_ok(convert(sdcoreml, pipeline, tmp_path / "one", loras[:1], "--convert-unet"))
    pkg = package_name(pipeline.name, "unet")
    feeds = unet_feeds(load_pipe(pipeline), False)
    a = run_package(sdcoreml, tmp_path / "out" / pkg, feeds, tmp_path / "a")["noise_pred"]
    b = run_package(sdcoreml, tmp_path / "one" / pkg, feeds, tmp_path / "b")["noise_pred"]
    assert psnr(a, b) < MAX_PSNR_APART


def test_options_in_metadata(sdcoreml, pipelines, lora_files, tmp_path):
    pipeline = Path(pipelines["sd1"])
    loras = [(lora_files["sd1-kohya"], 0.7), (lora_files["sd1-peft"], None)]
    check_ok(convert(sdcoreml, pipeline, tmp_path / "out", loras, "--convert-unet"))
    r = check_ok(sdcoreml("inspect", "--json", tmp_path / "out" / package_name(pipeline.name, "unet")))
    options = json.loads(r.stdout)["metadata"]["user_defined"]["com.github.sdcoreml.options"]
    assert f"--lora {lora_files['sd1-kohya']}:0.7 --lora {lora_files['sd1-peft']}:1 " in options


def test_older_diffusers_spelling_merges_the_same(sdcoreml, pipelines, lora_files, tmp_path):
    """diffusers' pre-PEFT keys (<module>.lora.down.weight / .lora.up.weight), which its loader
    still reads: the same LoRA so spelled gives the same package bytes as the PEFT spelling."""
    pipeline = Path(pipelines["sd1"])
    sd = load_np(str(lora_files["sd1-peft"]))
    old = {k.replace(".lora_A.weight", ".lora.down.weight").replace(".lora_B.weight", ".lora.up.weight"): v
           for k, v in sd.items()}
    assert sorted(old) != sorted(sd)
    older = write_lora(tmp_path / "older.safetensors", old)
    for name, lora in (("peft", lora_files["sd1-peft"]), ("older", older)):
        check_ok(convert(sdcoreml, pipeline, tmp_path / name, [(lora, 0.5)], "--convert-unet", "--convert-text-encoder"))
    for sub in ("unet", "text_encoder"):
        weights = [(tmp_path / n / package_name(pipeline.name, sub) / "Data" / "com.apple.CoreML" / "weights" / "weight.bin")
                   .read_bytes() for n in ("peft", "older")]
        assert weights[0] == weights[1], sub


def weight_bin(out, pipeline, sub):
    return (out / package_name(pipeline.name, sub) / WEIGHT_BIN).read_bytes()


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_ldm_style_names_merge_the_same(sdcoreml, pipelines, lora_files, tmp_path, kind):
    """The kohya file with LDM-style UNet paths (input_blocks_4_1_…, middle_block_1_…,
    output_blocks_…, in_layers_2, emb_layers_1, skip_connection) gives the same package bytes as
    the file with diffusers-style paths it was renamed from."""
    pipeline = Path(pipelines[kind])
    for name in (f"{kind}-kohya", f"{kind}-kohya-ldm"):
        check_ok(convert(sdcoreml, pipeline, tmp_path / name, [(lora_files[name], 0.9)], "--convert-unet"))
    assert weight_bin(tmp_path / f"{kind}-kohya", pipeline, "unet") == weight_bin(tmp_path / f"{kind}-kohya-ldm", pipeline, "unet")


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_single_file_model_takes_the_lora(sdcoreml, pipelines, lora_files, tmp_path, kind):
    """--lora on a single-file model (--model-version FILE.safetensors): the pipeline written in
    the LDM/SGM layout (make_single_files.py, read back by diffusers' from_single_file first)
    with the LoRAs gives the folder's packages with the same LoRAs, byte for byte (SDXL's second
    text encoder is OpenCLIP there: q/k/v are row slices of a fused in_proj)."""
    folder = Path(pipelines[kind])
    path = tmp_path / f"{kind}.safetensors"
    save_file({k: v.contiguous() for k, v in make_single_files.checkpoint(kind, folder).items()}, str(path))
    make_single_files.validate(path, kind, folder)
    loras = [(lora_files[f"{kind}-kohya-ldm"], 0.8), (lora_files[f"{kind}-peft"], -0.5)]
    check_ok(convert(sdcoreml, folder, tmp_path / "folder", loras, "--convert-unet", "--convert-text-encoder"))
    args = ["--model-version", path.name, "-o", tmp_path / "file", "--config", folder, "--compute-precision", "FLOAT32",
            "--attention-implementation", "ORIGINAL", "--convert-unet", "--convert-text-encoder"]
    for lora, scale in loras:
        args += ["--lora", f"{lora}:{scale}"]
    check_ok(sdcoreml(*args, *(["--xl-version"] if kind == "sdxl" else []), cwd=tmp_path))
    for sub in ["unet"] + ENCODERS[kind]:
        got = (tmp_path / "file" / package_name(path.stem, sub) / WEIGHT_BIN).read_bytes()
        assert got == weight_bin(tmp_path / "folder", folder, sub), f"{kind} {sub}: weight.bin from the file differs"
    # the LoRAs count: without them the file gives other weights
    check_ok(sdcoreml("--model-version", path.name, "-o", tmp_path / "plain", "--config", folder, "--compute-precision",
                      "FLOAT32", "--convert-unet", *(["--xl-version"] if kind == "sdxl" else []), cwd=tmp_path))
    assert (tmp_path / "plain" / package_name(path.stem, "unet") / WEIGHT_BIN).read_bytes() != weight_bin(
        tmp_path / "folder", folder, "unet")


EDGE_MODULES = [r"^time_embedding\.linear_[12]$", r"^add_embedding\.linear_[12]$", r"^conv_(in|out)$",
                r"downsamplers\.0\.conv$", r"upsamplers\.0\.conv$", r"^mid_block\.resnets\.1\.conv2$"]


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_ldm_style_edge_modules_merge_the_same(sdcoreml, pipelines, tmp_path, kind):
    """The LDM names outside the blocks' resnets and transformers (time_embed_0/2, SDXL's
    label_emb_0_0/2, input_blocks_0_0, out_2, the downsamplers' op, the upsamplers' conv after a
    lone resnet (SD 1.x: output_blocks_1_1_conv) or after an attention (SDXL: output_blocks_2_2_conv),
    middle_block_2_out_layers_3): a kohya LoRA on them in LDM
    names, renamed by make_single_files.py's map, gives the package of the same LoRA in
    diffusers names. (diffusers 0.30's own LDM LoRA conversion renames none of the modules
    outside the blocks, takes input_blocks_0_0 for a down block and an upsampler after a lone
    resnet for an attention, so the oracle here is the diffusers-style file.)"""
    pipeline = Path(pipelines[kind])
    weights = make_loras.component_weights(pipeline, "unet")
    ldm = make_loras.ldm_modules(pipeline)
    rng = np.random.default_rng(7)
    files = {"diffusers": {}, "ldm": {}}
    for name in sorted(weights):
        module = name[: -len(".weight")]
        if not name.endswith(".weight") or weights[name].ndim not in (2, 4) or \
                not any(re.search(p, module) for p in EDGE_MODULES):
            continue
        down, up = make_loras.factors(rng, weights[name].astype(np.float32), 2, 2.0)
        for style, path in (("diffusers", module), ("ldm", ldm[module])):
            base = "lora_unet_" + path.replace(".", "_")
            files[style].update({f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up})
    names = " ".join(files["ldm"])
    for part in ["time_embed_0", "input_blocks_0_0", "out_2", "_0_op.", "middle_block_2_out_layers_3",
                 *(["label_emb_0_0", "_2_conv."] if kind == "sdxl" else ["_1_conv."])]:
        assert part in names, part
    for style, tensors in files.items():
        lora = write_lora(tmp_path / f"{style}.safetensors", tensors)
        check_ok(convert(sdcoreml, pipeline, tmp_path / style, [(lora, 0.9)], "--convert-unet"))
    assert weight_bin(tmp_path / "ldm", pipeline, "unet") == weight_bin(tmp_path / "diffusers", pipeline, "unet")
    check_ok(convert(sdcoreml, pipeline, tmp_path / "plain", [], "--convert-unet"))
    assert weight_bin(tmp_path / "plain", pipeline, "unet") != weight_bin(tmp_path / "ldm", pipeline, "unet")


# ---------------------------------------------------------------------------------------------
# Refusals: one line naming the file (and key), exit 1 (2 for usage), nothing written


def write_lora(path, tensors):
    save_file({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in tensors.items()}, str(path))
    return path


def refused(sdcoreml, pipelines, tmp_path, lora, *expect, code=1, flags=("--convert-unet", "--convert-text-encoder")):
    pipeline = Path(pipelines["sd1"])
    r = convert(sdcoreml, pipeline, tmp_path / "out", [(lora, None)], *flags)
    assert r.returncode == code, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    for e in expect:
        assert e in line, line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    return line


def test_unmatched_keys_are_listed(sdcoreml, pipelines, lora_files, tmp_path):
    sd = load_np(str(lora_files["sd1-peft"]))
    for i, module in enumerate(["to_zz", "to_yy", "to_xx", "to_ww"]):
        base = f"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.{module}"
        sd[f"{base}.lora_A.weight"] = np.ones((4, 32), np.float32)
        sd[f"{base}.lora_B.weight"] = np.ones((32, 4), np.float32)
    lora = write_lora(tmp_path / "unmatched.safetensors", sd)
    refused(sdcoreml, pipelines, tmp_path, lora, str(lora), "4 LoRA modules match no weight of unet",
                   "attn1.to_ww.lora_A.weight", "attn1.to_yy.lora_A.weight", ", …")


def test_kohya_key_matching_no_weight(sdcoreml, pipelines, tmp_path):
    lora = write_lora(tmp_path / "k.safetensors", {"lora_unet_down_blocks_0_attentions_0_bogus.lora_down.weight": np.ones((2, 32)),
                                                  "lora_unet_down_blocks_0_attentions_0_bogus.lora_up.weight": np.ones((32, 2))})
    refused(sdcoreml, pipelines, tmp_path, lora, "1 LoRA modules match no weight of unet", "lora_unet_down_blocks_0_attentions_0_bogus")


@pytest.mark.parametrize("suffix,what", [("hada_w1_a", "LoHa"), ("lokr_w1", "LoKr"), ("lora_mid.weight", "Tucker"),
                                         ("dora_scale", "DoRA"), ("diff", "full weight difference")])
def test_other_adapters_are_refused(sdcoreml, pipelines, tmp_path, suffix, what):
    key = f"lora_unet_down_blocks_0_attentions_0_proj_in.{suffix}"
    lora = write_lora(tmp_path / "lycoris.safetensors", {key: np.ones((2, 32))})
    refused(sdcoreml, pipelines, tmp_path, lora, str(lora), key, what)


def test_ldm_style_kohya_key_matching_no_weight(sdcoreml, pipelines, tmp_path):
    """An LDM-style path whose block maps but whose layer is no weight, and one in the slot of a
    downsampler the tiny SD 1.x (1 resnet per block) has at input_blocks.2: listed by key."""
    keys = ["lora_unet_input_blocks_1_1_bogus", "lora_unet_input_blocks_2_0_in_layers_2"]
    shapes = {"lora_down.weight": (2, 32, 1, 1), "lora_up.weight": (32, 2, 1, 1)}
    lora = write_lora(tmp_path / "ldm.safetensors", {f"{k}.{s}": np.ones(shape) for k in keys for s, shape in shapes.items()})
    refused(sdcoreml, pipelines, tmp_path, lora, str(lora), "2 LoRA modules match no weight of unet", *keys)


def test_ldm_style_names_need_uniform_blocks(sdcoreml, pipelines, tmp_path):
    """LDM numbering counts resnets per block; a UNet whose down blocks differ (diffusers allows
    layers_per_block [1, 2]) has no numbering the table knows: refused naming the key."""
    import shutil

    from diffusers import UNet2DConditionModel

    folder = tmp_path / "uneven"
    shutil.copytree(pipelines["sd1"], folder)
    cfg = {k: v for k, v in json.loads((folder / "unet" / "config.json").read_text()).items() if not k.startswith("_")}
    cfg["layers_per_block"] = [1] + [2] * (len(cfg["down_block_types"]) - 1)
    torch.manual_seed(0)
    UNet2DConditionModel(**cfg).save_pretrained(str(folder / "unet"))
    key = "lora_unet_input_blocks_1_1_proj_in"
    lora = write_lora(tmp_path / "ldm.safetensors", {f"{key}.lora_down.weight": np.ones((2, 32, 1, 1)),
                                                    f"{key}.lora_up.weight": np.ones((32, 2, 1, 1))})
    r = convert(sdcoreml, folder, tmp_path / "out", [(lora, None)], "--convert-unet")
    line = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and key in line and "differ in resnets" in line, line
    assert not (tmp_path / "out").exists()


def test_shapes_that_do_not_fit(sdcoreml, pipelines, tmp_path):
    base = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    lora = write_lora(tmp_path / "bad.safetensors", {f"{base}.lora_A.weight": np.ones((4, 31)), f"{base}.lora_B.weight": np.ones((32, 4))})
    refused(sdcoreml, pipelines, tmp_path, lora, str(lora), "do not fit weight", "[32, 32]")


Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


@pytest.mark.parametrize("tensors,expect", [
    ({f"{Q}.lora_down.weight": torch.ones(2, 32)}, "has a down weight but no up weight"),
    ({f"{Q}.lora_up.weight": torch.ones(32, 2)}, "has an up weight but no down weight"),
    ({f"{Q}.lora_down.weight": torch.ones(0, 32), f"{Q}.lora_up.weight": torch.ones(32, 0)}, "are not LoRA factors"),
    ({f"{Q}.lora_down.weight": torch.ones(2, 32), f"{Q}.lora_up.weight": torch.ones(32, 3)}, "are not LoRA factors"),
    ({f"{Q}.lora_down.weight": torch.ones(2, 32), f"{Q}.lora_up.weight": torch.ones(32, 2, 3)}, "are not LoRA factors"),
    ({f"{Q}.lora_down.weight": torch.ones(2, 32, 3), f"{Q}.lora_up.weight": torch.ones(32, 2)}, "are not LoRA factors"),
    ({f"{Q}.lora_down.weight": torch.ones(2, 32, dtype=torch.int32), f"{Q}.lora_up.weight": torch.ones(32, 2)},
     "must be F32, F16 or BF16"),
    ({f"{Q}.lora_down.weight": torch.ones(2, 32), f"{Q}.lora_up.weight": torch.ones(32, 2),
      f"{Q}.alpha": torch.tensor(2, dtype=torch.int32)}, "must be one finite float"),
    ({f"{Q}.lora_down.weight": torch.ones(2, 32), f"{Q}.lora_up.weight": torch.ones(32, 2),
      f"{Q}.alpha": torch.ones(2)}, "must be one finite float"),
    ({f"{Q}.lora_down.weight": torch.ones(2, 32), f"{Q}.lora_up.weight": torch.ones(32, 2),
      f"{Q}.alpha": torch.tensor(float("inf"))}, "must be one finite float"),
    ({f"{Q}.lora_down.weight": torch.ones(2, 32, 3, 3), f"{Q}.lora_up.weight": torch.ones(32, 2, 1, 1)}, "do not fit weight"),
    ({"lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": torch.ones(2, 288),  # [32, 32, 3, 3] as a matrix
      "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": torch.ones(32, 2)}, "do not fit weight"),
    ({"lora_unet_.lora_down.weight": torch.ones(2, 32)}, "is not a LoRA key"),
    ({"model.diffusion_model.input_blocks.0.0.weight": torch.ones(2, 32)}, "is not a LoRA key"),
    ({"unet.down_blocks.0.attentions.0.proj_in.lora_embedding_A": torch.ones(2, 32)}, "is not a LoRA key"),
])
def test_malformed_loras(sdcoreml, pipelines, tmp_path, tensors, expect):
    lora = tmp_path / "bad.safetensors"
    save_file(tensors, str(lora))
    refused(sdcoreml, pipelines, tmp_path, lora, str(lora), expect)


def test_alpha_without_factors(sdcoreml, pipelines, tmp_path):
    lora = tmp_path / "alpha.safetensors"
    save_file({f"{Q}.alpha": torch.tensor(1.0)}, str(lora))
    line = refused(sdcoreml, pipelines, tmp_path, lora)
    assert line.endswith(f"{lora}: module '{Q[10:]}' "
                         "has an alpha but neither a down nor an up weight"), line


def test_not_a_safetensors_file(sdcoreml, pipelines, tmp_path):
    lora = tmp_path / "junk.safetensors"
    lora.write_bytes(b"\xff" * 64)
    refused(sdcoreml, pipelines, tmp_path, lora, str(lora))


def test_missing_file(sdcoreml, pipelines, tmp_path):
    refused(sdcoreml, pipelines, tmp_path, tmp_path / "nope.safetensors", "nope.safetensors")


def test_text_encoder_2_keys_on_sd1(sdcoreml, pipelines, lora_files, tmp_path):
    sd = {k.replace("lora_te_", "lora_te2_"): v for k, v in load_np(str(lora_files["sd1-kohya"])).items()}
    lora = write_lora(tmp_path / "te2.safetensors", sd)
    refused(sdcoreml, pipelines, tmp_path, lora, str(lora), "updates text_encoder_2", "does not have")


def test_sdxl_lora_on_sd1(sdcoreml, pipelines, lora_files, tmp_path):
    refused(sdcoreml, pipelines, tmp_path, lora_files["sdxl-kohya"], "do not fit weight")


@pytest.mark.parametrize("name,zip_format", [("lora.pt", True), ("lora.ckpt", False), ("pytorch_lora_weights.bin", True)])
def test_torch_save_lora_merges_the_same(sdcoreml, pipelines, lora_files, tmp_path, name, zip_format):
    """A LoRA written by torch.save (zip or legacy format), read without pickle code: the same
    package bytes as the same tensors in .safetensors."""
    from safetensors.torch import load_file

    pipeline = Path(pipelines["sd1"])
    pickled = tmp_path / name
    torch.save(load_file(str(lora_files["sd1-kohya"])), pickled, _use_new_zipfile_serialization=zip_format)
    for out, lora in (("st", lora_files["sd1-kohya"]), ("pickled", pickled)):
        check_ok(convert(sdcoreml, pipeline, tmp_path / out, [(lora, 0.9)], "--convert-unet", "--convert-text-encoder"))
    for sub in ("unet", "text_encoder"):
        weights = [(tmp_path / n / package_name(pipeline.name, sub) / "Data" / "com.apple.CoreML" / "weights" / "weight.bin")
                   .read_bytes() for n in ("st", "pickled")]
        assert weights[0] == weights[1], sub


def test_damaged_pickled_lora(sdcoreml, pipelines, tmp_path):
    ckpt = tmp_path / "lora.ckpt"
    ckpt.write_bytes(b"not a checkpoint at all")
    refused(sdcoreml, pipelines, tmp_path, ckpt, str(ckpt))


@pytest.mark.parametrize("value", ["x.safetensors:abc", "x.safetensors:", "x.safetensors:1.5x", "x.safetensors:nan", ":0.5"])
def test_scale_parse_errors(sdcoreml, pipelines, tmp_path, value):
    pipeline = Path(pipelines["sd1"])
    r = sdcoreml("--model-version", pipeline.name, "--convert-unet", "--lora", value, "-o", tmp_path / "out", cwd=pipeline.parent)
    assert r.returncode == 2, r.stderr
    assert f"--lora '{value}'" in r.stderr
    assert not (tmp_path / "out").exists()
