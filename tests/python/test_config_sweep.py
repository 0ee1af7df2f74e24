"""Fail closed on model configs (issue 16): for every key diffusers/transformers define for the
config classes sdcoreml reads (UNet2DConditionModel, ControlNetModel, AutoencoderKL,
CLIPTextConfig, CLIPConfig/CLIPVisionConfig of the safety checker), a tiny model with that key
changed is built by diffusers/transformers (fixed seeds, every weight random), converted in
float32 and run in sdcoreml's interpreter. Each variant must either match diffusers/transformers
in float32 (>= 110 dB PSNR on every output) or be refused: exit 1 with one line naming the
config file and the key. A variant that converts and differs fails the test, and each case
states which of the two it expects, so a refusal cannot quietly replace a working key.

Also: every key of the classes' constructors has a case (so a key added to diffusers gets one),
and tiny configs spelled as real published ones (SD 1.5 by diffusers 0.6, SD 2.1, transformers
4.22 text encoders, the CompVis safety checker with every PretrainedConfig key) convert.

Packages are not passed through coremltools here (the other tests do that for every builder):
the sweep is about numbers, and stays fast by calling the binary directly."""

import inspect
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLE_SD1, sdcoreml_path
from test_unet import psnr

OK, REFUSED, WARNED = "ok", "refused", "warned"  # warned: converts, computes as diffusers, one warning line
# Measured: 132.1 dB at the lowest over the 186 outputs of the converted cases (float32
# packages); bar 110 dB, as for the fixtures' float32 packages.
MIN_PSNR = 110.0
LATENT = 8


# ---------------------------------------------------------------------------------------------
# Tiny models: built by diffusers/transformers from a config, every weight random


def randomize(model, seed):
    """Every parameter random (diffusers zero-initialises ControlNet's output convs and the like,
    which would hide a wrong graph), scaled by fan-in so activations stay O(1)."""
    import torch

    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            shape = tuple(p.shape)
            scale = 1.0 / np.sqrt(np.prod(shape[1:])) if len(shape) > 1 else 0.2
            p.copy_(torch.from_numpy(np.asarray(rng.standard_normal(shape) * scale, np.float32)))
    return model.eval()


def fp16_exact(rng, shape, low=0.0, high=1.0):
    return rng.uniform(low, high, shape).astype(np.float16).astype(np.float32)


def base_config(sub):
    cfg = json.loads((EXAMPLE_SD1 / sub / "config.json").read_text())
    return cfg


class Unet:
    sub = "unet"
    flags = ("--convert-unet", "--latent-h", LATENT, "--latent-w", LATENT)

    @staticmethod
    def config():
        return base_config("unet")

    @staticmethod
    def build(cfg):
        from diffusers import UNet2DConditionModel

        return randomize(UNet2DConditionModel.from_config(cfg), 1)

    @staticmethod
    def feeds(cfg, rng):
        return {
            "sample": fp16_exact(rng, (2, cfg.get("in_channels", 4), LATENT, LATENT)),
            "timestep": np.full((2,), 981, np.float32),
            "encoder_hidden_states": fp16_exact(rng, (2, cfg["cross_attention_dim"], 1, 77)),
        }

    @staticmethod
    def reference(model, f):
        import torch

        t = {k: torch.from_numpy(v) for k, v in f.items()}
        ehs = t["encoder_hidden_states"].squeeze(2).permute(0, 2, 1)
        with torch.no_grad():
            return {"noise_pred": model(t["sample"], t["timestep"], encoder_hidden_states=ehs).sample.numpy()}


CN_NAME = "cn"


