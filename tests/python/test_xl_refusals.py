"""Every --xl-version refusal, one line each, with nothing written: the flag missing for an
SDXL pipeline or given for an SD 1.x/2.x one, per component (test_unet.py has the UNet's own
two), and the SDXL cases of the ControlNet options. A converter that drops one of these checks
writes packages the SDXL (or the SD) pipelines cannot use, so each has its test."""

import pytest

SD_ENCODER = " so the text encoders output hidden_embeds as the SDXL pipelines expect"
VAE_WHY = " (its VAE is converted in float32, as the anchor does, because it overflows in float16)"

# (kind, flags, exit code, the one error line with {kind} for the model)
CASES = [
    ("sdxl", ["--convert-text-encoder"], 2, "{kind} is an SDXL pipeline; add --xl-version" + SD_ENCODER),
    ("sdxl-refiner", ["--convert-text-encoder"], 2, "{kind} is an SDXL pipeline; add --xl-version" + SD_ENCODER),
    ("sd2", ["--convert-text-encoder", "--xl-version"], 2,
     "--xl-version given, but {kind} is not an SDXL pipeline (no text_encoder_2)"),
    ("sdxl", ["--convert-vae-decoder"], 2, "{kind} is an SDXL pipeline; add --xl-version" + VAE_WHY),
    ("sdxl-refiner", ["--convert-vae-encoder"], 2, "{kind} is an SDXL pipeline; add --xl-version" + VAE_WHY),
    ("sd2", ["--convert-vae-decoder", "--xl-version"], 2, "--xl-version given, but {kind} is not an SDXL pipeline"),
    ("sd1", ["--convert-vae-encoder", "--xl-version"], 2, "--xl-version given, but {kind} is not an SDXL pipeline"),
    ("sdxl", ["--convert-unet", "--xl-version", "--unet-support-controlnet"], 1,
     "--unet-support-controlnet is for SD 1.x and 2.x (as with the anchor)"),
    ("sd2", ["--convert-controlnet", "sd2", "--xl-version"], 1,
     "ControlNet conversion is for SD 1.x and 2.x pipelines (as with the anchor)"),
]


@pytest.mark.parametrize("kind,flags,code,message", CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in CASES])
def test_refused(sdcoreml, pipelines, tmp_path, kind, flags, code, message):
    src = pipelines[kind]
    out = tmp_path / "out"
    r = sdcoreml("--model-version", src.name, "-o", out, *flags, cwd=src.parent)
    assert r.returncode == code, r.stderr
    assert r.stderr.strip().splitlines() == ["sdcoreml: error: " + message.format(kind=src.name)], r.stderr
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("base,refiner,flags,message", [
    ("sd2", "sdxl-refiner", [], "{refiner} is an SDXL model (its UNet takes time_ids and text_embeds); add --xl-version"),
    ("sdxl", "sd2", ["--xl-version"], "--xl-version given, but {refiner} is not an SDXL model"),
])
def test_refiner_refused(sdcoreml, pipelines, tmp_path, base, refiner, flags, message):
    """--refiner-version is checked like --model-version, before anything is converted: no base
    UNet package is written either."""
    b, rf = pipelines[base], pipelines[refiner]
    r = sdcoreml("--model-version", b.name, "--refiner-version", rf.name, "-o", tmp_path, "--convert-unet", *flags,
                 cwd=b.parent)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "sdcoreml: error: " + message.format(refiner=rf.name), r.stderr
    assert list(tmp_path.iterdir()) == []
