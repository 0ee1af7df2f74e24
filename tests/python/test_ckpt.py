"""The PyTorch checkpoint reader (src/io/ckpt.c, pickle.c, zip.c) through the test-only tool
ckpt_dump (tests/tools/ckpt_dump.c: one line per tensor, name dtype shape sha256).

Round trips: files written by torch.save (zip and legacy formats, pickle protocols 2 to 5) hold
every tensor torch.load gives back (the oracle: torch.load, flattened by the rule of ckpt.h,
written again here), byte for byte. Hostile files (hand-assembled pickles, broken archives,
truncations): one error line naming the file, exit status 1, and nothing executed — the
payloads would create a canary file, and one of them is first shown to do so under Python's own
pickle, so the test can fail."""

import collections
import hashlib
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import sdcoreml_path

TORCH_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL"}


def dump_tool():
    return sdcoreml_path().parent / "ckpt_dump"


def dump(path):
    return subprocess.run([str(dump_tool()), str(path)], capture_output=True, text=True, timeout=60)


def listed(path):
    r = dump(path)
    assert r.returncode == 0, r.stderr
    rows = {}
    for line in r.stdout.splitlines():
        name, dtype, shape, digest = line.split("\t")
        assert name not in rows
        rows[name] = (dtype, shape, digest)
    return rows


# ---- the oracle: torch.load, flattened as ckpt.h says ------------------------------------------

def torch_load(path):
    # the test wrote the file: unpickling its training state (a class instance) is fine here
    return torch.load(path, weights_only=False)


def tensor_bytes(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def expected(obj):
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    out = {}

    def walk(d, prefix):
        for k, v in d.items():
            if not isinstance(k, str):
                continue
            if isinstance(v, torch.Tensor):
                out[prefix + k] = (TORCH_DTYPE[v.dtype], "[" + ", ".join(str(s) for s in v.shape) + "]",
                                   hashlib.sha256(tensor_bytes(v)).hexdigest())
            elif isinstance(v, dict):
                walk(v, prefix + k + ".")

    walk(obj, "")
    return out


class Callback:  # stands for a training callback of a Lightning checkpoint
    def __init__(self):
        self.best = 0.25
        self.monitor = "val/loss"


def state_dict(seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(6, 8, generator=g)
    linear = torch.nn.Linear(5, 3)
    tagged = torch.randn(3, generator=g)
    tagged.note = "a tensor subclass state"  # pickled through _rebuild_from_type_v2
    return collections.OrderedDict([
        ("model.diffusion_model.conv.weight", torch.randn(4, 3, 3, 3, generator=g)),
        ("model.diffusion_model.half", torch.randn(7, 5, generator=g).half()),
        ("model.diffusion_model.bf16", torch.randn(2, 9, generator=g).bfloat16()),
        ("model.f64", torch.randn(3, generator=g).double()),
        ("base", base),
        ("rows_1_3", base[1:3]),           # shared storage, offset
        ("row_5", base[5]),                # shared storage, offset, lower rank
        ("column_like", base[:, :1][2:3]),  # size-1 dims with odd strides are still contiguous
        ("scalar", torch.tensor(2.5)),
        ("empty", torch.zeros(0, 4)),
        ("position_ids", torch.arange(77).unsqueeze(0)),
        ("int32", torch.arange(5, dtype=torch.int32)),
        ("int8", torch.tensor([-3, 4], dtype=torch.int8)),
        ("uint8", torch.tensor([200, 3], dtype=torch.uint8)),
        ("mask", torch.tensor([True, False, True])),
        ("param", linear.weight),          # nn.Parameter: _rebuild_parameter
        ("tagged", tagged),
    ])


def lightning(seed):
    sd = state_dict(seed)
    return {
        "epoch": 3, "global_step": 5, "pytorch-lightning_version": "1.4.2",
        "state_dict": sd,
        "callbacks": {"ModelCheckpoint": Callback()},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 1e-4}]}],
        "lr_schedulers": [], "np_scalar": np.float64(0.5), "np_int": np.int64(7), "np_array": np.arange(4),
        "misc": {"size": torch.Size([2, 3]), "device": torch.device("cpu"), "set": {1, 2}, "bytes": b"\x00\x01",
                 "big": 2 ** 100, "none": None, "flag": True, "tuple": (1.5, "x")},
    }


