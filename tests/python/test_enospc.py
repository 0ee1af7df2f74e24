"""A full disk (issue 9, item 5): conversions into a small tmpfs run out of space while writing
a package. Each must end with exit 1 and one error line naming the path under -o, leave no
temporary behind (the file system's free space is what it was before the run) and leave the
packages that were there before byte for byte as they were. The check of
--check-output-correctness writes nothing beside the package (issue 14), so it passes on a disk
with no room left.

Mounting needs root and a kernel that lets this process mount (a container may not): else the
tests are skipped, saying why."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import check_ok, package_name

PAGE = 4096


def try_mount(point, size):
    """Mounts a tmpfs of `size` bytes at `point`; returns None, or why it could not."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root (os.geteuid() != 0)"
    if not shutil.which("mount"):
        return "no mount(8) on PATH"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return None if r.returncode == 0 else f"mount -t tmpfs failed here: {r.stdout.strip()}"


def resize(point, size):
    subprocess.run(["mount", "-o", f"remount,size={size}", str(point)], check=True)


@pytest.fixture
def small_fs(tmp_path):
    """A tmpfs at tmp_path/fs (4 MiB until a test resizes it), unmounted afterwards."""
    point = tmp_path / "fs"
    point.mkdir()
    why = try_mount(point, 4 << 20)
    if why:
        pytest.skip(why)
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False)


def used_bytes(path):
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def snapshot(folder):
    """Every file under folder (hidden ones too): relative path → (bytes, mtime_ns)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def tree_bytes(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def convert(sdcoreml, pipelines, out, *flags):
    return sdcoreml("--model-version", "tiny-sd", "-o", out, *flags, cwd=pipelines["sd1"].parent)


def assert_clean_enospc(r, out, used_before):
    assert r.returncode == 1, f"exit {r.returncode}\n{r.stderr}"
    errors = [line for line in r.stderr.splitlines() if line.startswith("sdcoreml: error:")]
    assert len(errors) == 1, r.stderr
    assert f"{out}/" in errors[0] and "No space left on device" in errors[0], errors[0]
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert hidden == [], f"temporaries left in -o: {hidden}"
    # nothing half-written and nothing unlinked but still allocated: the space is all back
    assert used_bytes(out) == used_before, (used_bytes(out), used_before)


def pages(n):
    return -(-n // PAGE) * PAGE


@pytest.fixture(scope="module")
def unet_files(sdcoreml, pipelines, tmp_path_factory):
    """The UNet package's files on an ordinary disk: relative path → bytes taken (whole pages)."""
    d = tmp_path_factory.mktemp("unet-on-disk")
    check_ok(convert(sdcoreml, pipelines, d, "--convert-unet"))
    pkg = d / package_name("tiny-sd", "unet")
    return {str(p.relative_to(pkg)): pages(p.stat().st_size) for p in pkg.rglob("*") if p.is_file()}


WEIGHTS = "Data/com.apple.CoreML/weights/weight.bin"
MODEL = "Data/com.apple.CoreML/model.mlmodel"


@pytest.mark.parametrize("fails_in", ["weight.bin", "model.mlmodel", "Manifest.json"])
def test_a_full_disk_fails_cleanly_and_keeps_existing_packages(sdcoreml, pipelines, small_fs, unet_files, fails_in):
    """The UNet (about 2 MB) runs out of space in the file named: the room left holds the files
    the writer writes before it (weight.bin, then model.mlmodel, then Manifest.json) and half
    of that one. The text encoder converted before stays as it was."""
    room = {"weight.bin": unet_files[WEIGHTS] // 2,
            "model.mlmodel": unet_files[WEIGHTS] + pages(unet_files[MODEL] // 2),
            "Manifest.json": unet_files[WEIGHTS] + unet_files[MODEL]}[fails_in]
    out = small_fs
    check_ok(convert(sdcoreml, pipelines, out, "--convert-text-encoder"))
    before = snapshot(out)
    used = used_bytes(out)
    resize(out, used + room)
    r = convert(sdcoreml, pipelines, out, "--convert-text-encoder", "--convert-unet")
    assert_clean_enospc(r, out, used)
    assert fails_in in r.stderr.splitlines()[-1], r.stderr
    assert snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == [package_name("tiny-sd", "text_encoder")]


def reference_sizes(sdcoreml, pipelines, tmp_path):
    """Bytes of the text encoder package, and of its float32 reference (a FLOAT32 ORIGINAL
    conversion has the same weights), on an ordinary disk; and the package's files."""
    pkg = package_name("tiny-sd", "text_encoder")
    sizes = []
    for name, flags in (("fp16", ()), ("fp32", ("--compute-precision", "FLOAT32",
                                                "--attention-implementation", "ORIGINAL"))):
        d = tmp_path / name
        check_ok(convert(sdcoreml, pipelines, d, "--convert-text-encoder", *flags))
        sizes.append(sum(-(-p.stat().st_size // PAGE) * PAGE for p in (d / pkg).rglob("*") if p.is_file()))
    return sizes[0], sizes[1], tree_bytes(tmp_path / "fp16" / pkg)


def test_the_check_needs_no_room_beyond_the_package(sdcoreml, pipelines, small_fs, tmp_path):
    """A fresh -o with room for the fp16 package and less than half its float32 reference: the
    check passes, because the reference is evaluated from the graph in memory and never written
    (issue 14; it used to be a hidden package in -o, and this run failed with ENOSPC)."""
    pkg_bytes, ref_bytes, expected = reference_sizes(sdcoreml, pipelines, tmp_path)
    assert ref_bytes > pkg_bytes
    out = small_fs
    used = used_bytes(out)
    resize(out, used + pkg_bytes + ref_bytes // 2)
    r = check_ok(convert(sdcoreml, pipelines, out, "--convert-text-encoder", "--check-output-correctness"))
    assert "PSNR" in r.stderr, r.stderr
    pkg = package_name("tiny-sd", "text_encoder")
    assert sorted(p.name for p in out.iterdir()) == [pkg]
    assert tree_bytes(out / pkg) == expected
    assert used_bytes(out) == used + pkg_bytes, (used_bytes(out), used, pkg_bytes)


def test_checking_an_existing_package_on_a_full_disk(sdcoreml, pipelines, small_fs, tmp_path):
    """An existing package is checked, not rewritten, on a disk with no room left at all."""
    check_ok(convert(sdcoreml, pipelines, small_fs, "--convert-text-encoder"))
    out = small_fs
    before = snapshot(out)
    resize(out, used_bytes(out))
    r = check_ok(convert(sdcoreml, pipelines, out, "--convert-text-encoder", "--check-output-correctness"))
    assert "PSNR" in r.stderr, r.stderr
    assert snapshot(out) == before
