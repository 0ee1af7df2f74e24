#!/usr/bin/env python3
"""Benchmark: convert a full-size SD 1.5 VAE decoder (diffusers AutoencoderKL with the real
config: block_out_channels [128, 256, 512, 512], layers_per_block 2, latent 4, 32 groups;
random weights, fp16 variant safetensors) with build/sdcoreml, and decode a 64x64 latent with
the reference interpreter next to PyTorch on the CPU.

    <test venv>/bin/python bench/vae_decoder.py [--runs 3] [--compute-precision FLOAT16]

The model is made once with diffusers and cached under $SDCOREML_CACHE/bench (default
~/.cache/sdcoreml/bench); it is never committed. Making it and the PyTorch timing need torch +
diffusers (the venv tests/run.sh creates, e.g. ~/.cache/sdcoreml/venv-*/bin/python); the
conversion timing needs only the sdcoreml binary.

Prints wall time per conversion run and the median, peak RSS of each sdcoreml run (wait4's
rusage of the child alone), and — when `sdcoreml run` exists — the interpreter's decode time
for one 64x64 latent (load + predict) next to PyTorch's float32 decode of the same input
(after a warm-up), each --decode-runs times, alternating, both with --threads threads
(torch.set_num_threads, printed), their medians and ratio, and the PSNR between them.
Nothing is asserted: benchmarks are for reading, never for failing a build.
"""

import argparse
import hashlib
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
from benchlib import cache_root, mb, print_runs, psnr, run_child, tree_size  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NAME = "sd15-vae-full"

# The SD 1.5 VAE config (reference/sd-architectures.md §3.3)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
)
SEED = 1234


def model_dir():
    h = hashlib.sha256((json.dumps(SD15_VAE, sort_keys=True) + str(SEED)).encode()).hexdigest()[:12]
    return cache_root() / "bench" / f"{NAME}-{h}" / NAME


def need_torch(what):
    import importlib.util

    if not (importlib.util.find_spec("torch") and importlib.util.find_spec("diffusers")):
        sys.exit(f"bench: {what} needs torch + diffusers, which this python ({sys.executable}) lacks: run "
                 "with the test venv's python, e.g. ~/.cache/sdcoreml/venv-*/bin/python bench/vae_decoder.py")


def make_model(d):
    """Writes the random-weight VAE into d (called in a child process, see ensure_model)."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL

    d = Path(d)
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=d.parent))
    try:
        torch.manual_seed(SEED)
        vae = AutoencoderKL(**SD15_VAE).eval()
        vae.half().save_pretrained(tmp / "vae", safe_serialization=True, variant="fp16")
        index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
                 "vae": ["diffusers", "AutoencoderKL"]}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        os.rename(tmp, d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_model():
    """The cached model, made by a child process: importing torch here would put its ~0.5 GB
    into this process, and a forked child's ru_maxrss counts what it inherited before exec."""
    d = model_dir()
    if (d / "model_index.json").exists():
        return d
    need_torch(f"making {d}")
    t = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--make-model", str(d)], check=True, stdout=subprocess.DEVNULL)
    print(f"generated {d} in {time.perf_counter() - t:.1f} s")
    return d