class ControlNet:
    sub = CN_NAME  # a ControlNet repository: config.json at its root
    flags = ("--convert-controlnet", CN_NAME, "--latent-h", LATENT, "--latent-w", LATENT)

    @staticmethod
    def config():
        from diffusers import ControlNetModel, UNet2DConditionModel

        unet = UNet2DConditionModel.from_config(base_config("unet"))
        cfg = dict(ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16)).config)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}

    @staticmethod
    def build(cfg):
        from diffusers import ControlNetModel

        return randomize(ControlNetModel.from_config(cfg), 2)

    @staticmethod
    def feeds(cfg, rng):
        f = 2 ** (len(cfg["conditioning_embedding_out_channels"]) - 1)
        return {
            "sample": fp16_exact(rng, (2, cfg["in_channels"], LATENT, LATENT)),
            "timestep": np.full((2,), 981, np.float32),
            "encoder_hidden_states": fp16_exact(rng, (2, cfg["cross_attention_dim"], 1, 77)),
            "controlnet_cond": fp16_exact(rng, (2, cfg["conditioning_channels"], f * LATENT, f * LATENT)),
        }

    @staticmethod
    def reference(model, f):
        import torch

        t = {k: torch.from_numpy(v) for k, v in f.items()}
        ehs = t["encoder_hidden_states"].squeeze(2).permute(0, 2, 1)
        with torch.no_grad():
            down, mid = model(t["sample"], t["timestep"], encoder_hidden_states=ehs,
                              controlnet_cond=t["controlnet_cond"], return_dict=False)
        outs = [d.numpy() for d in down] + [mid.numpy()]
        return {f"additional_residual_{i}": o for i, o in enumerate(outs)}


class Vae:
    sub = "vae"
    flags = ("--convert-vae-decoder", "--convert-vae-encoder", "--latent-h", LATENT, "--latent-w", LATENT)

    @staticmethod
    def config():
        return base_config("vae")

    @staticmethod
    def build(cfg):
        from diffusers import AutoencoderKL

        return randomize(AutoencoderKL.from_config(cfg), 3)

    @staticmethod
    def feeds(cfg, rng):
        s = 2 ** (len(cfg.get("block_out_channels", [64])) - 1)
        return {
            "z": fp16_exact(rng, (1, cfg.get("latent_channels", 4), LATENT, LATENT), -1, 1),
            "x": fp16_exact(rng, (1, cfg.get("in_channels", 3), s * LATENT, s * LATENT), -1, 1),
        }

    @staticmethod
    def reference(model, f):
        import torch

        with torch.no_grad():
            image = model.decode(torch.from_numpy(f["z"])).sample.numpy()
            h = model.encoder(torch.from_numpy(f["x"]))
            if model.quant_conv is not None:
                h = model.quant_conv(h)
        return {"image": image, "latent": h.numpy()}


class TextEncoder:
    sub = "text_encoder"
    flags = ("--convert-text-encoder",)

    @staticmethod
    def config():
        return base_config("text_encoder")

    @staticmethod
    def build(cfg):
        from transformers import CLIPTextConfig, CLIPTextModel

        return randomize(CLIPTextModel(CLIPTextConfig.from_dict(dict(cfg))), 4)

    @staticmethod
    def feeds(cfg, rng):
        ids = rng.integers(6, min(cfg.get("vocab_size", 49408), 590), (1, 77))
        ids[0, 0], ids[0, 20] = 0, 5  # bos; an id the eos_token_id variant pools at
        return {"input_ids": ids.astype(np.float32)}

    @staticmethod
    def reference(model, f):
        import torch

        with torch.no_grad():
            out = model(torch.from_numpy(f["input_ids"]).long(), return_dict=True)
        return {"last_hidden_state": out.last_hidden_state.numpy(), "pooled_outputs": out.pooler_output.numpy()}


class SafetyChecker:
    sub = "safety_checker"
    flags = ("--convert-safety-checker",)

    @staticmethod
    def config():
        return base_config("safety_checker")

    @staticmethod
    def build(cfg):
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPConfig

        return randomize(StableDiffusionSafetyChecker(CLIPConfig.from_dict(json.loads(json.dumps(cfg)))), 5)

    @staticmethod
    def feeds(cfg, rng):
        vc = cfg.get("vision_config_dict") or cfg.get("vision_config") or {}
        size, ch = vc.get("image_size", 224), vc.get("num_channels", 3)
        return {
            "clip_input": fp16_exact(rng, (1, ch, size, size), -1, 1),
            "images": fp16_exact(rng, (1, 32, 32, 3), -1, 1),
            "adjustment": np.zeros((1,), np.float32),
        }

    @staticmethod
    def reference(model, f):
        import torch
        import torch.nn.functional as F

        with torch.no_grad():  # the anchor's forward up to concept_scores (test_safety_checker.anchor_forward)
            e = model.visual_projection(model.vision_model(torch.from_numpy(f["clip_input"]))[1])
            special = F.normalize(e) @ F.normalize(model.special_care_embeds).T - model.special_care_embeds_weights
            care = special.gt(0).float().sum(dim=1).gt(0).float()
            scores = F.normalize(e) @ F.normalize(model.concept_embeds).T - model.concept_embeds_weights
            scores = scores + (care * 0.01)[:, None]
        return {"concept_scores": scores.numpy()}


