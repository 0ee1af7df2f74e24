"""--chunk-unet (reference/anchor-ml-stable-diffusion.md §9, §11-§12.1): next to the UNet (and
refiner, control-unet) package, <stem>_chunk1 and <stem>_chunk2 cut as coremltools' bisect_model
cuts it. Checked here: both chunks pass the coremltools checks; chunk 1 takes the UNet's inputs
and its outputs are chunk 2's inputs minus the original ones; chunk 2's first (only) output is
noise_pred (B, 4, h, w) float32; each chunk holds about half of the weights; running chunk 1
then chunk 2 on chunk 1's outputs merged with the original inputs (as the Swift pipeline does)
gives the UNet package's noise_pred bit for bit; names, skipping of existing packages,
determinism, and the chunk check of --check-output-correctness."""

import re
import struct
from pathlib import Path

import numpy as np
import pytest

import coreml_checks
from coreml_checks import damage_weights
from conftest import check_ok, package_name
from test_unet import expected_io, psnr, random_inputs, run_package

# kind -> (SDXL?, attention, precision): one attention implementation each
CASES = {
    "sd1": (False, "SPLIT_EINSUM", "FLOAT16"),
    "sd2": (False, "ORIGINAL", "FLOAT16"),
    "sdxl": (True, "SPLIT_EINSUM_V2", "FLOAT16"),
    "sd1-fp32": (False, "SPLIT_EINSUM", "FLOAT32"),
}
PSNR_LINE = re.compile(r"^sdcoreml: check (\S+): output (\S+): PSNR ([0-9.]+) dB \(minimum 35\)$", re.M)


def pipeline_kind(case):
    return case.replace("-fp32", "")


def convert(sdcoreml, pipeline, out, *flags):
    pipeline = Path(pipeline)
    return sdcoreml("--convert-unet", "--chunk-unet", "--model-version", pipeline.name, "-o", out, *flags,
                    cwd=pipeline.parent)


def case_flags(case):
    xl, attention, precision = CASES[case]
    flags = ["--attention-implementation", attention, "--compute-precision", precision]
    return flags + (["--xl-version"] if xl else [])


@pytest.fixture(scope="module")
def chunked(sdcoreml, pipelines, tmp_path_factory):
    """Converts each case once per module; returns (output dir, stderr)."""
    cache = {}

    def get(case):
        if case not in cache:
            out = tmp_path_factory.mktemp(f"chunk-{case}")
            r = check_ok(convert(sdcoreml, pipelines[pipeline_kind(case)], out, *case_flags(case)))
            cache[case] = (out, r.stderr)
        return cache[case]

    return get


def paths(out, model_version, submodule="unet"):
    return [Path(out) / package_name(model_version, s) for s in (submodule, f"{submodule}_chunk1", f"{submodule}_chunk2")]