def has_interpreter(exe):
    r = subprocess.run([str(exe), "run", "--help"], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    return r.returncode == 0


def decode_bench(exe, src, package, workdir, latent, threads, runs):
    """Interpreter vs PyTorch on one latent, `runs` times each, alternating (a change in the
    machine's load hits both alike); returns a dict of figures."""
    need_torch("the decode comparison")
    import numpy as np

    rng = np.random.default_rng(0)
    z = rng.standard_normal((1, 4, latent, latent)).astype(np.float16).astype(np.float32)
    zf = workdir / "z.npy"
    np.save(zf, z)
    out = workdir / "run-out"
    cmd = [str(exe), "run", str(package), "--input", f"z={zf}", "-o", str(out), "--threads", str(threads)]

    def interp_once():
        wall, rss, rc, err = run_child(cmd)
        if rc != 0:
            sys.exit(f"bench: sdcoreml run exited {rc}:\n{err}")
        return wall, rss

    # the first run before torch is imported: a child's peak RSS would count what it inherited
    first_wall, rss = interp_once()
    got = np.load(out / "image.npy")

    import torch  # only now: see ensure_model
    from diffusers import AutoencoderKL

    torch.set_num_threads(threads)  # Debian's torch starts with 1 thread
    vae = AutoencoderKL.from_pretrained(str(src / "vae"), variant="fp16", torch_dtype=torch.float32).eval()
    zt = torch.from_numpy(z)

    def torch_once():
        with torch.no_grad():
            t = time.perf_counter()
            ref = vae.decoder(vae.post_quant_conv(zt)).numpy()
            return ref, time.perf_counter() - t

    with torch.no_grad():
        small = torch.from_numpy(z[:, :, :8, :8].copy())
        vae.decoder(vae.post_quant_conv(small))  # warm-up (allocator, kernels)
    interp_walls, torch_walls = [first_wall], []
    ref, dt = torch_once()
    torch_walls.append(dt)
    for _ in range(runs - 1):
        interp_walls.append(interp_once()[0])
        torch_walls.append(torch_once()[1])
    return {"interp_walls": interp_walls, "interp_rss": rss, "torch_walls": torch_walls,
            "threads": torch.get_num_threads(), "psnr": psnr(ref, got), "shape": tuple(got.shape)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--compute-precision", default="FLOAT16", choices=["FLOAT16", "FLOAT32"])
    ap.add_argument("--latent", type=int, default=64, help="latent size of the decode comparison [64]")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="threads for both the interpreter and PyTorch [usable CPUs]")
    ap.add_argument("--decode-runs", type=int, default=3, help="decodes of each, alternating [3]")
    ap.add_argument("--no-decode", action="store_true", help="time the conversion only")
    ap.add_argument("--make-model", metavar="DIR", help=argparse.SUPPRESS)
    ap.add_argument("--sdcoreml", default=os.environ.get("SDCOREML_BIN", str(REPO / "build" / "sdcoreml")))
    args = ap.parse_args()
    if args.make_model:
        make_model(args.make_model)
        return 0

    exe = Path(args.sdcoreml)
    if not exe.is_file():
        sys.exit(f"bench: {exe} not built (cmake -B build -S . && cmake --build build -j2)")
    src = ensure_model()
    weights_in = sorted((src / "vae").glob("*.safetensors"))
    read_bytes = sum(p.stat().st_size for p in weights_in)

    extra = [] if args.compute_precision == "FLOAT16" else ["--compute-precision", args.compute_precision]
    rows = []
    written = package = None
    work = Path(tempfile.mkdtemp(prefix="sdcoreml-bench-vae-"))
    try:
        for i in range(args.runs):
            out = work / f"out{i}"
            cmd = [str(exe), "--convert-vae-decoder", "--model-version", src.name, "-o", str(out), *extra]
            wall, rss, rc, err = run_child(cmd, cwd=src.parent)
            if rc != 0:
                sys.exit(f"bench: sdcoreml exited {rc}:\n{err}")
            pkg = next(out.glob("*.mlpackage"))
            package = tree_size(pkg)
            written = (pkg / "Data/com.apple.CoreML/weights/weight.bin").stat().st_size
            rows.append((i + 1, wall, rss))
        decode = None
        if not args.no_decode and has_interpreter(exe):
            decode = decode_bench(exe, src, next((work / "out0").glob("*.mlpackage")), work, args.latent, args.threads,
                                  max(1, args.decode_runs))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"sdcoreml --convert-vae-decoder, SD 1.5 VAE decoder (random weights), "
          f"--compute-precision {args.compute_precision}")
    print(f"  binary: {exe}")
    print(f"  model:  {src}")
    print()
    print_runs(rows)
    print()
    print(f"  {'weights read':<22}{mb(read_bytes):>12}  ({', '.join(p.name for p in weights_in)}, encoder included)")
    print(f"  {'weight.bin written':<22}{mb(written):>12}")
    print(f"  {'package total':<22}{mb(package):>12}")
    print()
    if decode is None:
        why = "--no-decode" if args.no_decode else "no `sdcoreml run` in this build"
        print(f"  decode comparison skipped ({why})")
    else:
        fmt = lambda xs: " ".join(f"{x:.2f}" for x in xs)  # noqa: E731
        mi, mt = statistics.median(decode["interp_walls"]), statistics.median(decode["torch_walls"])
        print(f"  decode of one {args.latent}x{args.latent} latent -> image {decode['shape']}, "
              f"{decode['threads']} threads for both (torch.set_num_threads), alternating:")
        print(f"    {'sdcoreml run (load + predict)':<32}{mi:>8.2f}s median of {fmt(decode['interp_walls'])}  "
              f"(peak RSS {mb(decode['interp_rss'])})")
        print(f"    {'PyTorch CPU float32':<32}{mt:>8.2f}s median of {fmt(decode['torch_walls'])}")
        print(f"    {'ratio interpreter / PyTorch':<32}{mi / mt:>8.2f}x  (medians)")
        print(f"    {'PSNR (PyTorch fp32 reference)':<32}{decode['psnr']:>8.1f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