FORMATS = [("zip", 2), ("zip", 4), ("zip", 5), ("legacy", 2), ("legacy", 4), ("legacy", 5)]


@pytest.mark.parametrize("fmt,protocol", FORMATS)
def test_round_trip_lightning_checkpoint(tmp_path, fmt, protocol):
    path = tmp_path / "model.ckpt"
    torch.save(lightning(protocol), path, pickle_protocol=protocol,
               _use_new_zipfile_serialization=fmt == "zip")
    want = expected(torch_load(path))
    assert "model.diffusion_model.conv.weight" in want and "global_step" not in want and len(want) == 17
    assert listed(path) == want


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_round_trip_nested_plain_dict(tmp_path, fmt):
    # no state_dict entry: every dict level becomes a dotted prefix
    obj = {"model": state_dict(1), "ema": {"decay": 0.999, "shadow": {"w": torch.randn(3, 2)}}, "step": 9}
    path = tmp_path / "nested.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
    want = expected(torch_load(path))
    assert "ema.shadow.w" in want and "model.base" in want
    assert listed(path) == want


def test_round_trip_other_archive_folder_and_module_state_dict(tmp_path):
    # torch names the archive folder after the file; the reader takes whatever folder it finds
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Linear(4, 2))
    path = tmp_path / "some_name.pt"
    torch.save(net.state_dict(), path)
    with zipfile.ZipFile(path) as z:
        assert {n.split("/")[0] for n in z.namelist()} == {"some_name"}
    assert listed(path) == expected(torch_load(path))


def test_non_contiguous_view_is_refused_by_name(tmp_path):
    path = tmp_path / "t.pt"
    torch.save({"ok": torch.ones(2), "transposed": torch.randn(3, 4).t()}, path)
    r = dump(path)
    assert r.returncode == 1 and r.stdout == ""
    assert_one_line(r, path, "tensor 'transposed'", "not contiguous")


def test_unsupported_dtype_is_refused_by_name(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"c": torch.zeros(2, dtype=torch.complex64)}, path)
    assert_one_line(dump(path), path, "torch.ComplexFloatStorage")


# ---- hostile files ------------------------------------------------------------------------------

def assert_one_line(r, path, *fragments):
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(str(path) + ":"), lines[0]
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