COMPONENTS = {"unet": Unet, "controlnet": ControlNet, "vae": Vae, "text_encoder": TextEncoder,
              "safety_checker": SafetyChecker}


# ---------------------------------------------------------------------------------------------
# The cases: (component, changes, expectation). A change "a.b" sets key b of object a; None is
# JSON null (a value, not a missing key).

SIMPLE_BLOCKS = "read only by ResnetDownsample/SimpleCrossAttn blocks"
U = [
    ({"sample_size": 8}, OK),
    ({"in_channels": 5}, OK),
    ({"out_channels": 3}, OK),
    ({"center_input_sample": True}, OK),
    ({"flip_sin_to_cos": False}, OK),
    ({"freq_shift": 1}, OK),
    ({"down_block_types": ["DownBlock2D", "DownBlock2D"]}, OK),
    ({"down_block_types": ["SimpleCrossAttnDownBlock2D", "DownBlock2D"]}, REFUSED),
    ({"mid_block_type": "UNetMidBlock2D"}, OK),
    ({"mid_block_type": None}, OK),
    ({"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}, REFUSED),
    ({"up_block_types": ["UpBlock2D", "UpBlock2D"]}, OK),
    ({"only_cross_attention": True}, REFUSED),
    ({"block_out_channels": [32, 32]}, OK),
    ({"layers_per_block": 2}, OK),
    ({"layers_per_block": [1, 2]}, REFUSED),
    ({"downsample_padding": 0}, OK),
    ({"mid_block_scale_factor": 2.0}, OK),
    ({"dropout": 0.1}, OK),
    ({"act_fn": "swish"}, OK),
    ({"act_fn": "mish"}, REFUSED),
    ({"norm_num_groups": 16}, OK),
    ({"norm_num_groups": None}, REFUSED),
    ({"norm_eps": 1e-3}, OK),
    ({"cross_attention_dim": 24}, OK),
    ({"transformer_layers_per_block": 2}, OK),
    ({"transformer_layers_per_block": [1, 2]}, OK),
    ({"reverse_transformer_layers_per_block": [[1, 1], [1, 1]]}, REFUSED),
    ({"encoder_hid_dim": 16}, REFUSED),
    ({"encoder_hid_dim_type": "text_proj"}, REFUSED),
    ({"attention_head_dim": 4}, OK),
    ({"attention_head_dim": [2, 4]}, OK),
    ({"num_attention_heads": 4}, REFUSED),
    ({"dual_cross_attention": True}, REFUSED),
    ({"use_linear_projection": True}, OK),
    ({"class_embed_type": "timestep"}, REFUSED),
    ({"addition_embed_type": "text"}, REFUSED),
    ({"addition_time_embed_dim": 8}, OK),
    ({"num_class_embeds": 10}, REFUSED),
    ({"upcast_attention": True}, OK),
    ({"resnet_time_scale_shift": "scale_shift"}, REFUSED),
    ({"resnet_skip_time_act": True}, OK),
    ({"resnet_out_scale_factor": 2.0}, OK),
    ({"time_embedding_type": "fourier"}, REFUSED),
    ({"time_embedding_dim": 64}, OK),
    ({"time_embedding_act_fn": "silu"}, OK),
    ({"time_embedding_act_fn": "gelu"}, REFUSED),
    ({"timestep_post_act": "silu"}, OK),
    ({"timestep_post_act": "gelu"}, REFUSED),
    ({"time_cond_proj_dim": 8}, WARNED),
    ({"conv_in_kernel": 5}, OK),
    ({"conv_out_kernel": 1}, OK),
    ({"projection_class_embeddings_input_dim": 16}, OK),
    ({"attention_type": "gated"}, WARNED),
    ({"attention_type": "layer_norm_i2vgen"}, REFUSED),
    ({"class_embeddings_concat": True}, REFUSED),
    ({"mid_block_only_cross_attention": True}, OK),
    ({"cross_attention_norm": "group_norm"}, OK),
    ({"addition_embed_type_num_heads": 32}, OK),
    ({"no_such_key": 1}, REFUSED),
]

C = [
    ({"conditioning_channels": 4}, OK),
    ({"controlnet_conditioning_channel_order": "bgr"}, REFUSED),
    ({"conditioning_embedding_out_channels": [8, 8]}, OK),
    ({"global_pool_conditions": True}, REFUSED),
    ({"num_attention_heads": 4}, OK),
    ({"mid_block_type": "UNetMidBlock2D"}, OK),
    ({"mid_block_type": None}, REFUSED),
    ({"downsample_padding": 0}, OK),
    ({"mid_block_scale_factor": 2.0}, OK),
    ({"act_fn": "swish"}, OK),
    ({"transformer_layers_per_block": 2}, OK),
    ({"use_linear_projection": True}, OK),
    ({"class_embed_type": "timestep"}, REFUSED),
    ({"num_class_embeds": 10}, REFUSED),
    # UNet keys a ControlNetModel does not take: diffusers ignores them, so must we
    ({"timestep_post_act": "silu"}, OK),
    ({"conv_in_kernel": 5}, OK),
    ({"time_cond_proj_dim": 8}, OK),
]

V = [
    ({"in_channels": 4}, OK),
    ({"out_channels": 4}, OK),
    ({"down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]}, REFUSED),
    ({"up_block_types": ["AttnUpDecoderBlock2D", "UpDecoderBlock2D"]}, REFUSED),
    ({"block_out_channels": [32, 32]}, OK),
    ({"layers_per_block": 2}, OK),
    ({"act_fn": "swish"}, OK),
    ({"act_fn": "relu"}, REFUSED),
    ({"latent_channels": 8}, OK),
    ({"norm_num_groups": 16}, OK),
    ({"norm_num_groups": None}, REFUSED),
    ({"sample_size": 64}, OK),
    ({"scaling_factor": 0.5}, OK),
    ({"shift_factor": 0.1}, OK),
    ({"latents_mean": [0.1, 0.2, 0.3, 0.4]}, OK),
    ({"latents_std": [1.0, 2.0, 3.0, 4.0]}, OK),
    ({"force_upcast": False}, OK),
    ({"use_quant_conv": False}, OK),
    ({"use_post_quant_conv": False}, OK),
    ({"mid_block_add_attention": False}, OK),
]

# PretrainedConfig's keys, all changed at once: none of them changes what CLIP computes.
GENERIC = {
    "return_dict": False, "output_hidden_states": True, "output_attentions": True, "torchscript": True,
    "torch_dtype": "float16", "use_bfloat16": True, "tf_legacy_loss": True, "tie_word_embeddings": False,
    "chunk_size_feed_forward": 4, "is_encoder_decoder": False, "is_decoder": True, "cross_attention_hidden_size": 8,
    "add_cross_attention": True, "tie_encoder_decoder": True,  # with is_encoder_decoder, transformers fails
 "max_length": 5, "min_length": 1, "do_sample": True,
    "early_stopping": True, "num_beams": 2, "num_beam_groups": 2, "diversity_penalty": 0.5, "temperature": 0.5,
    "top_k": 5, "top_p": 0.5, "typical_p": 0.5, "repetition_penalty": 2.0, "length_penalty": 2.0,
    "no_repeat_ngram_size": 2, "encoder_no_repeat_ngram_size": 2, "bad_words_ids": [[7]],
    "num_return_sequences": 2, "output_scores": True, "return_dict_in_generate": True, "forced_bos_token_id": 3,
    "forced_eos_token_id": 3, "remove_invalid_values": True, "exponential_decay_length_penalty": [2, 1.5],
    "suppress_tokens": [4], "begin_suppress_tokens": [4], "architectures": ["X"], "finetuning_task": "x",
    "id2label": {"0": "a", "1": "b", "2": "c"}, "label2id": {"a": 0, "b": 1, "c": 2}, "tokenizer_class": "X",
    "prefix": "x", "sep_token_id": 3, "decoder_start_token_id": 3, "task_specific_params": {"x": {}},
    "problem_type": "regression", "transformers_version": "9.9.9", "gradient_checkpointing": True,
    "bos_token_id": 5, "pad_token_id": 0, "eos_token_id": 3,
}
GENERIC_IN_TEXT = {**GENERIC, "eos_token_id": 2, "initializer_range": 0.5,
                   "initializer_factor": 2.0, "attention_dropout": 0.1, "dropout": 0.1}

T = [
    ({"vocab_size": 600}, OK),
    ({"hidden_size": 48}, OK),
    ({"intermediate_size": 64}, OK),
    ({"projection_dim": 16}, OK),
    ({"num_hidden_layers": 2}, OK),
    ({"num_attention_heads": 2}, OK),
    ({"max_position_embeddings": 80}, OK),
    ({"hidden_act": "gelu"}, OK),
    ({"hidden_act": "gelu_new"}, REFUSED),
    ({"layer_norm_eps": 1e-3}, OK),
    ({"eos_token_id": 5}, OK),
    ({"hidden_size": None}, REFUSED),
    ({"pruned_heads": {"0": [1]}}, REFUSED),
    (GENERIC_IN_TEXT, OK),
    ({"is_encoder_decoder": True}, OK),
    ({"no_such_key": 1}, REFUSED),
]

S = [
    ({"vision_config.hidden_size": 48}, OK),
    ({"vision_config.intermediate_size": 64}, OK),
    ({"vision_config.projection_dim": 16}, OK),
    ({"vision_config.num_hidden_layers": 1}, OK),
    ({"vision_config.num_attention_heads": 2}, OK),
    ({"vision_config.num_channels": 4}, OK),
    ({"vision_config.image_size": 112}, OK),
    ({"vision_config.patch_size": 16}, OK),
    ({"vision_config.hidden_act": "gelu"}, OK),
    ({"vision_config.hidden_act": "relu"}, REFUSED),
    ({"vision_config.layer_norm_eps": 1e-3}, OK),
    ({"vision_config.attention_dropout": 0.1, "vision_config.dropout": 0.1, "vision_config.initializer_range": 0.5,
      "vision_config.initializer_factor": 2.0}, OK),
    ({f"vision_config.{k}": v for k, v in GENERIC.items()}, OK),
    ({"vision_config.no_such_key": 1}, REFUSED),
    ({"vision_config.pruned_heads": {"0": [1]}}, REFUSED),
    ({"pruned_heads": {"0": [1]}}, REFUSED),
    ({"projection_dim": 16}, OK),
    ({"logit_scale_init_value": 1.0}, OK),
    ({"text_config.hidden_size": 64, "text_config.num_attention_heads": 2}, OK),
    ({"text_config_dict": {"hidden_size": 64, "num_attention_heads": 2}}, OK),
    # transformers builds the tower from vision_config_dict and its defaults, ignoring vision_config
    ({"vision_config_dict": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                             "num_hidden_layers": 1, "patch_size": 14, "hidden_act": "gelu"}}, OK),
    ({"vision_config_dict": {"hidden_act": "relu"}}, REFUSED),
    ({"initializer_factor": 2.0}, OK),
    (GENERIC, OK),
]

CASES = [("unet", ch, ex) for ch, ex in U] + [("controlnet", ch, ex) for ch, ex in C] + \
        [("vae", ch, ex) for ch, ex in V] + [("text_encoder", ch, ex) for ch, ex in T] + \
        [("safety_checker", ch, ex) for ch, ex in S]


def case_id(case):
    comp, changes, _ = case
    if len(changes) > 6:
        return f"{comp}-generic-{len(changes)}-keys"
    return comp + "-" + ",".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in changes.items())


def apply(cfg, changes):
    cfg = json.loads(json.dumps(cfg))
    for key, value in changes.items():
        obj, _, leaf = key.rpartition(".")
        target = cfg
        if obj:
            target = cfg.setdefault(obj, {})
        target[leaf] = value
    return cfg


# ---------------------------------------------------------------------------------------------
# Running one case


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory):
    """Weights of each component's base model, for variants diffusers cannot even build."""
    d = tmp_path_factory.mktemp("sweep-base")
    out = {}
    for name, comp in COMPONENTS.items():
        out[name] = d / name
        save(comp.build(comp.config()), out[name])
    return out


def save(model, folder):
    kwargs = {"safe_serialization": True}
    model.save_pretrained(str(folder), **kwargs)


def make_pipeline(root, comp, cfg, model, base_folder):
    """A pipeline folder: tiny-sd's components as links, the variant's component written."""
    root.mkdir(parents=True)
    for entry in EXAMPLE_SD1.iterdir():
        if entry.name != comp.sub:
            os.symlink(entry, root / entry.name)
    folder = root.parent / CN_NAME if comp is ControlNet else root / comp.sub
    if folder.exists():
        shutil.rmtree(folder)
    if model is not None:
        save(model, folder)
    else:
        shutil.copytree(base_folder, folder)
    meta = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k.startswith("_")}
    (folder / "config.json").write_text(json.dumps({**meta, **cfg}, indent=2))
    return folder / "config.json"


