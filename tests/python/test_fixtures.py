"""The fixture generator itself: deterministic, and the committed examples/tiny-sd is its output."""

import hashlib
import json
import subprocess
import sys

import pytest

from conftest import EXAMPLE_SD1, GENERATOR


def digest_tree(root):
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_examples_tiny_sd_is_generator_output(tmp_path):
    """Regenerating sd1 gives examples/tiny-sd byte for byte (so the script is deterministic
    and the committed example is what the README says it is)."""
    out = tmp_path / "sd1"
    subprocess.run([sys.executable, str(GENERATOR), "--kind", "sd1", "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    got, want = digest_tree(out), digest_tree(EXAMPLE_SD1)
    assert sorted(got) == sorted(want)
    changed = [k for k in want if got[k] != want[k]]
    assert not changed, f"regenerated files differ from examples/tiny-sd: {changed}"


def test_tiny_sizes():
    total = sum(p.stat().st_size for p in EXAMPLE_SD1.rglob("*") if p.is_file())
    assert total < 8 * 1024 * 1024, f"examples/tiny-sd is {total} bytes"


@pytest.mark.parametrize("kind", ["sd1", "sd1-inpaint", "sd2", "sdxl", "sdxl-refiner"])
def test_fixture_layout(pipelines, kind):
    root = pipelines[kind]
    index = json.loads((root / "model_index.json").read_text())
    for sub in ("text_encoder", "text_encoder_2"):
        if index.get(sub, [None])[0] is None:
            continue
        cfg = json.loads((root / sub / "config.json").read_text())
        tok_dir = root / ("tokenizer" if sub == "text_encoder" else "tokenizer_2")
        vocab = json.loads((tok_dir / "vocab.json").read_text())
        tok_cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
        assert cfg["vocab_size"] == len(vocab)
        assert vocab["<|endoftext|>"] == len(vocab) - 1, "eos must be the highest id"
        assert vocab["<|startoftext|>"] == len(vocab) - 2
        assert tok_cfg["model_max_length"] == 77
        assert cfg["max_position_embeddings"] == 77
        assert (root / sub / "model.safetensors").is_file()
    unet = json.loads((root / "unet" / "config.json").read_text())
    assert unet["in_channels"] == (9 if kind == "sd1-inpaint" else 4)
    if kind.startswith("sdxl"):
        assert unet["addition_embed_type"] == "text_time"


def test_pipelines_run(pipelines):
    """diffusers loads and runs the tiny pipelines (two denoising steps), so they are real."""
    import numpy as np
    import torch
    from diffusers import DiffusionPipeline

    for kind in ("sd1", "sd2", "sdxl"):
        pipe = DiffusionPipeline.from_pretrained(pipelines[kind])
        pipe.set_progress_bar_config(disable=True)
        out = pipe("a photo of an astronaut riding a horse on mars", num_inference_steps=2,
                   generator=torch.Generator().manual_seed(0), output_type="np")
        assert out.images.shape == (1, 32, 32, 3)
        assert np.isfinite(out.images).all()