# a minimal pickle assembler (opcodes as pickletools names them)
def uni(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def glob(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def integer(n):
    if -(1 << 31) <= n < (1 << 31):
        return b"J" + struct.pack("<i", n)
    return b"\x8a\x08" + struct.pack("<q", n)  # LONG1


def tup(*items):
    return b"(" + b"".join(items) + b"t"


def persistent(key, storage="FloatStorage", numel=4, view=None):
    extra = () if view is None else (view,)
    return tup(uni("storage"), glob("torch", storage), uni(key), uni("cpu"), integer(numel), *extra) + b"Q"


def rebuild(pid, offset=0, shape=(4,), stride=(1,)):
    return (glob("torch._utils", "_rebuild_tensor_v2") +
            tup(pid, integer(offset), tup(*map(integer, shape)), tup(*map(integer, stride)), b"\x89",
                glob("collections", "OrderedDict") + b")R") + b"R")


def dict_pickle(items):
    return b"\x80\x02}" + b"".join(uni(k) + v + b"s" for k, v in items) + b"."


def torch_zip(path, pkl, storages=None, folder="archive"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{folder}/data.pkl", pkl)
        z.writestr(f"{folder}/version", b"3\n")
        for key, data in (storages or {}).items():
            z.writestr(f"{folder}/data/{key}", data)
    return path


FOUR_FLOATS = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)


def test_assembler_matches_torch(tmp_path):
    # the hand-assembled file is a checkpoint torch itself reads: the assembler is right
    path = torch_zip(tmp_path / "ok.ckpt", dict_pickle([("w", rebuild(persistent("0"), 1, (2,), (1,)))]),
                     {"0": FOUR_FLOATS})
    assert torch_load(path)["w"].tolist() == [2.0, 3.0]
    assert listed(path) == expected(torch_load(path))


class Payload:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


def touch(canary):
    return f"open({str(canary)!r}, 'w').write('pwned')"


def payloads(canary):
    """(name, pickle bytes of a dict {'w': tensor, 'evil': payload} or of the payload alone)."""
    cmd = f"touch {canary}"
    w = ("w", rebuild(persistent("0")))
    yield "reduce_os_system", dict_pickle([w, ("evil", glob("os", "system") + tup(uni(cmd)) + b"R")])
    yield "reduce_posix_system", dict_pickle([w, ("evil", glob("posix", "system") + tup(uni(cmd)) + b"R")])
    yield "reduce_builtins_eval", dict_pickle([w, ("evil", glob("builtins", "eval") + tup(uni(touch(canary))) + b"R")])
    yield "reduce_at_root", b"\x80\x02" + glob("os", "system") + tup(uni(cmd)) + b"R."
    yield "python_reduce_payload", pickle.dumps({"evil": Payload(os.system, cmd)}, protocol=2)
    yield "python_reduce_payload_p4", pickle.dumps([Payload(eval, touch(canary))], protocol=4)
    # an object built from a dangerous class, in every way pickle can build one
    yield "newobj", dict_pickle([w, ("evil", glob("subprocess", "Popen") + tup(tup(uni("touch"), uni(str(canary)))) + b"\x81")])
    yield "newobj_ex", dict_pickle([w, ("evil", glob("subprocess", "Popen") + tup(uni(cmd)) + b"}\x92")])
    yield "obj", dict_pickle([w, ("evil", b"(" + glob("os", "system") + uni(cmd) + b"o")])
    yield "inst", dict_pickle([w, ("evil", b"(" + uni(cmd) + b"ios\nsystem\n")])
    yield "build", dict_pickle([w, ("evil", glob("subprocess", "Popen") + tup(uni(cmd)) + b"R" +
                                    b"}" + uni("__setstate__") + glob("os", "system") + b"sb")])
    # a placeholder's result called again, and used as a storage type, a storage and a tensor
    yield "chained_call", dict_pickle([w, ("evil", glob("builtins", "getattr") + tup(glob("os", "path"), uni("join")) +
                                           b"R" + tup(uni(cmd)) + b"R")])
    yield "placeholder_storage", dict_pickle([w, ("evil", rebuild(glob("os", "system") + tup(uni(cmd)) + b"R"))])


@pytest.mark.parametrize("name", ["reduce_at_root", "python_reduce_payload_p4", "python_reduce_payload"])
def test_payload_is_live_under_python_pickle(tmp_path, name):
    # the test can fail: the same bytes make the canary under Python's own unpickler
    canary = tmp_path / "canary"
    data = dict(payloads(canary))[name]
    code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
    subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, timeout=60)
    assert canary.exists()


@pytest.mark.parametrize("name", [n for n, _ in payloads(Path("x"))])
def test_hostile_payload_is_inert(tmp_path, name):
    canary = tmp_path / "canary"
    data = dict(payloads(canary))[name]
    path = torch_zip(tmp_path / "evil.ckpt", data, {"0": FOUR_FLOATS})
    r = dump(path)
    assert not canary.exists()
    if name in ("reduce_at_root", "python_reduce_payload_p4"):
        assert_one_line(r, path, "not a dict of tensors")
    elif name == "placeholder_storage":
        assert_one_line(r, path, "storage of a tensor is a os.system placeholder")
    elif name == "python_reduce_payload":
        assert r.returncode == 0 and r.stdout == "", r
    else:  # the payload is an inert placeholder in a key that holds no tensor; the weight loads
        assert r.returncode == 0, r.stderr
        assert r.stdout.split("\t")[:3] == ["w", "F32", "[4]"]
    assert not canary.exists()


def memo_chain(levels, fanout):
    """dicts d_i = {'a': d_{i-1}, 'b': d_{i-1}, ...} built through the memo."""
    out = b"\x80\x02}q\x00"
    for i in range(1, levels + 1):
        out += b"0}" + b"".join(uni(k) + b"h" + bytes([i - 1]) + b"s" for k in "ab"[:fanout]) + b"q" + bytes([i])
    return out + b"."


HOSTILE_PICKLES = {
    "deep_marks": (b"\x80\x02" + b"(" * 100000, "nested MARKs"),
    "deep_dicts": (b"\x80\x02" + b"(" + b"".join(uni("a") + b"(" for _ in range(2000)), "nested MARKs"),
    "self_reference": (b"\x80\x02}q\x00" + uni("a") + b"h\x00s.", "deeper than 32"),
    "nesting_40": (memo_chain(40, 1), "deeper than 32"),
    "shared_dag": (memo_chain(30, 2), "more than"),
    "huge_unicode": (b"\x80\x02X\xff\xff\xff\xffab", "runs past the end"),
    "huge_bytes8": (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 63) + b"ab", "runs past the end"),
    "huge_long4": (b"\x80\x02\x8b\xff\xff\xff\x7f", "runs past the end"),
    "huge_frame": (b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"}.", "frame"),
    "memo_get_unset": (b"\x80\x02h\x05.", "memo index 5"),
    "memo_long_get": (b"\x80\x02j\xff\xff\xff\xff.", "memo index 4294967295"),
    "memo_put_huge": (b"\x80\x02}r\xff\xff\xff\xff.", "memo index 4294967295"),
    "stack_underflow": (b"\x80\x02s.", "stack underflow"),
    "no_stop": (b"\x80\x02}", "without STOP"),
    "unknown_opcode": (b"\x80\x02\xff.", "unknown opcode"),
    "protocol_0_text": (b"I42\n.", "INT"),
    "ext_code": (b"\x80\x02\x82\x01.", "EXT1"),
    "protocol_9": (b"\x80\x09}.", "protocol 9"),
    "not_a_dict": (b"\x80\x02]." , "not a dict of tensors"),
    "bad_persistent_id": (b"\x80\x02}" + uni("w") + uni("storage") + b"Qs.", "persistent id"),
}


