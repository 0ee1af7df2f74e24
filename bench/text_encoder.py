#!/usr/bin/env python3
"""Benchmark: convert a full-size SD 1.5 text encoder (CLIP ViT-L/14 text tower, 123 M
parameters, random weights, fp16 variant safetensors) with build/sdcoreml.

    <test venv>/bin/python bench/text_encoder.py [--runs 3] [--compute-precision FLOAT16]

The model is made once by tests/fixtures/make_tiny_pipelines.py --kind sd15-text-encoder-full
and cached under $SDCOREML_CACHE/bench (default ~/.cache/sdcoreml/bench); it is never
committed. Generating it needs torch + transformers (the venv tests/run.sh creates, e.g.
~/.cache/sdcoreml/venv-*/bin/python); timing it needs only the sdcoreml binary.

Prints wall time per run and the median, peak RSS of each sdcoreml run (from wait4's rusage,
so the child alone), and the sizes of the weights read and written. Nothing is asserted:
benchmarks are for reading, never for failing a build.
"""

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENERATOR = REPO / "tests" / "fixtures" / "make_tiny_pipelines.py"
KIND = "sd15-text-encoder-full"


def cache_root():
    return Path(os.environ.get("SDCOREML_CACHE") or Path.home() / ".cache" / "sdcoreml")


def model_dir():
    h = hashlib.sha256(GENERATOR.read_bytes()).hexdigest()[:12]
    return cache_root() / "bench" / f"{KIND}-{h}" / KIND


def ensure_model():
    d = model_dir()
    if (d / "model_index.json").exists():
        return d, False
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        sys.exit(
            f"bench: {d} does not exist yet and this python ({sys.executable}) cannot make it "
            "(needs torch + transformers): run with the test venv's python, e.g. "
            "~/.cache/sdcoreml/venv-*/bin/python bench/text_encoder.py"
        )
    d.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, str(GENERATOR), "--kind", KIND, "--out", str(d)], check=True,
                   stdout=subprocess.DEVNULL)
    print(f"generated {d} in {time.perf_counter() - t:.1f} s")
    return d, True


def run_once(exe, src, out, extra):
    """One conversion; returns (wall seconds, peak RSS bytes, returncode, stderr)."""
    cmd = [str(exe), "--convert-text-encoder", "--model-version", src.name, "-o", str(out), *extra]
    t = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=src.parent, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    return wall, ru.ru_maxrss * 1024, p.returncode, err.decode(errors="replace")


def tree_size(p):
    return sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file())


def mb(n):
    return f"{n / 1e6:,.1f} MB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--compute-precision", default="FLOAT16", choices=["FLOAT16", "FLOAT32"])
    ap.add_argument("--sdcoreml", default=os.environ.get("SDCOREML_BIN", str(REPO / "build" / "sdcoreml")))
    args = ap.parse_args()

    exe = Path(args.sdcoreml)
    if not exe.is_file():
        sys.exit(f"bench: {exe} not built (cmake -B build -S . && cmake --build build -j2)")
    src, _ = ensure_model()
    weights_in = sorted((src / "text_encoder").glob("*.safetensors"))
    read_bytes = sum(p.stat().st_size for p in weights_in)

    extra = [] if args.compute_precision == "FLOAT16" else ["--compute-precision", args.compute_precision]
    rows = []
    written = package = None
    for i in range(args.runs):
        out = Path(tempfile.mkdtemp(prefix="sdcoreml-bench-"))
        try:
            wall, rss, rc, err = run_once(exe, src, out, extra)
            if rc != 0:
                sys.exit(f"bench: sdcoreml exited {rc}:\n{err}")
            pkgs = list(out.glob("*.mlpackage"))
            package = tree_size(pkgs[0])
            written = sum(p.stat().st_size for p in out.rglob("weight.bin"))
            rows.append((i + 1, wall, rss))
        finally:
            shutil.rmtree(out, ignore_errors=True)

    print()
    print(f"sdcoreml --convert-text-encoder, SD 1.5 text encoder (123 M params, random), "
          f"--compute-precision {args.compute_precision}")
    print(f"  binary: {exe}")
    print(f"  model:  {src}")
    print()
    print(f"  {'run':>4}  {'wall':>9}  {'peak RSS':>12}")
    for i, wall, rss in rows:
        print(f"  {i:>4}  {wall:>8.2f}s  {mb(rss):>12}")
    walls = [r[1] for r in rows]
    print(f"  {'med':>4}  {statistics.median(walls):>8.2f}s  {mb(max(r[2] for r in rows)):>12} (max)")
    print()
    print(f"  {'weights read':<22}{mb(read_bytes):>12}  ({', '.join(p.name for p in weights_in)})")
    print(f"  {'weight.bin written':<22}{mb(written):>12}")
    print(f"  {'package total':<22}{mb(package):>12}")
    print(f"  {'read throughput':<22}{read_bytes / 1e6 / statistics.median(walls):>9,.0f} MB/s (median run)")
    print(f"  {'peak RSS / weights':<22}{max(r[2] for r in rows) / read_bytes:>12.2f}x")
    print()
    print("  (peak RSS is ru_maxrss of the sdcoreml process; it includes touched pages of the mmap'd")
    print("   input, which sdcoreml releases tensor by tensor after streaming them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
