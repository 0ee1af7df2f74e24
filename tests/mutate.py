#!/usr/bin/env python3
"""tests/mutate.py — does the test suite notice when the code is wrong?

Plants each of a list of small deliberate bugs (MUTATIONS below: one source edit each, in every
subsystem), rebuilds, runs the tests that should notice (ctest and a pytest subset per mutation,
to keep the run affordable), and prints per mutation whether the tests caught it, and by which
test, then the score. A mutation the suite misses is a test to write.

It never touches your tree: it copies the committed tree (`git archive HEAD`) into a scratch
folder (default /tmp/sdcoreml-mutate-<pid>; --workdir to choose), builds there once, then edits,
rebuilds and restores one file at a time in that copy. So uncommitted edits are not tested (it
says so and refuses unless --allow-dirty), and Ctrl-C or a crash leaves your tree as it was; the
copy's edited file is restored in a `finally` too. Not run in CI: about 20 minutes on 2 cores (38 mutations).

Usage (with the test venv's python, as tests/run.sh makes it):
    ~/.cache/sdcoreml/venv-*/bin/python tests/mutate.py                 # all mutations
    ~/.cache/sdcoreml/venv-*/bin/python tests/mutate.py -m unet-tf-groupnorm-eps -m clip-ln-eps
    ~/.cache/sdcoreml/venv-*/bin/python tests/mutate.py --list

Before mutating, the unmutated copy must pass every selected test subset (the baseline; skip it
with --no-baseline): otherwise every mutation would look caught. A mutation that does not
compile is reported as "invalid" and left out of the score.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Test subsets: (pytest files under tests/python, -k expression or None). -x stops at the first
# failure, so a caught mutation costs little.

T = {
    "unet": (["test_unet.py", "test_odd_fixture.py"],
             "noise_pred or odd_latents_match or (odd_fixture and unet)"),
    "unet-contract": (["test_unet.py"], "contract"),
    "text": (["test_odd_fixture.py", "test_interp_text_encoder.py", "test_text_encoder.py"],
             "(odd_fixture and text_encoder) or interpreter_matches or numbers_match"),
    "vae": (["test_odd_fixture.py", "test_vae.py"], "(odd_fixture and vae) or numbers_match"),
    "safety": (["test_safety_checker.py"], "numbers_match"),
    "controlnet": (["test_controlnet.py"], None),
    "quantize": (["test_quantize.py"], None),
    "chunk": (["test_chunk.py"], None),
    "refusals": (["test_xl_refusals.py", "test_unet.py"], "refus or xl_version"),
    "check": (["test_check.py"], None),
    "cli": (["test_cli.py"], None),
    "hostile": (["test_hostile_packages.py", "test_bad_inputs.py"], None),
    "interp-ops": (["test_interp_ops.py"], None),
    "source": (["test_text_encoder.py", "test_hub_cache.py"], "fp16_variant or hub"),
    "sweep": (["test_config_sweep.py"], None),
}


@dataclass
class Mutation:
    id: str
    subsystem: str
    path: str  # relative to the repository
    old: str  # must occur exactly once in the file
    new: str
    ctest: bool = True  # run the C unit tests (about 10 s)
    pytest: list = field(default_factory=list)  # keys of T, in the order to run them
    why: str = ""


M = Mutation
MUTATIONS = [
    # ---- the seven bugs of issue 17 that once passed every test ---------------------------
    M("unet-tf-groupnorm-eps", "nets", "src/nets/unet.c",
      "sdc_net_group_norm(&u->n, x, p, (int)u->cfg->groups, 1e-6f);",
      "sdc_net_group_norm(&u->n, x, p, (int)u->cfg->groups, 1e-5f);",
      pytest=["unet"], why="issue 17: transformer GroupNorm eps 1e-6 -> 1e-5"),
    M("clip-ln-eps", "nets", "src/nets/clip.c",
      "sdc_net_weight(n, b, 1, s), (float)eps);", "sdc_net_weight(n, b, 1, s), (float)(eps * 0.1));",
      pytest=["text"], why="issue 17: CLIP layer_norm eps x 0.1"),
    M("st-data-bounds", "io", "src/io/safetensors.c", "if (at > data_size)", "if (at > data_size + 1)",
      why="issue 17: safetensors data one byte short accepted"),
    M("te-xl-refusal", "convert", "src/convert/text_encoder.c",
      '" (no text_encoder_2)");\n    if (s) return s;', '" (no text_encoder_2)");\n    (void)s;',
      pytest=["refusals"], why="issue 17: the text encoder's --xl-version refusals removed"),
    M("unet-config-groups", "nets", "src/nets/unet.c",
      '(s = sdc_config_int(c, "norm_num_groups", 32, &cfg->groups, err)) ||',
      '(s = sdc_config_int(c, "norm_num_groups", 32, &cfg->groups, err), cfg->groups = 32, s) ||',
      pytest=["unet"], why="issue 17: UNet ignores norm_num_groups"),
    M("unet-config-eps", "nets", "src/nets/unet.c",
      '(s = sdc_config_double(c, "norm_eps", 1e-5, &cfg->norm_eps, err)) ||',
      '(s = sdc_config_double(c, "norm_eps", 1e-5, &cfg->norm_eps, err), cfg->norm_eps = 1e-5, s) ||',
      pytest=["unet"], why="issue 17: UNet ignores norm_eps"),
    M("unet-time-ids-swap", "nets", "src/nets/unet.c",
      "mil_var *ids32 = time_ids->type.dtype == SDC_DT_F32 ? time_ids : sdc_mil_cast(g, time_ids, SDC_DT_F32);",
      "mil_var *ids32 = time_ids->type.dtype == SDC_DT_F32 ? time_ids : sdc_mil_cast(g, time_ids, SDC_DT_F32);\n"
      "        if (n_ids == 6) { static const int32_t swap[6] = {4, 5, 2, 3, 0, 1};\n"
      "            ids32 = sdc_mil_gather(g, ids32, sdc_mil_const_ints(g, 6, swap), 1); }",
      pytest=["unet"], why="issue 17: SDXL time_ids original and target size swapped"),
    M("vae-layers-per-block", "nets", "src/nets/vae.c",
      '(s = sdc_config_int(c, "layers_per_block", 1, &cfg->layers_per_block, err)) ||',
      '(s = sdc_config_int(c, "layers_per_block", 1, &cfg->layers_per_block, err), cfg->layers_per_block = 1, s) ||',
      pytest=["vae"], why="issue 17: VAE layers_per_block forced to 1"),
    # ---- readers: src/io, src/source --------------------------------------------------------
    M("st-header-bounds", "io", "src/io/safetensors.c", "else if (8 + n > size)", "else if (8 + n > size + 1)",
      why="header length one byte past the file accepted"),
    # (`a >= 0x477ff000u` -> `>` and `a <= 0x33000000u` -> `<` are equivalent mutants: the
    # normal and subnormal paths round those ties the same way, so no test can tell.)
    M("fp16-nan-quiet", "io", "src/io/fp16.c", "return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x03ffu));",
      "return (uint16_t)(sign | 0x7c00u | ((a >> 13) & 0x03ffu));", why="a NaN without high payload bits becomes Inf"),
    M("fp16-normal-limit", "io", "src/io/fp16.c", "if (a >= 0x38800000u) {", "if (a >= 0x38000000u) {",
      why="values in [2^-15, 2^-14) take the normal path"),
    M("npy-fortran", "io", "src/io/npy.c", 'if (parse_word(&h, "True")) fortran = true;',
      'if (parse_word(&h, "True")) fortran = false;', pytest=["cli"],
      why="fortran_order .npy read as C order"),
    M("source-variant-order", "source", "src/source/source.c", 'variants[] = {".fp16", ""};',
      'variants[] = {"", ".fp16"};', pytest=["source"], why="default weights preferred over the fp16 variant"),
    # ---- builders: src/nets -------------------------------------------------------------------
    M("unet-resnet-eps-x10", "nets", "src/nets/unet.c", "(float)u->cfg->norm_eps);",
      "(float)u->cfg->norm_eps * 10);", pytest=["unet"], why="UNet resnet GroupNorm eps x 10"),
    M("groupnorm-bias-is-gain", "nets", "src/nets/blocks.c", "return sdc_mil_add(n->g, h, channel_param(n, b, C));",
      "return sdc_mil_add(n->g, h, channel_param(n, w, C));", pytest=["vae", "unet"],
      why="GroupNorm adds its gain instead of its bias"),
    M("unet-attn-scale", "nets", "src/nets/unet.c", "(float)(1.0 / sqrt((double)(C / heads)))",
      "(float)(1.0 / sqrt((double)C))", pytest=["unet"], why="attention scaled by 1/sqrt(C), not 1/sqrt(head dim)"),
    M("clip-quick-gelu", "nets", "src/nets/clip.c", 'd->quick_gelu = !strcmp(act, "quick_gelu");',
      "d->quick_gelu = false;", pytest=["text"], why="quick_gelu computed as gelu"),
    M("clip-eos-argmax", "nets", "src/nets/clip_text.c", "if (cfg->eos_token_id == 2) return",
      "if (cfg->eos_token_id != 0) return", pytest=["text"], why="pooling at argmax(ids) whatever eos_token_id"),
    M("vae-eps", "nets", "src/nets/vae.c", "static const float VAE_EPS = 1e-6f;", "static const float VAE_EPS = 1e-5f;",
      pytest=["vae"], why="VAE GroupNorm eps 1e-5"),
    M("sinusoid-shift", "nets", "src/nets/blocks.c", "((double)half - freq_shift)", "((double)half - 0.0)",
      pytest=["sweep"], why="timestep sinusoids ignore freq_shift (every SD UNet has 0; the sweep has 1)"),
    M("safety-special-care", "nets", "src/nets/safety_checker.c",
      "sdc_mil_const_scalar(g, SDC_DT_F32, 0.01f)));", "sdc_mil_const_scalar(g, SDC_DT_F32, 0.0f)));",
      pytest=["safety"], why="special care no longer lifts concept scores"),
    # ---- passes: src/passes -------------------------------------------------------------------
    M("palettize-rank", "passes", "src/passes/palettize.c", "v->type.rank >= 2 &&", "v->type.rank >= 3 &&",
      pytest=["quantize"], why="rank-2 weights (linear layers) left dense"),
    M("kmeans-centroid", "passes", "src/passes/palettize.c", "centroid[j] = sx / sw;",
      "centroid[j] = sx / (sw + 1e-3);", pytest=["quantize"], why="centroids not the cluster means"),
    M("chunk-half", "passes", "src/passes/chunk.c", "cum < total - total / 2", "cum < total - total / 4",
      pytest=["chunk"], why="the chunk cut at a quarter of the weights, not half"),
    # ---- writer: src/coreml -------------------------------------------------------------------
    M("writer-spec-version", "coreml", "src/coreml/writer.c", "m->specificationversion = info->spec_version;",
      "m->specificationversion = info->spec_version + 1;", pytest=["unet-contract"],
      why="wrong specificationVersion"),
    M("blob-data-offset", "coreml", "src/coreml/blob.c", "put_u64(rec + 16, w->pos + SDC_BLOB_HEADER);",
      "put_u64(rec + 16, w->pos + SDC_BLOB_HEADER + 64);", pytest=["unet-contract"],
      why="blob records point 64 bytes past their data"),
    M("blob-reader-bounds", "coreml", "src/coreml/blob.c", "r->size <= f->map.size - r->data;",
      "r->size <= f->map.size - r->data + 1;", pytest=["hostile"],
      why="a blob one byte past weight.bin accepted"),
    # ---- interpreter kernels: src/interp ------------------------------------------------------
    M("interp-ln-eps", "interp", "src/interp/ops_nn.c", "v / (double)nr + (double)c->eps",
      "v / (double)nr + 10.0 * (double)c->eps", pytest=["interp-ops"], why="layer_norm eps x 10"),
    M("interp-gelu-exact-as-tanh", "interp", "src/interp/ops_elementwise.c",
      "o[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));",
      "o[i] = 0.5f * x[i] * (1.0f + tanhf(0.79788456f * (x[i] + 0.044715f * x[i] * x[i] * x[i])));",
      pytest=["interp-ops"], why="exact gelu computed with the tanh approximation"),
    M("interp-sdpa-scale", "interp", "src/interp/ops_nn.c", "float scale = 1.0f / sqrtf((float)E);",
      "float scale = 1.0f / sqrtf((float)E + 1.0f);", pytest=["interp-ops"], why="sdpa scale 1/sqrt(E+1)"),
    M("interp-softmax-sum", "interp", "src/interp/ops_nn.c", "sum[j] = 1.0f / sum[j];",
      "sum[j] = 1.0f / (sum[j] + 1e-3f);", pytest=["interp-ops"], why="softmax normaliser off by 1e-3"),
    M("interp-conv-pad", "interp", "src/interp/ops_nn.c", "pa[j] = pad[2 * i + 1];", "pa[j] = pad[2 * i];",
      pytest=["interp-ops"], why="conv end padding taken from the begin padding"),
    M("interp-rsqrt-eps", "interp", "src/interp/ops_elementwise.c", "case U_RSQRT: return 1.0f / sqrtf(x + eps);",
      "case U_RSQRT: return 1.0f / sqrtf(x);", pytest=["interp-ops"], why="rsqrt ignores epsilon"),
    # ---- CLI and driver refusals: cli/, src/convert -------------------------------------------
    # (dropping `n == 3` from the CLI's --quantize-nbits check is an equivalent mutant: the driver
    # checks the bit count again, with the same message and exit code.)
    M("cli-exit-usage", "cli", "cli/main.c", "return s == SDC_E_ARG ? SDC_CLI_EXIT_USAGE : 1;", "return 1;",
      ctest=False, pytest=["cli", "refusals"], why="a refused option exits 1, not 2"),
    M("unet-xl-refusal", "convert", "src/convert/unet.c", "if (xl && !c->job->xl_version)",
      "if (xl && !c->job->xl_version && 0)", ctest=False, pytest=["refusals"],
      why="SDXL UNet without --xl-version converted"),
    M("control-unet-xl-refusal", "convert", "src/convert/unet.c",
      "if (c->job->unet_support_controlnet && c->job->xl_version)",
      "if (c->job->unet_support_controlnet && c->job->xl_version && 0)", ctest=False, pytest=["refusals"],
      why="--unet-support-controlnet accepted for SDXL"),
    M("controlnet-xl-refusal", "convert", "src/convert/controlnet.c",
      "if (sdc_pipeline_is_xl(c->src) || c->job->xl_version)", "if (sdc_pipeline_is_xl(c->src))",
      ctest=False, pytest=["refusals", "controlnet"], why="ControlNet with --xl-version accepted"),
    M("check-threshold", "convert", "src/convert/check.c", "else if (!(p >= SDC_CHECK_MIN_PSNR))",
      "else if (!(p >= -1000.0))", ctest=False, pytest=["check"],
      why="--check-output-correctness never fails a package"),
]


# ---------------------------------------------------------------------------------------------


def sh(cmd, cwd, timeout, env=None):
    t0 = time.time()
    try:
        r = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout)
        return r.returncode, r.stdout, time.time() - t0
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return "timeout", out, time.time() - t0


class Tree:
    """The scratch copy: source, build dir, and how to run the tests in it."""

    def __init__(self, root, python, jobs):
        self.root = Path(root)
        self.build = self.root / "build-mutate"
        self.python = python
        self.jobs = jobs

    def configure(self):
        rc, out, _ = sh(["cmake", "-B", str(self.build), "-S", str(self.root)], self.root, 600)
        if rc != 0:
            raise SystemExit(f"mutate: cmake configure failed:\n{out[-3000:]}")

    def make(self):
        return sh(["cmake", "--build", str(self.build), f"-j{self.jobs}"], self.root, 1200)

    def ctest(self):
        rc, out, dt = sh(["ctest", "--test-dir", str(self.build), "--output-on-failure"], self.root, 900)
        if rc == 0:
            return None, dt
        failed = re.findall(r"^\s*\d+ - (\S+) \(", out, re.M)
        return ("ctest " + ",".join(failed)) if failed else f"ctest ({rc})", dt

    def pytest(self, key, timeout):
        files, kexpr = T[key]
        env = dict(os.environ, SDCOREML_BIN=str(self.build / "sdcoreml"), PYTHONDONTWRITEBYTECODE="1")
        cmd = [self.python, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:randomly",
               *[f"tests/python/{f}" for f in files]]
        if kexpr:
            cmd += ["-k", kexpr]
        rc, out, dt = sh(cmd, self.root, timeout, env)
        if rc == 0:
            return None, dt
        if rc == "timeout":
            return f"pytest {key}: timeout after {timeout} s", dt
        m = re.search(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
        if m:
            return m.group(1).replace("tests/python/", ""), dt
        return f"pytest {key} exit {rc}: " + (out.strip().splitlines() or [""])[-1], dt


def copy_tree(dest):
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=REPO, check=True,
                             stdout=subprocess.PIPE).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def validate(mutations, root):
    bad = []
    for m in mutations:
        p = root / m.path
        n = p.read_text().count(m.old) if p.is_file() else -1
        if n != 1:
            bad.append(f"{m.id}: {m.path}: the text to replace occurs {n} times (must be once)")
    if bad:
        raise SystemExit("mutate: stale mutations (the source changed; update MUTATIONS):\n  " + "\n  ".join(bad))


def run_one(tree, m, timeout):
    """Apply m, rebuild, test, restore. Returns (result, by, seconds)."""
    path = tree.root / m.path
    original = path.read_bytes()
    t0 = time.time()
    try:
        path.write_text(original.decode().replace(m.old, m.new, 1))
        rc, out, _ = tree.make()
        if rc != 0:
            err = [l for l in out.splitlines() if "error" in l]
            return "invalid", "does not compile: " + (err[0] if err else out[-200:]), time.time() - t0
        if m.ctest:
            by, _ = tree.ctest()
            if by:
                return "caught", by, time.time() - t0
        for key in m.pytest:
            by, _ = tree.pytest(key, timeout)
            if by:
                return "caught", by, time.time() - t0
        return "MISSED", "", time.time() - t0
    finally:
        path.write_bytes(original)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--mutation", action="append", help="run only these ids (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--workdir", help="scratch folder (default: a new /tmp/sdcoreml-mutate-*)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated baseline run")
    ap.add_argument("--allow-dirty", action="store_true", help="run although the tree has uncommitted changes")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per pytest subset (default 900)")
    ap.add_argument("--python", default=sys.executable, help="python with the test requirements")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    args = ap.parse_args(argv)

    mutations = MUTATIONS
    if args.mutation:
        known = {m.id for m in MUTATIONS}
        unknown = [i for i in args.mutation if i not in known]
        if unknown:
            raise SystemExit(f"mutate: unknown mutation(s): {' '.join(unknown)}")
        mutations = [m for m in MUTATIONS if m.id in args.mutation]
    if args.list:
        for m in mutations:
            print(f"{m.id:26s} {m.subsystem:8s} {m.path:32s} {m.why}")
        return 0

    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, check=True,
                           stdout=subprocess.PIPE, text=True).stdout.strip()
    if dirty and not args.allow_dirty:
        raise SystemExit("mutate: the tree has uncommitted changes, and mutate.py tests the committed tree "
                         "(HEAD); commit them, or pass --allow-dirty to test HEAD anyway")

    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="sdcoreml-mutate-")) / "tree"
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"mutate: {root} exists and is not empty")
    if root.exists():
        root.rmdir()
    results = []
    t_start = time.time()
    try:
        copy_tree(root)
        validate(mutations, root)
        tree = Tree(root, args.python, args.jobs)
        print(f"mutate: scratch copy of HEAD in {root}; building", flush=True)
        tree.configure()
        rc, out, dt = tree.make()
        if rc != 0:
            raise SystemExit(f"mutate: the unmutated tree does not build:\n{out[-3000:]}")
        if not args.no_baseline:
            keys = list(dict.fromkeys(k for m in mutations for k in m.pytest))
            print(f"mutate: baseline (unmutated): ctest + pytest {', '.join(keys)}", flush=True)
            by, _ = tree.ctest()
            for key in keys:
                if by:
                    break
                by, dt = tree.pytest(key, args.timeout)
                print(f"  {key}: {'FAILED ' + by if by else 'ok'} ({dt:.0f} s)", flush=True)
            if by:
                raise SystemExit(f"mutate: the unmutated tree fails {by}; fix that first")
        for i, m in enumerate(mutations, 1):
            result, by, dt = run_one(tree, m, args.timeout)
            results.append((m, result, by, dt))
            print(f"[{i}/{len(mutations)}] {m.id}: {result} {by} ({dt:.0f} s)", flush=True)
    except KeyboardInterrupt:
        print("\nmutate: interrupted; the scratch copy's edited file was restored, your tree was never "
              "touched", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(root.parent if not args.workdir else root, ignore_errors=True)
        elif results:
            print(f"mutate: kept {root}")

    if not results:
        return 1
    print()
    print("| mutation | subsystem | result | caught by | time |")
    print("| --- | --- | --- | --- | --- |")
    for m, result, by, dt in results:
        print(f"| {m.id} ({m.why}) | {m.subsystem} | {result} | {by} | {dt:.0f} s |")
    scored = [r for r in results if r[1] != "invalid"]
    caught = sum(r[1] == "caught" for r in scored)
    print()
    print(f"score: {caught}/{len(scored)} caught ({100.0 * caught / max(len(scored), 1):.0f} %), "
          f"{len(results) - len(scored)} invalid, {len(results)}/{len(mutations)} run, "
          f"{(time.time() - t_start) / 60:.1f} min")
    return 0 if caught == len(scored) else 1


if __name__ == "__main__":
    sys.exit(main())
