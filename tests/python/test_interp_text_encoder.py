"""Numeric parity of converted text encoders, run by sdcoreml's reference interpreter
(`sdcoreml run`), against transformers in float32 on real token ids.

For the tiny sd1 (examples/tiny-sd), sd2 and sdxl fixtures (both SDXL encoders, converted with
--xl-version), in FLOAT32 and FLOAT16 packages:
  SD1/SD2: last_hidden_state and pooled_outputs vs CLIPTextModel's last_hidden_state and
           pooler_output;
  SDXL:    hidden_embeds and pooled_outputs vs hidden_states[-2] and pooler_output (text_embeds
           for CLIPTextModelWithProjection).
PSNR is the anchor's formula (reference/anchor-ml-stable-diffusion.md §13): reference a,
candidate b, 20·log10((max|b| + 1e-5) / (rmse + 1e-10)). Thresholds (MIN_PSNR, measured minus a
margin): 110 dB for FLOAT32 packages, 55 dB for FLOAT16 packages. Every figure is printed
(pytest -s shows them).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import package_name
from test_interp_ops import run_package

PROMPTS = (
    "a photo of an astronaut riding a horse on mars",
    # longer than 77 tokens: truncated, <|endoftext|> lands at position 76
    " ".join(["a high quality painting of the city at night with a cat"] * 12),
)
CASES = [("sd1", False), ("sd2", False), ("sdxl", True)]
# Measured over sd1, sd2 and both SDXL encoders, every output and prompt: FLOAT32 139.7-146.8 dB,
# FLOAT16 67.3-76.2 dB. Bars: 110 and 55 dB.
MIN_PSNR = {"FLOAT32": 110.0, "FLOAT16": 55.0}


def psnr(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    max_b = np.abs(b).max()
    rmse = np.sqrt(np.mean((a - b) ** 2))
    return float(20 * np.log10((max_b + 1e-5) / (rmse + 1e-10)))


def encoders(pipeline_dir):
    out = []
    for sub, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        if (Path(pipeline_dir) / sub / "config.json").exists():
            out.append((sub, tok))
    return out


def reference(pipeline_dir, sub, tok_dir, xl, prompt):
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    cfg = json.loads((Path(pipeline_dir) / sub / "config.json").read_text())
    cls = CLIPTextModelWithProjection if "CLIPTextModelWithProjection" in cfg["architectures"] else CLIPTextModel
    model = cls.from_pretrained(Path(pipeline_dir) / sub, torch_dtype=torch.float32).eval()
    tok = CLIPTokenizer.from_pretrained(Path(pipeline_dir) / tok_dir)
    ids = tok(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        o = model(ids, output_hidden_states=True, return_dict=True)
    if xl:
        pooled = o.text_embeds if hasattr(o, "text_embeds") else o.pooler_output
        return ids.numpy(), {"hidden_embeds": o.hidden_states[-2].numpy(), "pooled_outputs": pooled.numpy()}
    return ids.numpy(), {"last_hidden_state": o.last_hidden_state.numpy(), "pooled_outputs": o.pooler_output.numpy()}


@pytest.mark.parametrize("precision", ["FLOAT32", "FLOAT16"])
@pytest.mark.parametrize("kind,xl", CASES)
def test_interpreter_matches_transformers(sdcoreml, convert, pipelines, tmp_path, record_property, kind, xl, precision):
    flags = (["--xl-version"] if xl else []) + ["--compute-precision", precision]
    out = convert(kind, *flags)
    mv = convert.model_version(kind)
    lines = []
    for sub, tok_dir in encoders(pipelines[kind]):
        pkg = out / package_name(mv, sub)
        for pi, prompt in enumerate(PROMPTS):
            ids, ref = reference(pipelines[kind], sub, tok_dir, xl, prompt)
            got, _ = run_package(sdcoreml, pkg, {"input_ids": ids.astype(np.float32)}, tmp_path / f"{sub}-{pi}")
            got = dict(got)
            assert sorted(got) == sorted(ref), f"outputs {sorted(got)} != {sorted(ref)}"
            for name, want in ref.items():
                g = got[name]
                assert g.shape == want.shape, f"{sub} {name}: shape {g.shape} != {want.shape}"
                assert g.dtype == np.float32, f"{sub} {name}: dtype {g.dtype}"
                v = psnr(want, g)
                line = f"PSNR {kind:5s} {sub:15s} {precision} {name:18s} prompt {pi}: {v:6.1f} dB"
                print(line)
                lines.append(line)
                record_property(f"psnr_{sub}_{name}_{pi}", round(v, 2))
    for line in lines:
        v = float(line.split(":")[-1].split()[0])
        assert v >= MIN_PSNR[precision], f"{line} < {MIN_PSNR[precision]} dB"