def weight_bytes(pkg):
    """Bytes of blob data in weight.bin (headers and alignment padding left out)."""
    b = (Path(pkg) / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").read_bytes()
    count, total, off = struct.unpack_from("<I", b, 0)[0], 0, 64
    for _ in range(count):
        sentinel, _dtype, size, data = struct.unpack_from("<IIQQ", b, off)
        assert sentinel == 0xDEADBEEF
        total += size
        off = (data + size + 63) // 64 * 64
    return total


def check_chunk_contract(full, c1, c2, inputs, outputs):
    """The coremltools checks on the three packages and the chunk contract between them."""
    info = coreml_checks.load_and_check(str(full), inputs=inputs, outputs=outputs, spec_version=7)
    i1 = coreml_checks.load_and_check(str(c1), inputs=inputs, spec_version=7)
    boundary = [(f.name, f.shape, f.dtype) for f in i1.outputs]
    assert boundary and all(dt == "FLOAT32" for _, _, dt in boundary), boundary
    original = {name for name, _, _ in inputs}
    assert not original & {name for name, _, _ in boundary}
    i2 = coreml_checks.load_and_check(str(c2), outputs=outputs, spec_version=7)
    got = [(f.name, f.shape, f.dtype) for f in i2.inputs]
    # chunk 2: the original inputs it still uses (as declared, in their order), then chunk 1's outputs
    n_orig = sum(1 for name, _, _ in got if name in original)
    kept = {name for name, _, _ in got[:n_orig]}
    assert got[:n_orig] == [x for x in inputs if x[0] in kept]
    assert got[n_orig:] == boundary
    assert [f.name for f in i2.outputs] == ["noise_pred"]
    for i in (i1, i2):
        assert i.metadata == info.metadata
    return info, i1, i2


@pytest.mark.parametrize("case", list(CASES))
def test_contract_and_split(chunked, pipelines, case):
    out, stderr = chunked(case)
    kind = pipeline_kind(case)
    xl, _, precision = CASES[case]
    pipeline = pipelines[kind]
    full, c1, c2 = paths(out, pipeline.name)
    assert sorted(p.name for p in Path(out).iterdir()) == sorted(p.name for p in (full, c1, c2))
    inputs, outputs = expected_io(pipeline, xl=xl)
    info, i1, i2 = check_chunk_contract(full, c1, c2, inputs, outputs)
    # chunk 2 never reads sample; in float16 it reads encoder_hidden_states itself (cross-attention
    # in the up path), in float32 the float32 cast of it, made in chunk 1, crosses the cut instead
    names2 = [f.name for f in i2.inputs]
    assert "sample" not in names2
    assert ("encoder_hidden_states" in names2) == (precision == "FLOAT16")
    hist1, hist2 = i1.op_histogram, i2.op_histogram
    for op in ("conv", "softmax"):
        assert hist1[op] > 0 and hist2[op] > 0
        assert hist1[op] + hist2[op] == info.op_histogram[op], op
    if precision == "FLOAT16":
        assert hist1["cast"] >= len(i1.outputs)  # each boundary var cast to fp32
        assert i1.const_dtypes["fp32"] == 0 and i2.const_dtypes["fp32"] == 0
    w, w1, w2 = weight_bytes(full), weight_bytes(c1), weight_bytes(c2)
    print(f"chunk split {case}: {w} bytes -> {w1} + {w2} ({100 * w1 / w:.0f}% / {100 * w2 / w:.0f}%), "
          f"{len(i1.outputs)} boundary tensors")
    assert w1 + w2 >= w  # every weight is in one chunk at least
    assert w1 + w2 <= 1.02 * w  # and a shared one is rare and small
    assert 0.3 * w <= w1 <= 0.7 * w, (w1, w2, w)  # tiny fixtures: a few weights dominate
    assert re.search(r"chunking unet at op '\w+' \(\d+ of \d+\): \d+ tensors cross the cut", stderr), stderr


def run_in(sdcoreml, pkg, feeds, d):
    d.mkdir(parents=True, exist_ok=True)
    return run_package(sdcoreml, pkg, feeds, d)


def merged_run(sdcoreml, c1, c2, feeds, tmp_path):
    """Swift's way: chunk 1 on the inputs, chunk 2 on chunk 1's outputs merged with the inputs
    (chunk 1's win), the first output feature of chunk 2."""
    o1 = run_in(sdcoreml, c1, feeds, tmp_path / "c1")
    info2 = coreml_checks.load_and_check(str(c2))
    feeds2 = {}
    for f in info2.inputs:
        feeds2[f.name] = o1[f.name] if f.name in o1 else feeds[f.name]
    o2 = run_in(sdcoreml, c2, feeds2, tmp_path / "c2")
    return o1, o2[info2.outputs[0].name]


@pytest.mark.parametrize("case", list(CASES))
def test_chunks_compute_the_unet(sdcoreml, chunked, pipelines, tmp_path, case):
    out, _ = chunked(case)
    kind = pipeline_kind(case)
    xl, _, _ = CASES[case]
    full, c1, c2 = paths(out, pipelines[kind].name)
    feeds = random_inputs(pipelines[kind], xl, seed=3)
    ref = run_in(sdcoreml, full, feeds, tmp_path / "full")["noise_pred"]
    o1, got = merged_run(sdcoreml, c1, c2, feeds, tmp_path)
    assert all(v.dtype == np.float32 for v in o1.values())
    assert got.dtype == np.float32 and got.shape == ref.shape
    b = ref.shape[0]
    assert got.shape == (b, 4) + ref.shape[2:]
    value = psnr(ref, got)
    print(f"PSNR chunks vs unet {case}: {value:.1f} dB, bit-identical: {np.array_equal(ref, got)}")
    # the same fp16 ops run, and fp16 -> fp32 -> fp16 at the boundary is exact
    assert np.array_equal(ref, got)


def test_refiner_chunks(sdcoreml, pipelines, tmp_path):
    base, refiner = pipelines["sdxl"], pipelines["sdxl-refiner"]
    r = check_ok(sdcoreml("--convert-unet", "--chunk-unet", "--xl-version", "--model-version", base.name,
                          "--refiner-version", refiner.name, "-o", tmp_path, cwd=base.parent))
    names = sorted(p.name for p in tmp_path.iterdir())
    want = [package_name(base.name, s) for s in
            ("refiner", "refiner_chunk1", "refiner_chunk2", "unet", "unet_chunk1", "unet_chunk2")]
    assert names == sorted(want)
    assert "chunking refiner at op" in r.stderr
    full, c1, c2 = paths(tmp_path, base.name, "refiner")
    inputs, outputs = expected_io(refiner, xl=True)
    info, i1, i2 = check_chunk_contract(full, c1, c2, inputs, outputs)
    assert i2.metadata["version"] == refiner.name
    feeds = random_inputs(refiner, True, seed=4)
    ref = run_in(sdcoreml, full, feeds, tmp_path / "run-full")["noise_pred"]
    _, got = merged_run(sdcoreml, c1, c2, feeds, tmp_path)
    assert np.array_equal(ref, got)


def test_control_unet_chunks(sdcoreml, pipelines, tmp_path):
    """The anchor chunks control-unet too; its residual inputs stay chunk 1's (they are added
    before the mid block)."""
    sd1 = pipelines["sd1"]
    check_ok(convert(sdcoreml, sd1, tmp_path, "--unet-support-controlnet"))
    full, c1, c2 = paths(tmp_path, sd1.name, "control-unet")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (full, c1, c2))
    info = coreml_checks.load_and_check(str(full))
    inputs = [(f.name, f.shape, f.dtype) for f in info.inputs]
    assert any(n.startswith("additional_residual_") for n, _, _ in inputs)
    check_chunk_contract(full, c1, c2, inputs, [(f.name, f.shape, f.dtype) for f in info.outputs])


