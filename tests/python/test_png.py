"""PNG through libpng: Pillow decodes what sdcoreml writes, sdcoreml decodes what Pillow writes
(every colour type and depth an input image may have), and hostile files fail cleanly."""

import os
import zlib
import struct

import numpy as np
import pytest
from PIL import Image

RNG = np.random.RandomState(5)


def write_rgb_npy(path, a):
    np.save(path, a.astype(np.int32))


@pytest.mark.parametrize("w,h", [(1, 1), (64, 48), (513, 7)])
def test_pillow_reads_what_we_write(testkit, tmp_path, w, h):
    rgb = RNG.randint(0, 256, size=(h, w, 3))
    write_rgb_npy(tmp_path / "rgb.npy", rgb)
    out = tmp_path / "out.png"
    testkit("png-write", out, w, h, tmp_path / "rgb.npy")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (w, h)
        assert np.array_equal(np.asarray(im), rgb)
    # the temporary it was built under is gone
    assert sorted(os.listdir(tmp_path)) == ["out.png", "rgb.npy"]


def pillow_image(mode, w, h):
    """An image of `mode` with varied pixels, and the RGB8 we expect sdcoreml to read from it."""
    if mode in ("RGB", "RGBA"):
        a = RNG.randint(0, 256, size=(h, w, len(mode))).astype(np.uint8)
        return Image.fromarray(a, mode), a[..., :3]
    if mode in ("L", "LA"):
        a = RNG.randint(0, 256, size=(h, w, len(mode))).astype(np.uint8)
        im = Image.fromarray(a if mode == "LA" else a[..., 0], mode)
        return im, np.repeat(a[..., :1], 3, axis=2)
    if mode == "1":
        bits = RNG.randint(0, 2, size=(h, w)).astype(bool)
        im = Image.fromarray(bits)
        return im, np.repeat((bits * 255).astype(np.uint8)[..., None], 3, axis=2)
    if mode == "P":
        pal = RNG.randint(0, 256, size=(16, 3)).astype(np.uint8)
        idx = RNG.randint(0, 16, size=(h, w)).astype(np.uint8)
        im = Image.fromarray(idx, "P")
        im.putpalette(pal.reshape(-1).tolist())
        return im, pal[idx]
    if mode == "I;16":
        a = RNG.randint(0, 65536, size=(h, w)).astype(np.uint16)
        im = Image.fromarray(a)  # mode I;16
        return im, np.repeat((a >> 8).astype(np.uint8)[..., None], 3, axis=2)
    raise AssertionError(mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "1", "P", "I;16"])
@pytest.mark.parametrize("interlace", [False, True])
def test_we_read_what_pillow_writes(testkit, tmp_path, mode, interlace):
    w, h = 37, 23
    im, want = pillow_image(mode, w, h)
    src = tmp_path / "in.png"
    im.save(src, optimize=False)
    if interlace:  # Pillow cannot write Adam7; re-encode by hand below
        src.write_bytes(adam7_png(src))
    testkit("png-read", src, tmp_path / "rgb.npy")
    got = np.load(tmp_path / "rgb.npy")
    assert got.shape == (h, w, 3)
    assert np.array_equal(got, want.astype(np.int32))
    if mode in ("RGB", "RGBA", "L", "LA", "P"):  # Pillow's own RGB view agrees
        with Image.open(src) as back:
            assert np.array_equal(got, np.asarray(back.convert("RGB")).astype(np.int32))


def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def chunks(data):
    pos = 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        yield data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        pos += 12 + n