def run_cli(*args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([str(sdcoreml_path()), *map(str, args)], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)


def interpret(pkg, feeds, tmp):
    args = ["run", pkg]
    for name, value in feeds.items():
        p = tmp / f"in-{name}.npy"
        np.save(p, value)
        args += ["--input", f"{name}={p}"]
    r = run_cli(*args, "-o", tmp / "out", cwd=tmp)
    assert r.returncode == 0, r.stderr
    return {p.stem: np.load(p) for p in (tmp / "out").glob("*.npy")}


def convert_and_compare(comp, cfg, tmp, base_folder, keys):
    """Converts a variant; returns ("ok"|"warned"|"refused", detail). Fails on a silent wrong answer."""
    try:
        model = comp.build(cfg)
    except Exception as e:  # noqa: BLE001 - diffusers/transformers refuse it themselves
        model, why = None, f"{type(e).__name__}: {e}"
    root = tmp / "p" / "tiny-sd"
    config_path = make_pipeline(root, comp, cfg, model, base_folder)
    out = tmp / "out"
    r = run_cli("--model-version", "tiny-sd", "-o", out, "--compute-precision", "FLOAT32", *comp.flags,
                cwd=root.parent)
    if r.returncode != 0:
        lines = [l for l in r.stderr.splitlines() if l.startswith("sdcoreml: error:")]
        assert r.returncode == 1 and len(lines) == 1, f"exit {r.returncode}:\n{r.stderr}"
        assert f"{config_path.parent.name}/config.json" in lines[0], f"no config file named: {lines[0]}"
        assert any(k.split(".")[-1] in lines[0] for k in keys), f"no key named: {lines[0]}"
        return REFUSED, lines[0]
    assert model is not None, f"converted a config diffusers/transformers cannot build ({why})"
    feeds = comp.feeds(cfg, np.random.default_rng(11))
    try:
        ref = comp.reference(model, feeds)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"converted a config diffusers/transformers cannot run: {type(e).__name__}: {e}")
    pkgs = sorted(out.glob("*.mlpackage"))
    got = {}
    for pkg in pkgs:
        wanted = {k: v for k, v in feeds.items()}
        run_dir = tmp / f"run-{pkg.stem[-12:]}"
        run_dir.mkdir()
        if comp is Vae:  # one package per input
            wanted = {"z": feeds["z"]} if pkg.name.endswith("decoder.mlpackage") else {"x": feeds["x"]}
        got.update(interpret(pkg, wanted, run_dir))
    for name, want in ref.items():
        assert name in got, f"no output {name} in {sorted(got)}"
        assert got[name].shape == want.shape, f"{name}: {got[name].shape} != {want.shape}"
        value = psnr(want, got[name])
        print(f"PSNR sweep {name}: {value:.1f} dB")
        assert value >= MIN_PSNR, f"converted without a word but computes something else: {name} {value:.1f} dB"
    warnings = [l for l in r.stderr.splitlines() if "warning" in l.lower() and "config.json" in l]
    return (WARNED if warnings else OK), "\n".join(warnings)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_config_key(case, base_weights, tmp_path):
    name, changes, expect = case
    comp = COMPONENTS[name]
    cfg = apply(comp.config(), changes)
    outcome, detail = convert_and_compare(comp, cfg, tmp_path, base_weights[name], list(changes))
    print(f"{case_id(case)}: {outcome} {detail}")
    assert outcome == expect, f"expected {expect}, got {outcome}: {detail}"
    if outcome == WARNED:
        assert any(f"'{k}'" in detail for k in changes), detail


