"""The `odd` fixture (tests/fixtures/make_tiny_pipelines.py): every config value a converter
could hard-code differs from the one the other fixtures share — a 3-level UNet with
norm_num_groups 16, norm_eps 1e-6, 5 heads and cross-attention at two levels; a 3-block VAE with
layers_per_block 2 and 16 groups; a text encoder with the real eos_token_id, layer_norm_eps
1e-6 and embedding rows past the tokenizer's ids. Each package, run by sdcoreml's interpreter,
is compared with diffusers / transformers in float32.

Bars are measured minus a margin (measurements in the comments); float32 packages are held to
110 dB like the common fixtures', so a hard-coded 32 groups or 1e-5 eps cannot pass."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import check_ok, package_name
from test_interp_ops import run_package
from test_unet import assert_float16_within_device_sinusoid, diffusers_noise_pred, psnr, random_inputs
from test_vae import diffusers_vae, fp16_exact, reference_decode, reference_encode

KIND = "odd"
# Measured: UNet FLOAT32 123.6-123.7 dB, FLOAT16 62.9 dB; VAE FLOAT32 126.4 / 129.1 dB (decoder /
# encoder), FLOAT16 62.3 / 65.6 dB; text encoder FLOAT32 140.3-144.2 dB, FLOAT16 68.9-73.1 dB.
# Bars: 110 dB and 55 dB, as for the common fixtures. The FLOAT16 UNet computes the anchor's float16
# timestep sinusoids: 54.3 dB (diffusers with those sinusoids itself 55.0 dB), 62.4 dB against
# diffusers with them. The anchor cannot convert this UNet (32 groups hard-coded), so it is held by
# test_unet.assert_float16_within_device_sinusoid.
MIN_PSNR = {"FLOAT32": 110.0, "FLOAT16": 55.0}


@pytest.fixture(scope="module")
def odd_packages(sdcoreml, pipelines, tmp_path_factory):
    """Converts every component of the odd pipeline once per (precision, attention)."""
    cache = {}

    def get(precision, attention="SPLIT_EINSUM"):
        key = (precision, attention)
        if key not in cache:
            src = pipelines[KIND]
            out = tmp_path_factory.mktemp(f"odd-{precision}-{attention}")
            check_ok(sdcoreml("--model-version", src.name, "-o", out, "--convert-unet", "--convert-text-encoder",
                              "--convert-vae-decoder", "--convert-vae-encoder", "--compute-precision", precision,
                              "--attention-implementation", attention, cwd=src.parent))
            cache[key] = out
        return cache[key]

    return get


def pkg(out, sub):
    return Path(out) / package_name(KIND, sub)


def test_fixture_is_odd(pipelines):
    """The fixture still has what makes it odd (a generator change must not quietly undo it)."""
    root = pipelines[KIND]
    unet = json.loads((root / "unet" / "config.json").read_text())
    vae = json.loads((root / "vae" / "config.json").read_text())
    te = json.loads((root / "text_encoder" / "config.json").read_text())
    assert len(unet["block_out_channels"]) == 3 and unet["norm_num_groups"] == 16 and unet["norm_eps"] == 1e-6
    assert unet["attention_head_dim"] == 5
    assert sum("CrossAttn" in t for t in unet["down_block_types"]) == 2
    assert len(vae["block_out_channels"]) == 3 and vae["layers_per_block"] == 2 and vae["norm_num_groups"] == 16
    assert te["layer_norm_eps"] == 1e-6 and te["eos_token_id"] != 2 and te["vocab_size"] > te["eos_token_id"] + 1


@pytest.mark.parametrize("precision,attention", [("FLOAT32", "ORIGINAL"), ("FLOAT32", "SPLIT_EINSUM"),
                                                 ("FLOAT16", "SPLIT_EINSUM")])
def test_unet(sdcoreml, odd_packages, pipelines, tmp_path, precision, attention):
    feeds = random_inputs(pipelines[KIND], False, seed=21)
    ref = diffusers_noise_pred(pipelines[KIND], feeds)
    got = dict(run_package(sdcoreml, pkg(odd_packages(precision, attention), "unet"), feeds, tmp_path)[0])
    if precision == "FLOAT16":
        device = diffusers_noise_pred(pipelines[KIND], feeds, float16_sinusoids=True)
        assert_float16_within_device_sinusoid(f"odd unet {attention} {precision}", ref, device, got["noise_pred"],
                                              MIN_PSNR[precision])
        return
    value = psnr(ref, got["noise_pred"])
    print(f"PSNR odd unet {attention} {precision}: {value:.1f} dB")
    assert value >= MIN_PSNR[precision], f"{value:.1f} dB"


@pytest.mark.parametrize("precision", ["FLOAT32", "FLOAT16"])
def test_vae(sdcoreml, odd_packages, pipelines, tmp_path, precision):
    out = odd_packages(precision)
    vae = diffusers_vae(pipelines[KIND] / "vae")
    rng = np.random.default_rng(22)
    z = fp16_exact(rng.standard_normal((1, 4, 16, 16)))
    x = fp16_exact(rng.uniform(-1, 1, (1, 3, 64, 64)))
    got = dict(run_package(sdcoreml, pkg(out, "vae_decoder"), {"z": z}, tmp_path / "dec")[0])["image"]
    dec = psnr(reference_decode(vae, z), got)
    got = dict(run_package(sdcoreml, pkg(out, "vae_encoder"), {"x": x}, tmp_path / "enc")[0])["latent"]
    enc = psnr(reference_encode(vae, x), got)
    print(f"PSNR odd vae {precision}: decoder {dec:.1f} dB, encoder {enc:.1f} dB")
    assert min(dec, enc) >= MIN_PSNR[precision], f"decoder {dec:.1f} dB, encoder {enc:.1f} dB"


def text_inputs(pipeline):
    """Token ids as the tokenizer gives them, and a row using the 8 ids past the tokenizer's
    (textual-inversion tokens) before the eos: there argmax(ids) is not the eos position, so
    pooling must follow eos_token_id as transformers does."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(pipeline / "tokenizer")
    plain = tok("a photo of an astronaut riding a horse on mars", padding="max_length", max_length=77,
                truncation=True, return_tensors="np").input_ids
    added = plain.copy()
    eos = int(np.argmax(plain[0] == tok.eos_token_id))
    added[0, 3:eos] = tok.eos_token_id + 1 + np.arange(eos - 3) % 8
    assert np.argmax(added[0]) != eos
    return [plain, added]


@pytest.mark.parametrize("precision", ["FLOAT32", "FLOAT16"])
def test_text_encoder(sdcoreml, odd_packages, pipelines, tmp_path, precision):
    import torch
    from transformers import CLIPTextModel

    model = CLIPTextModel.from_pretrained(pipelines[KIND] / "text_encoder", torch_dtype=torch.float32).eval()
    for i, ids in enumerate(text_inputs(pipelines[KIND])):
        with torch.no_grad():
            o = model(torch.from_numpy(ids.astype(np.int64)))
        ref = {"last_hidden_state": o.last_hidden_state.numpy(), "pooled_outputs": o.pooler_output.numpy()}
        got = dict(run_package(sdcoreml, pkg(odd_packages(precision), "text_encoder"),
                               {"input_ids": ids.astype(np.float32)}, tmp_path / str(i))[0])
        for name, want in ref.items():
            value = psnr(want, got[name])
            print(f"PSNR odd text_encoder {precision} {name} ids {i}: {value:.1f} dB")
            assert value >= MIN_PSNR[precision], f"{name} ids {i}: {value:.1f} dB"
