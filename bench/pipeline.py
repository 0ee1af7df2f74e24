#!/usr/bin/env python3
"""Generation benchmark: `sdcoreml pipeline` on a full-size random-weight SD 1.5 (the real text
encoder, UNet and VAE configs; float16 packages, as the anchor converts them), 512x512, next to
diffusers' StableDiffusionPipeline on PyTorch's CPU (float32) in the same invocation, same
prompt, steps, scheduler (PNDM, SD 1.5's) and thread count.

Prints, for each: seconds per denoising step (the median step: sdcoreml's --json timings, the
diffusers run timed step by step by its callback), the whole run's wall time and peak RSS
(wait4's rusage of that child alone), and their ratios. Nothing is asserted: benchmarks are for
reading, never for failing a build.

The model is put together from the cached full-size parts of the other benches (bench/unet.py's
UNet, benchlib's text encoder, bench/vae_decoder.py's VAE; each made once on demand under
$SDCOREML_CACHE/bench, default ~/.cache/sdcoreml/bench, never committed) with the tiny model's
tokenizer files (any ids index the full vocabulary) and SD 1.5's scheduler config. Needs the
test venv (tests/run.sh makes it): run it with that venv's python.

    python bench/pipeline.py [--steps 20] [--threads N]
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
import unet as unet_bench  # noqa: E402
import vae_decoder as vae_bench  # noqa: E402
from benchlib import cache_root, ensure_text_encoder, mb  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NAME = "sd15-pipeline-full"
PROMPT = "a photo of an astronaut riding a horse on mars"

# SD 1.5's scheduler/scheduler_config.json (PNDM)
SCHEDULER = {
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "timestep_spacing": "leading", "trained_betas": None, "prediction_type": "epsilon",
}

DIFFUSERS = r"""
import json, sys, time, torch
from diffusers import StableDiffusionPipeline
src, steps, threads, prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(threads)
pipe = StableDiffusionPipeline.from_pretrained(src, torch_dtype=torch.float32, variant="fp16", safety_checker=None,
                                               requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)
marks = []
def on_step(p, i, t, kw):
    marks.append(time.perf_counter())
    return kw
t0 = time.perf_counter()
pipe(prompt, num_inference_steps=steps, height=512, width=512, callback_on_step_end=on_step, output_type="np")
total = time.perf_counter() - t0
print(json.dumps({"steps": [b - a for a, b in zip(marks, marks[1:])], "total": total, "threads": torch.get_num_threads()}))
"""


def ensure_pipeline():
    """The assembled SD 1.5 folder (links to the cached parts)."""
    d = cache_root() / "bench" / NAME
    if (d / "model_index.json").exists():
        return d
    te, _ = ensure_text_encoder()
    unet = unet_bench.ensure_model("sd15")
    vae = vae_bench.ensure_model()
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=d.parent))
    try:
        os.symlink(te / "text_encoder", tmp / "text_encoder")
        os.symlink(unet / "unet", tmp / "unet")
        os.symlink(vae / "vae", tmp / "vae")
        shutil.copytree(REPO / "examples" / "tiny-sd" / "tokenizer", tmp / "tokenizer")
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2) + "\n")
        index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.2",
                 "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                 "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                 "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [None, None],
                 "feature_extractor": [None, None], "requires_safety_checker": False}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        os.rename(tmp, d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return d


def run_measured(cmd, cwd=None):
    """(wall seconds, peak RSS bytes of that child alone, stdout) of one child; exits on failure."""
    t = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen([str(c) for c in cmd], cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        out.seek(0), err.seek(0)
        if p.returncode:
            sys.exit(f"bench: {cmd[0]} exited {p.returncode}:\n{err.read().decode(errors='replace')}")
        return wall, ru.ru_maxrss * 1024, out.read().decode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="threads for both the interpreter and PyTorch [usable CPUs]")
    ap.add_argument("--sdcoreml", default=os.environ.get("SDCOREML_BIN", str(REPO / "build" / "sdcoreml")))
    args = ap.parse_args()
    exe = Path(args.sdcoreml)
    if not exe.is_file():
        sys.exit(f"bench: {exe} not built (cmake -B build -S . && cmake --build build -j2)")
    src = ensure_pipeline()
    work = Path(tempfile.mkdtemp(prefix="sdcoreml-bench-pipeline-"))
    try:
        pkgs = work / "pkgs"
        t = time.perf_counter()
        run_measured([exe, "--model-version", src.name, "-o", pkgs, "--convert-text-encoder", "--convert-unet",
                      "--convert-vae-decoder", "--quiet"], cwd=src.parent)
        convert_wall = time.perf_counter() - t
        wall, rss, out = run_measured([exe, "pipeline", "--prompt", PROMPT, "-i", pkgs, "-o", work / "images",
                                       "--model-version", src.name, "--num-inference-steps", args.steps, "--threads",
                                       args.threads, "--json"], cwd=src.parent)
        ours = json.loads(out)
        t_wall, t_rss, t_out = run_measured([sys.executable, "-c", DIFFUSERS, src, args.steps, args.threads, PROMPT])
        theirs = json.loads(t_out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ours_step = ours["seconds_per_step"]
    theirs_step = statistics.median(theirs["steps"]) if theirs["steps"] else theirs["total"] / args.steps
    print()
    print(f"SD 1.5 (random weights), 512x512, {args.steps} steps, PNDM, guidance 7.5 (UNet batch 2), "
          f"{args.threads} threads")
    print(f"  model: {src}")
    print(f"  packages converted (text encoder, UNet, VAE decoder; FLOAT16) in {convert_wall:.1f} s")
    print()
    print(f"  {'':<34}{'s/step':>9}{'wall':>10}{'peak RSS':>13}")
    print(f"  {'sdcoreml pipeline (fp16 packages)':<34}{ours_step:>9.2f}{wall:>9.1f}s{mb(rss):>13}")
    print(f"  {'diffusers, PyTorch CPU (float32)':<34}{theirs_step:>9.2f}{t_wall:>9.1f}s{mb(t_rss):>13}")
    print(f"  {'ratio sdcoreml / diffusers':<34}{ours_step / theirs_step:>9.2f}{wall / t_wall:>10.2f}"
          f"{rss / t_rss:>13.2f}")
    print(f"  sdcoreml stages: {', '.join(f'{k} {v:.1f} s' for k, v in ours['seconds'].items())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
