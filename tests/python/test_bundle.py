"""--bundle-resources-for-swift-cli (anchor §11): Resources/ with the .mlmodelc names Apple's
Swift pipeline loads. The compiler is Apple's `xcrun coremlcompiler` (macOS only); here a
stand-in xcrun on PATH records its calls and makes the directory the real one makes
(<OUT>/<package stem>.mlmodelc), so the test checks sdcoreml's part: what it compiles, the
names it gives, ControlNets under controlnet/, the tokenizer files, and the refusal without
xcrun."""

import os
import stat
from pathlib import Path

from conftest import check_ok

FAKE_XCRUN = """#!/bin/sh
# stand-in for: xcrun coremlcompiler compile PKG OUTDIR
[ "$1" = coremlcompiler ] && [ "$2" = compile ] || exit 64
echo "$3" >> "$XCRUN_LOG"
stem=$(basename "$3" .mlpackage)
mkdir -p "$4/$stem.mlmodelc" && echo "{}" > "$4/$stem.mlmodelc/metadata.json"
"""


def fake_xcrun(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    x = bin_dir / "xcrun"
    x.write_text(FAKE_XCRUN)
    x.chmod(x.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "xcrun.log"
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "XCRUN_LOG": str(log)}, log


def test_refused_without_xcrun(sdcoreml, pipelines, tmp_path):
    r = sdcoreml("--convert-unet", "--bundle-resources-for-swift-cli", "--model-version", "tiny-sd", "-o", tmp_path / "o",
                 cwd=pipelines["sd1"].parent, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 1
    assert "xcrun coremlcompiler" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_resources_layout(sdcoreml, pipelines, tmp_path):
    env, log = fake_xcrun(tmp_path)
    out = tmp_path / "o"
    check_ok(sdcoreml("--convert-text-encoder", "--convert-unet", "--chunk-unet", "--convert-vae-decoder",
                      "--convert-vae-encoder", "--convert-safety-checker", "--bundle-resources-for-swift-cli",
                      "--model-version", "tiny-sd", "-o", out, cwd=pipelines["sd1"].parent, env=env))
    res = out / "Resources"
    assert sorted(p.name for p in res.iterdir()) == sorted([
        "TextEncoder.mlmodelc", "Unet.mlmodelc", "UnetChunk1.mlmodelc", "UnetChunk2.mlmodelc", "VAEDecoder.mlmodelc",
        "VAEEncoder.mlmodelc", "SafetyChecker.mlmodelc", "vocab.json", "merges.txt"])
    tok = Path(pipelines["sd1"]) / "tokenizer"
    assert (res / "vocab.json").read_bytes() == (tok / "vocab.json").read_bytes()
    assert (res / "merges.txt").read_bytes() == (tok / "merges.txt").read_bytes()
    compiled = log.read_text().split()
    assert len(compiled) == 7 and all(Path(p).parent == out for p in compiled)
    # a second run keeps what exists (as the anchor) and compiles nothing
    log.unlink()
    check_ok(sdcoreml("--bundle-resources-for-swift-cli", "--model-version", "tiny-sd", "-o", out,
                      cwd=pipelines["sd1"].parent, env=env))
    assert not log.exists()


def test_sdxl_names(sdcoreml, pipelines, tmp_path):
    env, _ = fake_xcrun(tmp_path)
    out = tmp_path / "o"
    base, refiner = pipelines["sdxl"], pipelines["sdxl-refiner"]
    check_ok(sdcoreml("--xl-version", "--convert-text-encoder", "--convert-unet", "--refiner-version", refiner.name,
                      "--bundle-resources-for-swift-cli", "--model-version", base.name, "-o", out, cwd=base.parent,
                      env=env))
    names = {p.name for p in (out / "Resources").iterdir()}
    assert {"TextEncoder.mlmodelc", "TextEncoder2.mlmodelc", "Unet.mlmodelc", "UnetRefiner.mlmodelc"} <= names


def test_remote_vocabulary_url_is_refused_offline(sdcoreml, pipelines, tmp_path):
    """HF_HUB_OFFLINE=1 (the runner's default) forbids the download; URLs downloaded online are
    tested against a fake Hub in test_hub_download.py."""
    env, _ = fake_xcrun(tmp_path)
    r = sdcoreml("--convert-unet", "--bundle-resources-for-swift-cli", "--text-encoder-vocabulary-url",
                 "https://huggingface.co/openai/clip-vit-base-patch32/resolve/main/vocab.json", "--model-version",
                 "tiny-sd", "-o", tmp_path / "o", cwd=pipelines["sd1"].parent, env=env)
    assert r.returncode == 1
    assert "HF_HUB_OFFLINE is set, so vocab.json is not downloaded" in r.stderr
    # refused before anything is converted
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_unreadable_tokenizer_file_is_refused_before_converting(sdcoreml, pipelines, tmp_path):
    env, log = fake_xcrun(tmp_path)
    missing = tmp_path / "no-such-merges.txt"
    r = sdcoreml("--convert-unet", "--bundle-resources-for-swift-cli", "--text-encoder-merges-url", missing,
                 "--model-version", "tiny-sd", "-o", tmp_path / "o", cwd=pipelines["sd1"].parent, env=env)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == f"sdcoreml: error: {missing}: cannot read: No such file or directory"
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []
    assert not log.exists()


FAILING_XCRUN = FAKE_XCRUN.replace('echo "$3" >> "$XCRUN_LOG"', 'echo "$3" >> "$XCRUN_LOG"\ncase "$3" in *_unet.mlpackage) exit 3;; esac')


def test_failing_bundle_leaves_resources_as_they_were(sdcoreml, pipelines, tmp_path):
    env, log = fake_xcrun(tmp_path)
    out = tmp_path / "o"
    sd1 = pipelines["sd1"].parent
    check_ok(sdcoreml("--convert-vae-decoder", "--bundle-resources-for-swift-cli", "--model-version", "tiny-sd",
                      "-o", out, cwd=sd1, env=env))
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert "Resources/VAEDecoder.mlmodelc" in before
    (tmp_path / "bin" / "xcrun").write_text(FAILING_XCRUN)
    r = sdcoreml("--convert-unet", "--convert-vae-encoder", "--bundle-resources-for-swift-cli", "--model-version",
                 "tiny-sd", "-o", out, cwd=sd1, env=env)
    assert r.returncode == 1 and "xcrun coremlcompiler compile failed" in r.stderr, r.stderr
    # VAEEncoder was compiled before the failure, but Resources/ is as it was and no staging folder remains
    assert "vae_encoder" in log.read_text()
    resources = sorted(str(p.relative_to(out)) for p in (out / "Resources").rglob("*"))
    assert resources == [p for p in before if p.startswith("Resources/")]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_local_tokenizer_files(sdcoreml, pipelines, tmp_path):
    env, _ = fake_xcrun(tmp_path)
    vocab, merges = tmp_path / "my-vocab.json", tmp_path / "my-merges.txt"
    vocab.write_text('{"a": 0}')
    merges.write_text("#version: 0.2\n")
    out = tmp_path / "o"
    check_ok(sdcoreml("--convert-unet", "--bundle-resources-for-swift-cli", "--text-encoder-vocabulary-url", vocab,
                      "--text-encoder-merges-url", f"file://{merges}", "--model-version", "tiny-sd", "-o", out,
                      cwd=pipelines["sd1"].parent, env=env))
    assert (out / "Resources" / "vocab.json").read_text() == '{"a": 0}'
    assert (out / "Resources" / "merges.txt").read_text() == "#version: 0.2\n"