@pytest.mark.parametrize("name", list(HOSTILE_PICKLES))
def test_hostile_pickle_is_one_error_line(tmp_path, name):
    data, fragment = HOSTILE_PICKLES[name]
    path = torch_zip(tmp_path / "h.ckpt", data)
    assert_one_line(dump(path), path, fragment)


STORAGE_CASES = {
    "offset_past_end": (rebuild(persistent("0"), offset=3, shape=(2,)), "runs past the end of storage '0'"),
    "shape_past_end": (rebuild(persistent("0"), shape=(5,)), "runs past the end of storage '0'"),
    "negative_offset": (rebuild(persistent("0"), offset=-1), "runs past the end"),
    "shape_overflow": (rebuild(persistent("0"), shape=(1 << 30, 1 << 30, 1 << 30), stride=(1 << 60, 1 << 30, 1)),
                       "tensor 'w'"),
    "negative_shape": (rebuild(persistent("0"), shape=(-4,)), "negative"),
    "numel_past_entry": (rebuild(persistent("0", numel=8)), "entry 'archive/data/0' has 16 bytes"),
    "missing_entry": (rebuild(persistent("7")), "no entry 'archive/data/7'"),
    "rank_9": (rebuild(persistent("0"), shape=(1,) * 9, stride=(1,) * 9), "_rebuild_tensor arguments"),
    "stride_rank_mismatch": (rebuild(persistent("0"), shape=(2, 2), stride=(1,)), "_rebuild_tensor arguments"),
    "same_key_two_dtypes": (tup(rebuild(persistent("0")), rebuild(persistent("0", "HalfStorage", 8))) + b"0" +
                            rebuild(persistent("0")), "named twice"),
    "unknown_storage_type": (rebuild(persistent("0", "QInt8Storage")), "unsupported storage type"),
}