# ---------------------------------------------------------------------------------------------
# Every key the classes define has a case


def constructor_keys(cls):
    return {k for k in inspect.signature(cls.__init__).parameters if k not in ("self", "kwargs")}


def covered(component, prefix=""):
    keys = set()
    for comp, changes, _ in CASES:
        if comp == component:
            keys |= {k[len(prefix):].split(".")[0] for k in changes if k.startswith(prefix)}
    return keys


def test_every_key_has_a_case():
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig, PretrainedConfig

    generic = set(PretrainedConfig().to_dict()) - {"_name_or_path", "model_type"}
    wants = [
        ("unet", "", constructor_keys(UNet2DConditionModel)),
        ("controlnet", "", constructor_keys(ControlNetModel) - constructor_keys(UNet2DConditionModel)
         | {"mid_block_type", "num_attention_heads"}),
        ("vae", "", constructor_keys(AutoencoderKL)),
        ("text_encoder", "", constructor_keys(CLIPTextConfig) | generic),
        ("safety_checker", "vision_config.", constructor_keys(CLIPVisionConfig) | generic),
        ("safety_checker", "", constructor_keys(CLIPConfig) | {"initializer_factor"} | generic),
    ]
    for component, prefix, keys in wants:
        missing = sorted(keys - covered(component, prefix))
        assert not missing, f"{component} {prefix}: keys without a case: {missing}"


