#!/usr/bin/env python3
"""Single-file benchmark: a full-size SD 1.5 checkpoint (fp16, ~2 GB, random weights in the
real LDM layout) converted to all components (UNet, text encoder, VAE decoder and encoder),
next to the same model as a diffusers folder, in the same invocation.

Prints for each source the wall time and peak RSS (wait4 on the child alone) of every run,
their median, and the ratios file / folder. Nothing is asserted: benchmarks are for reading.

The folder is made of the full-size components the other benches generate (bench/unet.py,
bench/text_encoder.py, bench/vae_decoder.py; made here if missing), the single file from them
with tests/fixtures/make_single_files.py's LDM names, once, under $SDCOREML_CACHE/bench
(default ~/.cache/sdcoreml/bench); never committed. Needs the test venv's python.

    <test venv>/bin/python bench/single_file.py [--repeat 3]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import cache_root, ensure_text_encoder, mb, print_runs, run_child  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SDCOREML = Path(os.environ.get("SDCOREML_BIN") or REPO / "build" / "sdcoreml")
ROOT = cache_root() / "bench" / "sd15-single-file"
FLAGS = ["--convert-unet", "--convert-text-encoder", "--convert-vae-decoder", "--convert-vae-encoder"]


def ensure_folder():
    """The SD 1.5 pipeline folder: links to the other benches' full-size components."""
    folder = ROOT / "sd15"
    if (folder / "model_index.json").exists():
        return folder
    import unet as unet_bench
    import vae_decoder as vae_bench

    unet_root = unet_bench.ensure_model("sd15")
    te_root, _ = ensure_text_encoder()
    vae_root = vae_bench.ensure_model()
    tmp = Path(tempfile.mkdtemp(prefix=".sd15-", dir=ROOT.parent))
    for name, src in (("unet", unet_root), ("text_encoder", te_root), ("vae", vae_root)):
        (tmp / name).symlink_to(Path(src) / name)
    (tmp / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"], "vae": ["diffusers", "AutoencoderKL"]}))
    ROOT.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, folder)
    return folder


def ensure_file(folder):
    """sd15.safetensors, made by a child process: torch in this process would count in the
    measured children's peak RSS (a forked child's ru_maxrss includes what it inherited)."""
    path = ROOT / "sd15.safetensors"
    if not path.exists():
        subprocess.run([sys.executable, __file__, "--make-file", str(folder)], check=True)
    return path


def make_file(folder):
    """sd15.safetensors in the LDM layout, from the folder's fp16 tensors."""
    path = ROOT / "sd15.safetensors"
    sys.path.insert(0, str(REPO / "tests" / "fixtures"))
    import make_single_files as msf
    from safetensors.torch import load_file, save_file

    def component(name):
        d = folder / name
        return load_file(next(d.glob("*.safetensors"))), json.loads((d / "config.json").read_text())

    unet, ucfg = component("unet")
    sd = msf.unet_ldm(unet, ucfg)
    del unet
    vae, vcfg = component("vae")
    sd.update(msf.vae_ldm(vae, vcfg))
    te, _ = component("text_encoder")
    sd.update(msf.clip_ldm(te, "cond_stage_model.transformer."))
    tmp = path.with_suffix(".partial")
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp)
    os.rename(tmp, path)


def convert(model, out):
    shutil.rmtree(out, ignore_errors=True)
    cmd = [SDCOREML, "--quiet", "--model-version", model.name, "-o", out, *FLAGS]
    wall, rss, rc, err = run_child(cmd, cwd=model.parent)
    if rc != 0:
        raise SystemExit(f"conversion failed: {' '.join(map(str, cmd))}\n{err}")
    return wall, rss


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--make-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_file:
        return make_file(Path(args.make_file))
    folder = ensure_folder()
    path = ensure_file(folder)
    print(f"{path}: {mb(path.stat().st_size)}")
    runs = {"folder": [], "file": []}
    with tempfile.TemporaryDirectory() as work:
        for i in range(1, args.repeat + 1):  # interleaved, so drift hits both alike
            for name, model in (("folder", folder), ("file", path)):
                wall, rss = convert(model, Path(work) / name)
                runs[name].append((i, wall, rss))
    for name in ("folder", "file"):
        print(f"{name}: all four components")
        print_runs(runs[name])
    med = {k: statistics.median(r[1] for r in v) for k, v in runs.items()}
    peak = {k: max(r[2] for r in v) for k, v in runs.items()}
    print(f"file / folder: wall {med['file'] / med['folder']:.2f}x, peak RSS {peak['file'] / peak['folder']:.2f}x")


if __name__ == "__main__":
    main()