@pytest.mark.parametrize("name", list(STORAGE_CASES))
def test_storage_bounds(tmp_path, name):
    value, fragment = STORAGE_CASES[name]
    path = torch_zip(tmp_path / "s.ckpt", dict_pickle([("w", value)]), {"0": FOUR_FLOATS})
    assert_one_line(dump(path), path, fragment)


def test_duplicate_names_after_flattening(tmp_path):
    inner = b"}" + uni("b") + rebuild(persistent("0")) + b"s"
    path = torch_zip(tmp_path / "d.ckpt", dict_pickle([("a.b", rebuild(persistent("0"))), ("a", inner)]),
                     {"0": FOUR_FLOATS})
    assert_one_line(dump(path), path, "tensor 'a.b' appears twice")


def shared_dicts(tmp_path, key, levels):
    # torch.save memoizes the shared dict: a few KB list 2**levels tensors, one per path
    d = {key: torch.zeros(1)}
    for _ in range(levels):
        d = {"a": d, "b": d}
    path = tmp_path / "shared.pt"
    torch.save(d, path)
    assert path.stat().st_size < 64 << 10
    return path


def test_shared_dicts_long_names_are_bounded(tmp_path):
    # 2**17 names of 4 KB each would take 538 MB
    path = shared_dicts(tmp_path, "x" * 4000, 17)
    assert_one_line(dump(path), path, "tensor names take more than 64 MiB")


def test_shared_dicts_many_tensors_are_bounded(tmp_path):
    path = shared_dicts(tmp_path, "x", 21)
    assert_one_line(dump(path), path, "dicts list more than 1048576 tensors")


# ---- broken files -------------------------------------------------------------------------------

def saved(tmp_path, fmt):
    path = tmp_path / f"{fmt}.ckpt"
    torch.save(state_dict(3), path, _use_new_zipfile_serialization=fmt == "zip")
    return path


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_truncated_files(tmp_path, fmt):
    data = saved(tmp_path, fmt).read_bytes()
    cut = tmp_path / "cut.ckpt"
    for n in sorted({1, 10, 100, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 1}):
        cut.write_bytes(data[:n])
        assert_one_line(dump(cut), cut)


def test_trailing_bytes_after_legacy_storages(tmp_path):
    path = saved(tmp_path, "legacy")
    path.write_bytes(path.read_bytes() + b"\0")
    assert_one_line(dump(path), path, "1 bytes after the last storage")


def central_entries(data):
    """(offset of each central directory header, its local header offset) of a small archive."""
    out, at = [], data.rfind(b"PK\x01\x02", 0)
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        out.append((at, struct.unpack_from("<I", data, at + 42)[0]))
        at = data.find(b"PK\x01\x02", at + 4)
    return out


def test_zip_overlapping_entries(tmp_path):
    path = torch_zip(tmp_path / "z.ckpt", dict_pickle([("w", rebuild(persistent("0")))]), {"0": FOUR_FLOATS})
    data = bytearray(path.read_bytes())
    (first, local0), (second, _) = central_entries(data)[:2]
    # the second entry claims the first one's local header: names disagree
    struct.pack_into("<I", data, second + 42, local0)
    path.write_bytes(bytes(data))
    assert_one_line(dump(path), path, "local header disagrees")


def test_zip_overlapping_data(tmp_path):
    # two entries of the same name length whose data overlap: the second's local header is moved
    # into the first one's data, where a copy of it is planted
    pkl = dict_pickle([("w", rebuild(persistent("0")))])
    path = torch_zip(tmp_path / "z.ckpt", pkl, {"0": FOUR_FLOATS})
    data = bytearray(path.read_bytes())
    entries = central_entries(data)
    (c1, l1), (c2, l2) = entries[0], entries[1]
    name_len = struct.unpack_from("<H", data, l2 + 26)[0]
    header = bytes(data[l2:l2 + 30 + name_len])
    start = l1 + 30 + struct.unpack_from("<H", data, l1 + 26)[0] + struct.unpack_from("<H", data, l1 + 28)[0]
    data[start:start + len(header)] = header
    struct.pack_into("<I", data, c2 + 42, start)
    path.write_bytes(bytes(data))
    assert_one_line(dump(path), path, "overlap")


