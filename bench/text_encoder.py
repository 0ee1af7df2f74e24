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
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import REPO, ensure_text_encoder, mb, print_runs, run_child, tree_size  # noqa: E402



def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--compute-precision", default="FLOAT16", choices=["FLOAT16", "FLOAT32"])
    ap.add_argument("--sdcoreml", default=os.environ.get("SDCOREML_BIN", str(REPO / "build" / "sdcoreml")))
    args = ap.parse_args()

    exe = Path(args.sdcoreml)
    if not exe.is_file():
        sys.exit(f"bench: {exe} not built (cmake -B build -S . && cmake --build build -j2)")
    src, _ = ensure_text_encoder()
    weights_in = sorted((src / "text_encoder").glob("*.safetensors"))
    read_bytes = sum(p.stat().st_size for p in weights_in)

    extra = [] if args.compute_precision == "FLOAT16" else ["--compute-precision", args.compute_precision]
    rows = []
    written = package = None
    for i in range(args.runs):
        out = Path(tempfile.mkdtemp(prefix="sdcoreml-bench-"))
        try:
            cmd = [exe, "--convert-text-encoder", "--model-version", src.name, "-o", out, *extra]
            wall, rss, rc, err = run_child(cmd, cwd=src.parent)
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
    print_runs(rows)
    walls = [r[1] for r in rows]
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