def test_deterministic(sdcoreml, chunked, pipelines, tmp_path):
    out, _ = chunked("sd1")
    check_ok(convert(sdcoreml, pipelines["sd1"], tmp_path, *case_flags("sd1")))
    for a, b in zip(paths(out, "tiny-sd"), paths(tmp_path, "tiny-sd")):
        assert coreml_checks.tree_bytes(a) == coreml_checks.tree_bytes(b), a.name


def test_existing_packages(sdcoreml, chunked, pipelines, tmp_path):
    """An existing package is kept; a missing chunk is written even when the UNet exists."""
    ref_out, _ = chunked("sd1")
    sd1 = pipelines["sd1"]
    full, c1, c2 = paths(tmp_path, "tiny-sd")
    # the UNet alone first, then --chunk-unet adds only the chunks
    check_ok(sdcoreml("--convert-unet", "--model-version", sd1.name, "-o", tmp_path, *case_flags("sd1"),
                      cwd=sd1.parent))
    unet_bytes = coreml_checks.tree_bytes(full)
    r = check_ok(convert(sdcoreml, sd1, tmp_path, *case_flags("sd1")))
    assert "exists; skipping unet " in r.stderr
    assert coreml_checks.tree_bytes(full) == unet_bytes
    for a, b in zip(paths(ref_out, "tiny-sd"), (full, c1, c2)):
        assert coreml_checks.tree_bytes(a) == coreml_checks.tree_bytes(b), b.name
    # everything there: nothing is written, nothing is built
    r = check_ok(convert(sdcoreml, sd1, tmp_path, *case_flags("sd1")))
    assert "chunking" not in r.stderr and "wrote" not in r.stderr
    # one chunk missing: only that one is written
    marker = c1 / "Data" / "marker"
    marker.write_text("kept")
    coreml_checks.shutil.rmtree(c2)
    r = check_ok(convert(sdcoreml, sd1, tmp_path, *case_flags("sd1")))
    assert "skipping unet_chunk1" in r.stderr and f"wrote {c2}" in r.stderr, r.stderr
    assert marker.read_text() == "kept"
    assert coreml_checks.tree_bytes(c2) == coreml_checks.tree_bytes(paths(ref_out, "tiny-sd")[2])


