#!/usr/bin/env python3
"""Benchmark: sdcoreml's reference interpreter vs PyTorch CPU on a full-size SD 1.5 text
encoder (CLIP ViT-L/14 text tower, 123 M parameters, random weights), same input.

    <test venv>/bin/python bench/interp_text_encoder.py [--runs 3] [--compute-precision FLOAT16] [--threads N]

The model is made once by tests/fixtures/make_tiny_pipelines.py --kind sd15-text-encoder-full
and cached under $SDCOREML_CACHE/bench (default ~/.cache/sdcoreml/bench), shared with
bench/text_encoder.py. It is converted with build/sdcoreml --convert-text-encoder, then in one
run of this script:
  - the interpreter: `sdcoreml run` (a new process each time); its predict time (load and
    .npy I/O excluded; reported by `run --json`) and the whole process's wall time;
  - PyTorch: transformers' CLIPTextModel in float32 on the CPU, one forward (loading excluded),
    with torch.set_num_threads equal to the interpreter's threads (printed);
each `--runs` times, alternating, after one warm-up of each; prints every time, the medians
and their ratio, and the PSNR of the interpreter's outputs against PyTorch's (the anchor's
formula). Nothing is asserted.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import REPO, ensure_text_encoder, psnr  # noqa: E402

def token_ids():
    """A fixed prompt-like input: <|startoftext|>, 12 word ids, <|endoftext|>, padding."""
    rng = np.random.default_rng(0)
    ids = np.full((1, 77), 49407, np.int64)
    ids[0, 0] = 49406
    ids[0, 1:13] = rng.integers(320, 49000, 12)
    return ids


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--compute-precision", default="FLOAT16", choices=["FLOAT16", "FLOAT32"])
    ap.add_argument("--threads", type=int, default=0, help="threads of the interpreter and of PyTorch [usable CPUs]")
    ap.add_argument("--sdcoreml", default=os.environ.get("SDCOREML_BIN", str(REPO / "build" / "sdcoreml")))
    args = ap.parse_args()

    import torch
    from transformers import CLIPTextModel

    n_threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(n_threads)  # equal threads: Debian's torch starts with 1

    exe = Path(args.sdcoreml)
    if not exe.is_file():
        sys.exit(f"bench: {exe} not built (cmake -B build -S . && cmake --build build -j2)")
    src, _ = ensure_text_encoder()
    work = Path(tempfile.mkdtemp(prefix="sdcoreml-bench-interp-"))
    try:
        extra = ["--compute-precision", args.compute_precision]
        t = time.perf_counter()
        subprocess.run([str(exe), "--convert-text-encoder", "--model-version", src.name, "-o", str(work / "pkg"), "--quiet",
                        *extra], cwd=src.parent, check=True, stdout=subprocess.DEVNULL)
        convert_s = time.perf_counter() - t
        pkg = next((work / "pkg").glob("*.mlpackage"))

        ids = token_ids()
        np.save(work / "ids.npy", ids.astype(np.float32))
        cmd = [str(exe), "run", str(pkg), "--input", f"input_ids={work / 'ids.npy'}", "-o", str(work / "out"), "--json"]
        modes = [n_threads]

        model = CLIPTextModel.from_pretrained(src / "text_encoder", variant="fp16", torch_dtype=torch.float32).eval()
        tids = torch.from_numpy(ids)

        def interp_once(threads):
            t = time.perf_counter()
            r = subprocess.run(cmd + ["--threads", str(threads)], capture_output=True, text=True)
            wall = time.perf_counter() - t
            if r.returncode:
                sys.exit(f"bench: sdcoreml run exited {r.returncode}:\n{r.stderr}")
            return json.loads(r.stdout), wall

        def torch_once():
            with torch.no_grad():
                t = time.perf_counter()
                o = model(tids, return_dict=True)
                return o, time.perf_counter() - t

        interp_once(n_threads), torch_once()  # warm-up: page cache, allocator, torch's first call
        # alternate interpreter and PyTorch so that a change in the machine's load hits both alike
        interp = {m: ([], []) for m in modes}
        torch_times = []
        for _ in range(args.runs):
            for m in modes:
                doc, wall = interp_once(m)
                interp[m][0].append(doc["predict_seconds"])
                interp[m][1].append(wall)
            ref, dt = torch_once()
            torch_times.append(dt)
        got = {o["name"]: np.load(o["file"]) for o in doc["outputs"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med_t = statistics.median(torch_times)
    fmt = lambda xs: " ".join(f"{x:.3f}" for x in xs)  # noqa: E731
    print(f"SD 1.5 text encoder (123 M params, random weights), input_ids (1, 77); {os.cpu_count()} CPUs")
    print(f"  package: --compute-precision {args.compute_precision} (converted in {convert_s:.1f} s)")
    print(f"  PyTorch {torch.__version__} CPU fp32 forward, {torch.get_num_threads()} thread(s) (s): {fmt(torch_times)}"
          f"  median {med_t:.3f}")
    for m in modes:
        p, w = interp[m]
        mp, mw = statistics.median(p), statistics.median(w)
        print(f"  interpreter, {m} thread(s): predict (s) {fmt(p)}  median {mp:.3f};"
              f" whole process (load + predict + .npy I/O) median {mw:.3f}")
        print(f"    ratio interpreter / PyTorch: {mp / med_t:.2f}x (predict)   {mw / med_t:.2f}x (whole process)")
    print(f"  PSNR vs PyTorch: last_hidden_state {psnr(ref.last_hidden_state.numpy(), got['last_hidden_state']):.1f} dB,"
          f" pooled_outputs {psnr(ref.pooler_output.numpy(), got['pooled_outputs']):.1f} dB")


if __name__ == "__main__":
    main()