# ---------------------------------------------------------------------------------------------
# Real published configs (their key sets and spellings, tiny sizes) convert and match


SD15_UNET = {  # runwayml/stable-diffusion-v1-5 unet/config.json, diffusers 0.6.0
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu",
    "attention_head_dim": 8, "block_out_channels": [32, 64], "center_input_sample": False,
    "cross_attention_dim": 32, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 1,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 16,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
}
SD21_UNET = {  # stabilityai/stable-diffusion-2-1 unet/config.json, diffusers 0.10.0.dev0
    **SD15_UNET, "_diffusers_version": "0.10.0.dev0", "attention_head_dim": [4, 8], "dual_cross_attention": False,
    "num_class_embeds": None, "only_cross_attention": False, "upcast_attention": True, "use_linear_projection": True,
}
SD15_VAE = {  # diffusers 0.6.0
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.6.0", "act_fn": "silu", "block_out_channels": [32, 64],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"], "in_channels": 3, "latent_channels": 4,
    "layers_per_block": 1, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
}
SD15_TEXT = {  # transformers 4.22
    "_name_or_path": "openai/clip-vit-large-patch14", "architectures": ["CLIPTextModel"], "attention_dropout": 0.0,
    "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 32,
    "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 37, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 4,
    "num_hidden_layers": 3, "pad_token_id": 1, "projection_dim": 32, "torch_dtype": "float32",
    "transformers_version": "4.22.0.dev0", "vocab_size": 593,
}
SD15_CONTROLNET_KEYS = {  # lllyasviel/sd-controlnet-canny, diffusers 0.16.0.dev0 (values from the tiny base)
    "_class_name": "ControlNetModel", "_diffusers_version": "0.16.0.dev0", "_name_or_path": "x",
}