def unfilter(raw, h, stride, bpp):
    """The rows of a non-interlaced IDAT stream with PNG's five filters undone."""
    rows, prev = [], bytearray(stride)
    for y in range(h):
        kind, row = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = row[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            p = a + b - c
            pred = [0, a, b, (a + b) // 2,
                    a if abs(p - a) <= abs(p - b) and abs(p - a) <= abs(p - c) else b if abs(p - b) <= abs(p - c) else c][kind]
            row[i] = (row[i] + pred) & 0xFF
        rows.append(bytes(row))
        prev = row
    return rows


def adam7_png(path):
    """The same image re-encoded interlaced: raw rows of each Adam7 pass, filter type 0."""
    with Image.open(path) as im:
        im.load()
        info = dict(chunks(path.read_bytes()))
        ihdr = info[b"IHDR"]
        w, h, depth, ctype = struct.unpack(">IIBB", ihdr[:10])
        raw = zlib.decompress(b"".join(d for k, d in chunks(path.read_bytes()) if k == b"IDAT"))
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    bpp_bits = depth * channels
    stride = (w * bpp_bits + 7) // 8
    rows = unfilter(raw, h, stride, max(1, bpp_bits // 8))

    def pixel_bits(row, x):
        start = x * bpp_bits
        return [(row[(start + i) // 8] >> (7 - (start + i) % 8)) & 1 for i in range(bpp_bits)]

    out = bytearray()
    for x0, y0, dx, dy in [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]:
        xs = range(x0, w, dx)
        if not len(xs):
            continue
        for y in range(y0, h, dy):
            bits = [b for x in xs for b in pixel_bits(rows[y], x)]
            bits += [0] * (-len(bits) % 8)
            out.append(0)
            out += bytes(int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8))
    ihdr = ihdr[:12] + b"\x01"
    body = b"".join(chunk(k, d) for k, d in chunks(path.read_bytes()) if k not in (b"IHDR", b"IDAT", b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + body + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b"")


def good_png(tmp_path):
    p = tmp_path / "good.png"
    Image.fromarray(RNG.randint(0, 256, size=(8, 8, 3)).astype(np.uint8)).save(p)
    return p.read_bytes()


def hostile_cases(good):
    ihdr_at = 8
    big = chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
    wide = chunk(b"IHDR", struct.pack(">IIBBBBB", 16385, 1, 8, 2, 0, 0, 0))
    return {
        "empty": b"",
        "signature only": good[:8],
        "not a png": b"GIF89a" + b"\0" * 40,
        "truncated": good[: len(good) // 2],
        "bad crc": good[:ihdr_at + 20] + bytes([good[ihdr_at + 20] ^ 1]) + good[ihdr_at + 21:],
        "huge dimensions": good[:8] + big + good[8 + 25:],
        "too wide": good[:8] + wide + good[8 + 25:],
        "zero width": good[:8] + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 8, 8, 2, 0, 0, 0)) + good[8 + 25:],
        "bad colour type": good[:8] + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 5, 0, 0, 0)) + good[8 + 25:],
        "idat too short": good[:8 + 25] + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""),
        "idat garbage": good[:8 + 25] + chunk(b"IDAT", b"\x78\x9c garbage") + chunk(b"IEND", b""),
    }


@pytest.mark.parametrize("case", sorted(hostile_cases(b"\0" * 64)))
def test_hostile_png_is_refused_cleanly(testkit, tmp_path, case):
    data = hostile_cases(good_png(tmp_path))[case]
    src = tmp_path / "bad.png"
    src.write_bytes(data)
    r = testkit("png-read", src, tmp_path / "out.npy", check=False)
    assert r.returncode == 1, (case, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(src) in lines[0], r.stderr
    assert not (tmp_path / "out.npy").exists()


def test_missing_file_and_bad_output_dir(testkit, tmp_path):
    r = testkit("png-read", tmp_path / "nope.png", tmp_path / "o.npy", check=False)
    assert r.returncode == 1 and "nope.png" in r.stderr
    write_rgb_npy(tmp_path / "rgb.npy", np.zeros((2, 2, 3)))
    r = testkit("png-write", tmp_path / "no" / "dir" / "x.png", 2, 2, tmp_path / "rgb.npy", check=False)
    assert r.returncode == 1 and "x.png" in r.stderr


def test_surplus_compressed_data_is_not_inflated(testkit, tmp_path):
    # 8 MiB of zeros behind an 8x8 header: libpng stops at the rows the header declares
    bomb = zlib.compress(b"\0" * (8 * 1024 * 1024))
    src = tmp_path / "bomb.png"
    src.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
                    + chunk(b"IDAT", bomb) + chunk(b"IEND", b""))
    testkit("png-read", src, tmp_path / "out.npy")
    assert np.array_equal(np.load(tmp_path / "out.npy"), np.zeros((8, 8, 3), np.int32))