def test_zip_bad_central_directory(tmp_path):
    path = torch_zip(tmp_path / "z.ckpt", dict_pickle([]))
    data = bytearray(path.read_bytes())
    eocd = data.rfind(b"PK\x05\x06")
    struct.pack_into("<I", data, eocd + 16, len(data) + 5)  # directory offset past the end
    path.write_bytes(bytes(data))
    assert_one_line(dump(path), path, "central directory")
    data[eocd:eocd + 4] = b"XXXX"
    path.write_bytes(bytes(data))
    assert_one_line(dump(path), path, "no ZIP end of central directory")


def test_zip_compressed_entry_is_named(tmp_path):
    path = tmp_path / "c.ckpt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", dict_pickle([]), compress_type=zipfile.ZIP_DEFLATED)
    assert_one_line(dump(path), path, "'archive/data.pkl' is compressed")


def test_zip_duplicate_entry(tmp_path):
    path = tmp_path / "d.ckpt"
    with pytest.warns(UserWarning):
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", dict_pickle([]))
            z.writestr("archive/data.pkl", dict_pickle([]))
    assert_one_line(dump(path), path, "appears twice")


def test_zip_without_data_pkl_and_torchscript(tmp_path):
    path = torch_zip(tmp_path / "n.ckpt", b"", folder="x")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/other", b"")
    assert_one_line(dump(path), path, "no 'archive/data.pkl'")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", dict_pickle([]))
        z.writestr("archive/constants.pkl", b"")
    assert_one_line(dump(path), path, "TorchScript")


def test_big_endian_byteorder_is_refused(tmp_path):
    path = torch_zip(tmp_path / "b.ckpt", dict_pickle([]), {})
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("archive/byteorder", b"big")
    assert_one_line(dump(path), path, "big-endian")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.ckpt"
    path.write_bytes(b"hello world")
    assert_one_line(dump(path), path, "not a PyTorch checkpoint")
    path.write_bytes(b"\x80\x02K\x05.")
    assert_one_line(dump(path), path, "magic number")


def zip64_archive(path, entries):
    """A stored archive in the ZIP64 layout a >4 GB checkpoint has (APPNOTE 4.3.14-16, 4.5.3):
    saturated 32-bit fields, the sizes and offsets in ZIP64 extra fields, the ZIP64 end of
    central directory record and its locator."""
    import zlib
    body, central = b"", b""
    for name, data in entries:
        name = name.encode()
        off = len(body)
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, zlib.crc32(data), 0xFFFFFFFF, 0xFFFFFFFF,
                            len(name), 20) + name + struct.pack("<HHQQ", 1, 16, len(data), len(data)) + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, zlib.crc32(data), 0xFFFFFFFF,
                               0xFFFFFFFF, len(name), 28, 0, 0, 0, 0, 0xFFFFFFFF) + name
        central += struct.pack("<HHQQQ", 1, 24, len(data), len(data), off)
    n, cd_off = len(entries), len(body)
    eocd64 = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), cd_off)
    locator = struct.pack("<IIQI", 0x07064B50, 0, cd_off + len(central), 1)
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    path.write_bytes(body + central + eocd64 + locator + eocd)
    return path


def test_zip64_layout(tmp_path):
    entries = [("archive/data.pkl", dict_pickle([("w", rebuild(persistent("0"), 1, (3,), (1,)))])),
               ("archive/data/0", FOUR_FLOATS), ("archive/version", b"3\n")]
    path = zip64_archive(tmp_path / "z64.ckpt", entries)
    with zipfile.ZipFile(path) as z:  # the builder is right: Python's reader takes it
        assert [(i.filename, z.read(i)) for i in z.infolist()] == entries
    assert torch_load(path)["w"].tolist() == [2.0, 3.0, 4.0]
    assert listed(path) == expected(torch_load(path))
    # the ZIP64 record's directory offset past the end is refused like the 32-bit one
    data = bytearray(path.read_bytes())
    at = data.rfind(b"PK\x06\x06")
    struct.pack_into("<Q", data, at + 48, 1 << 62)
    path.write_bytes(bytes(data))
    assert_one_line(dump(path), path, "central directory")
