#!/usr/bin/env python3
"""UNet conversion benchmark: full-size random-weight SD 1.5 and SDXL UNets (the real configs).

Prints, from one run, for each model: median conversion wall time and peak RSS of
`sdcoreml --convert-unet`, next to the I/O floor measured in the same invocation (dd reading every
source weight byte and writing the same number of bytes into the output folder), and their
ratio. Issue 4's targets: conversion <= 2x the I/O floor; peak RSS <= 1 GB (SD 1.5) and
<= 1.5 GB (SDXL).

The models are generated once with diffusers (random init, saved as the fp16 variant, as the
anchor reads them) under $SDCOREML_CACHE/bench (default ~/.cache/sdcoreml/bench) and never
committed. Needs the test venv (tests/run.sh makes it): run it with that venv's python.

    python bench/unet.py [--models sd15,sdxl] [--repeat 3]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import cache_root, run_child  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CACHE = cache_root() / "bench"
SDCOREML = Path(os.environ.get("SDCOREML_BIN") or REPO / "build" / "sdcoreml")

# reference/sd-architectures.md §3.1
CONFIGS = {
    "sd15": dict(
        pipeline="StableDiffusionPipeline",
        unet=dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                  block_out_channels=[320, 640, 1280, 1280],
                  down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                  up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
                  attention_head_dim=8, cross_attention_dim=768),
        flags=[],
    ),
    "sdxl": dict(
        pipeline="StableDiffusionXLPipeline",
        unet=dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                  block_out_channels=[320, 640, 1280],
                  down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                  up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                  attention_head_dim=[5, 10, 20], cross_attention_dim=2048, use_linear_projection=True,
                  transformer_layers_per_block=[1, 2, 10], addition_embed_type="text_time",
                  addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
        flags=["--xl-version"],
    ),
}

GENERATE = r"""
import json, sys, torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
cfg, out = json.loads(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
unet = UNet2DConditionModel(**cfg)
unet.save_config(out)
half = {}
for name, p in list(unet.named_parameters()):  # convert one tensor at a time: peak ~ fp32 model
    half[name] = p.detach().half().contiguous()
    p.data = torch.empty(0)
save_file(half, out + "/diffusion_pytorch_model.fp16.safetensors", metadata={"format": "pt"})
"""


def ensure_model(name):
    root = CACHE / f"{name}-unet-full"
    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    (root / "unet").mkdir(parents=True)
    spec = CONFIGS[name]
    (root / "model_index.json").write_text(json.dumps(
        {"_class_name": spec["pipeline"], "unet": ["diffusers", "UNet2DConditionModel"]}, indent=2))
    print(f"generating {root} (once) ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-c", GENERATE, json.dumps(spec["unet"]), str(root / "unet")], check=True)
    (root / ".complete").write_text("ok\n")
    return root


def weight_files(root):
    return sorted((root / "unet").glob("*.safetensors"))


def io_floor(files, out_dir):
    """Seconds for dd to read every source byte and write as many bytes into out_dir."""
    dst = out_dir / "io-floor.bin"
    t0 = time.perf_counter()
    with open(dst, "wb") as w:
        for f in files:
            subprocess.run(["dd", f"if={f}", "bs=16M", "status=none"], stdout=w, check=True)
    dt = time.perf_counter() - t0
    total = dst.stat().st_size
    dst.unlink()
    return dt, total


def convert(root, flags, out_dir):
    """(seconds, peak RSS bytes) of one conversion, RSS from wait4 on that child alone."""
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [SDCOREML, "--quiet", "--convert-unet", "--model-version", root, "-o", out_dir, *flags]
    dt, rss, rc, err = run_child(cmd)
    if rc != 0:
        raise SystemExit(f"conversion failed: {' '.join(map(str, cmd))}\n{err}")
    written = sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file())
    return dt, rss, written


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="sd15,sdxl")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not SDCOREML.exists():
        raise SystemExit(f"{SDCOREML} is not built")
    rows = []
    for name in args.models.split(","):
        root = ensure_model(name)
        files = weight_files(root)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            tmp = Path(tmp)
            floors, convs, rss = [], [], []
            for _ in range(args.repeat):  # interleaved, so both see the same machine state
                dt, nbytes = io_floor(files, tmp)
                floors.append(dt)
                ct, peak, written = convert(root, CONFIGS[name]["flags"], tmp / "out")
                convs.append(ct)
                rss.append(peak)
        floor, conv = statistics.median(floors), statistics.median(convs)
        rows.append((name, nbytes, written, floor, conv, conv / floor, max(rss)))
    print(f"{'model':6} {'source MB':>10} {'written MB':>10} {'I/O floor s':>11} {'convert s':>9} "
          f"{'ratio':>6} {'peak RSS MB':>11}")
    for name, nbytes, written, floor, conv, ratio, peak in rows:
        print(f"{name:6} {nbytes / 1e6:10.0f} {written / 1e6:10.0f} {floor:11.2f} {conv:9.2f} {ratio:6.2f} "
              f"{peak / 1e6:11.0f}")
    print(f"(medians of {args.repeat} interleaved runs; peak RSS is the largest of the runs)")


if __name__ == "__main__":
    main()
