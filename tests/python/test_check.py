"""--check-output-correctness on Linux (issue 3): each converted package and a float32 reference
of the same weights (no ANE rewrite) run in sdcoreml's interpreter on seeded inputs; PSNR is
printed per model and output and below 35 dB the run fails naming the model and output."""

import re
from pathlib import Path

import numpy as np

from coreml_checks import damage_weights
from conftest import check_ok, package_name

PSNR_LINE = re.compile(r"^sdcoreml: check (\S+): output (\S+): PSNR ([0-9.]+) dB \(minimum 35\)$", re.M)


def convert(sdcoreml, pipeline, out, *flags):
    pipeline = Path(pipeline)
    return sdcoreml("--model-version", pipeline.name, "-o", out, "--check-output-correctness", *flags,
                    cwd=pipeline.parent)


def test_good_conversions_pass(sdcoreml, pipelines, tmp_path):
    r = check_ok(convert(sdcoreml, pipelines["sd1"], tmp_path, "--convert-text-encoder", "--convert-unet"))
    found = {(m, o): float(p) for m, o, p in PSNR_LINE.findall(r.stderr)}
    te, unet = package_name("tiny-sd", "text_encoder"), package_name("tiny-sd", "unet")
    assert set(found) == {(te, "last_hidden_state"), (te, "pooled_outputs"), (unet, "noise_pred")}, r.stderr
    assert all(p >= 35 for p in found.values())
    # nothing of the reference packages is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([te, unet])


def test_sdxl_passes(sdcoreml, pipelines, tmp_path):
    r = check_ok(convert(sdcoreml, pipelines["sdxl"], tmp_path, "--xl-version", "--convert-text-encoder",
                         "--convert-unet", "--attention-implementation", "SPLIT_EINSUM_V2"))
    outputs = sorted(o for _, o, _ in PSNR_LINE.findall(r.stderr))
    assert outputs == ["hidden_embeds", "hidden_embeds", "noise_pred", "pooled_outputs", "pooled_outputs"]


def test_damaged_weights_fail_naming_model_and_output(sdcoreml, pipelines, tmp_path):
    check_ok(convert(sdcoreml, pipelines["sd1"], tmp_path, "--convert-unet"))
    unet = tmp_path / package_name("tiny-sd", "unet")
    damage_weights(unet)
    r = convert(sdcoreml, pipelines["sd1"], tmp_path, "--convert-unet")
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    # damaged weights may overflow float16 in the decomposed GroupNorm (NaN, as a device would
    # give): then the check names the output by its NaN/inf count instead of a PSNR
    assert re.fullmatch(r"sdcoreml: error: --check-output-correctness: " + re.escape(unet.name) +
                        r" output 'noise_pred': (PSNR -?[0-9.]+ dB is below 35 dB|[0-9]+ of [0-9]+ values are NaN/inf)",
                        last), last
    # the failed package is moved aside, so that no later run keeps it as converted (it used to
    # stay under its final name: the next run printed "exists; skipping"); no reference remains
    failed = unet.with_name(unet.name.replace(".mlpackage", ".failed-check.mlpackage"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [failed.name]
    assert f"{unet} failed the check; moved to {failed}" in r.stderr
    assert (failed / "Manifest.json").is_file()
    # the next run converts it again, and passes; a second failure replaces the older failed copy
    r = check_ok(convert(sdcoreml, pipelines["sd1"], tmp_path, "--convert-unet"))
    assert "skipping" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([failed.name, unet.name])
    damage_weights(unet)
    assert convert(sdcoreml, pipelines["sd1"], tmp_path, "--convert-unet").returncode == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [failed.name]


def test_existing_package_is_checked_without_converting(sdcoreml, pipelines, tmp_path):
    check_ok(convert(sdcoreml, pipelines["sd1"], tmp_path, "--convert-vae-decoder"))
    r = check_ok(convert(sdcoreml, pipelines["sd1"], tmp_path, "--convert-vae-decoder"))
    lines = r.stderr.splitlines()
    assert any("exists; skipping vae_decoder" in line for line in lines), r.stderr
    assert not any("converting" in line for line in lines), r.stderr
    assert PSNR_LINE.search(r.stderr), r.stderr


def test_seeded_inputs_are_deterministic(sdcoreml, pipelines, tmp_path):
    a = check_ok(convert(sdcoreml, pipelines["sd1"], tmp_path / "a", "--convert-unet"))
    b = check_ok(convert(sdcoreml, pipelines["sd1"], tmp_path / "b", "--convert-unet"))
    assert PSNR_LINE.findall(a.stderr) == PSNR_LINE.findall(b.stderr)