def test_check_output_correctness(sdcoreml, pipelines, tmp_path):
    sdxl = pipelines["sdxl"]
    r = check_ok(convert(sdcoreml, sdxl, tmp_path, "--xl-version", "--check-output-correctness"))
    found = {(m, o): float(p) for m, o, p in PSNR_LINE.findall(r.stderr)}
    unet = package_name(sdxl.name, "unet")
    chunks = package_name(sdxl.name, "unet_chunk1").replace(".mlpackage", "+chunk2")
    assert set(found) == {(unet, "noise_pred"), (chunks, "noise_pred")}, r.stderr
    assert found[(chunks, "noise_pred")] > 150  # bit-identical: rmse 0
    assert "bit-identical" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths(tmp_path, sdxl.name))


def test_check_fails_on_a_damaged_chunk(sdcoreml, pipelines, tmp_path):
    """Unlike the anchor, which only warns, a chunk pair below 35 dB fails the run."""
    sd1 = pipelines["sd1"]
    check_ok(convert(sdcoreml, sd1, tmp_path))
    full, c1, c2 = paths(tmp_path, "tiny-sd")
    damage_weights(c2)
    r = convert(sdcoreml, sd1, tmp_path, "--check-output-correctness")
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    label = c1.name.replace(".mlpackage", "+chunk2")
    # damaged weights may overflow float16 in GroupNorm's decomposed steps (as on a device): the
    # check then names the output by its NaN/inf count instead of a PSNR
    assert re.fullmatch(r"sdcoreml: error: --check-output-correctness: " + re.escape(label) +
                        r" output 'noise_pred': (PSNR -?[0-9.]+ dB vs " + re.escape(full.name) +
                        r" is below 35 dB|[0-9]+ of [0-9]+ values are NaN/inf)", last), last
    # both chunks are moved aside (a pair is only good together); the UNet itself passed and stays
    moved = [c.with_name(c.name.replace(".mlpackage", ".failed-check.mlpackage")) for c in (c1, c2)]
    assert full.is_dir() and not c1.exists() and not c2.exists()
    assert all((m / "Manifest.json").is_file() for m in moved)


def test_quantized_chunks(sdcoreml, pipelines, tmp_path):
    """Unlike the anchor (which palettizes after chunking and leaves the chunks float16), the
    chunks of a --quantize-nbits run are palettized: the pass runs on the graph before the cut."""
    sd1 = pipelines["sd1"]
    r = convert(sdcoreml, sd1, tmp_path, "--quantize-nbits", "6")
    check_ok(r)
    full, c1, c2 = paths(tmp_path, "tiny-sd")
    inputs, outputs = expected_io(sd1)
    info, i1, i2 = check_chunk_contract(full, c1, c2, inputs, outputs)
    lut = "constexpr_lut_to_dense"
    assert info.op_histogram[lut] > 0
    assert i1.op_histogram[lut] > 0 and i2.op_histogram[lut] > 0
    assert i1.op_histogram[lut] + i2.op_histogram[lut] >= info.op_histogram[lut]
    w, w1, w2 = weight_bytes(full), weight_bytes(c1), weight_bytes(c2)
    print(f"quantized chunk split: {w} -> {w1} + {w2}")
    assert w1 + w2 <= 1.05 * w
    feeds = random_inputs(sd1, False, seed=5)
    ref = run_in(sdcoreml, full, feeds, tmp_path / "run-full")["noise_pred"]
    _, got = merged_run(sdcoreml, c1, c2, feeds, tmp_path)
    assert np.array_equal(ref, got)