def old_safety_checker():
    """The CompVis safety checker's layout (transformers 4.22): full text_config and vision_config
    objects with every PretrainedConfig key, and the *_config_dict overrides."""
    from transformers import CLIPTextConfig, CLIPVisionConfig

    base = SafetyChecker.config()
    vc = CLIPVisionConfig(**{k: v for k, v in base["vision_config"].items() if k != "model_type"}).to_dict()
    tc = CLIPTextConfig(**{k: v for k, v in base["text_config"].items() if k != "model_type"}).to_dict()
    return {"_commit_hash": None, "_name_or_path": "clip_sd_safety", "architectures": ["StableDiffusionSafetyChecker"],
            "initializer_factor": 1.0, "logit_scale_init_value": 2.6592, "model_type": "clip", "projection_dim": 32,
            "text_config": tc, "text_config_dict": {k: tc[k] for k in ("hidden_size", "intermediate_size")},
            "vision_config": vc, "vision_config_dict": {k: vc[k] for k in (
                "hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "patch_size")},
            "torch_dtype": "float32", "transformers_version": None}


@pytest.mark.parametrize("which", ["sd15-unet", "sd21-unet", "sd15-vae", "sd15-text", "sd15-safety", "controlnet"])
def test_real_configs_convert(which, base_weights, tmp_path):
    if which == "sd15-safety":
        comp, cfg = SafetyChecker, old_safety_checker()
    elif which == "controlnet":
        comp, cfg = ControlNet, {**ControlNet.config(), **SD15_CONTROLNET_KEYS}
    else:
        comp, cfg = {"sd15-unet": (Unet, SD15_UNET), "sd21-unet": (Unet, SD21_UNET), "sd15-vae": (Vae, SD15_VAE),
                     "sd15-text": (TextEncoder, SD15_TEXT)}[which]
    name = {Unet: "unet", Vae: "vae", TextEncoder: "text_encoder", SafetyChecker: "safety_checker",
            ControlNet: "controlnet"}[comp]
    outcome, detail = convert_and_compare(comp, cfg, tmp_path, base_weights[name], [])
    assert outcome == OK, detail
