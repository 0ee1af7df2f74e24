#!/usr/bin/env python3
"""Seed corpora for the libFuzzer harnesses of tests/fuzz, made at fuzz time (nothing large is
committed): python3 tests/fuzz/make_corpus.py OUT [PACKAGE.mlpackage ...]

Writes OUT/<harness>/ for every harness and OUT/base.mlpackage, the small hand-made package
whose manifest, model and weight.bin the package_model and package_weights harnesses keep fixed
($SDC_FUZZ_PACKAGE). Seeds come from the committed fixtures (examples/tiny-sd), from the
packages given on the command line (converted from examples/tiny-sd by bench/fuzz.sh), and from
small files built here by hand. Standard library only: it runs before any venv exists.
"""

import json
import shutil
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from pbwire import fld, varint, vint  # noqa: E402  (tests/python/pbwire.py, stdlib only)

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny-sd"
SEP = b"\n--8<--\n"  # SDC_FUZZ_SEPARATOR in harness.h


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def parts(*chunks):
    return SEP.join(c if isinstance(c, bytes) else c.encode() for c in chunks)


# ---- safetensors -------------------------------------------------------------------------

DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
              "BOOL": 1, "U16": 2, "U32": 4, "U64": 8}


def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape)] laid out in order, data bytes counting up."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape in tensors:
        n = DTYPE_SIZE[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + n]}
        data += bytes((len(data) + i) & 0xFF for i in range(n))
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + data


def shrunk_header(path, limit=24):
    """A real file's tensor names, dtypes and ranks with every dimension cut to at most 2."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", None)
    items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])[:limit]
    return safetensors([(k, v["dtype"], [min(d, 2) for d in v["shape"]]) for k, v in items], meta)


def safetensors_seeds(out):
    for f in sorted(TINY.glob("*/*.safetensors")):
        write(out / f"{f.parent.name}.safetensors", shrunk_header(f))
    write(out / "empty.safetensors", safetensors([]))
    write(out / "metadata.safetensors", safetensors([("a", "F32", [2])], {"format": "pt"}))
    write(out / "dtypes.safetensors", safetensors([(f"t{d}", d, [2, 1]) for d in DTYPE_SIZE]))
    write(out / "scalar_and_empty.safetensors", safetensors([("e", "F16", [0, 3]), ("s", "BF16", []), ("v", "F64", [3])]))


# ---- npy ---------------------------------------------------------------------------------

def npy(descr, shape, version=1, quote="'"):
    dims = f"{shape[0]}," if len(shape) == 1 else ", ".join(map(str, shape))  # as numpy writes tuples
    d = f"{{{quote}descr{quote}: {quote}{descr}{quote}, {quote}fortran_order{quote}: False, {quote}shape{quote}: ({dims}), }}"
    pre = 10 if version == 1 else 12
    pad = -(pre + len(d) + 1) % 64
    text = (d + " " * pad + "\n").encode()
    head = b"\x93NUMPY" + bytes([version, 0]) + (struct.pack("<H", len(text)) if version == 1 else struct.pack("<I", len(text)))
    n = {"<f4": 4, "<f2": 2, "<i4": 4}[descr]
    for s in shape:
        n *= s
    return head + text + bytes(i & 0xFF for i in range(n))


def npy_seeds(out):
    shapes = [(), (0,), (3,), (2, 3), (1, 2, 1, 2)]
    for descr in ("<f4", "<f2", "<i4"):
        for i, shape in enumerate(shapes):
            write(out / f"{descr[1:]}_{i}.npy", npy(descr, shape))
    write(out / "v2.npy", npy("<f4", (1, 4), version=2))
    write(out / "v3.npy", npy("<i4", (2,), version=3, quote='"'))


# ---- model source ------------------------------------------------------------------------

def source_seeds(out):
    index = json.dumps({"metadata": {"total_size": 10},
                        "weight_map": {"conv_in.weight": "a.safetensors", "conv_in.bias": "b.safetensors"}})
    card = "---\nlicense: creativeml-openrail-m\nbase_model: runwayml/stable-diffusion-v1-5\n---\n# tiny\n"
    tiny = [(TINY / name).read_text() for name in ("model_index.json", "unet/config.json",
                                                    "scheduler/scheduler_config.json", "tokenizer/tokenizer_config.json")]
    files = tiny[:2] + [index] + tiny[2:]  # in the order of fuzz_source.c's parts
    write(out / "pipeline", parts(*files, card, "0123abcd\n"))
    write(out / "no_model_index", parts("", *files[1:], "", ""))
    write(out / "xl", parts('{"_class_name": "StableDiffusionXLPipeline", "text_encoder_2": ["t", "CLIP"],'
                            ' "requires_aesthetics_score": true, "unet": ["d", "U"]}',
                            '{"sample_size": [96, 128], "in_channels": 4, "block_out_channels": [2, 4]}', index,
                            '{"timestep_spacing": "trailing", "num_train_timesteps": 1000, "steps_offset": 1}',
                            '{"model_max_length": 1e30}', "", " 0123abcd \n"))
    write(out / "text_encoder_config", (TINY / "text_encoder/config.json").read_bytes())


# ---- tokenizer ---------------------------------------------------------------------------

def tokenizer_seeds(out):
    tok = [(TINY / "tokenizer" / name).read_bytes() for name in
           ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")]
    prompts = ["a photo of an astronaut riding a horse on mars", "Hello, World!! it's 2024 <|endoftext|> x",
               "caf\u00e9 nai\u0308ve \u03a3\u039f\u03a3 \u0130 \u65e5\u672c\u8a9e \U0001f600\u200d\U0001f600",
               "a very long prompt " * 12, "\t\n ", "wow!!! ... 123"]
    for i, p in enumerate(prompts):
        write(out / f"prompt{i}", p.encode())
    write(out / "folder", parts(prompts[1], *tok))
    legacy = b'{"model_max_length": 1000000000000000019884624838656}'
    write(out / "legacy", parts(prompts[2], tok[0], tok[1], legacy, tok[3]))


# ---- PyTorch checkpoints -----------------------------------------------------------------
# What torch.save writes, made without torch: Python's pickler, with stand-ins registered under
# torch's module names so that globals and persistent ids come out as torch writes them.

class _Storage:
    def __init__(self, key, kind, data):
        self.key, self.kind, self.data = key, kind, data


class _Tensor:
    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride


def _torch_standins():
    import types
    mods = {}
    for name in ("torch", "torch._utils"):
        mods[name] = types.ModuleType(name)
    sys.modules["torch"] = mods["torch"]  # make_corpus.py runs without torch
    sys.modules["torch._utils"] = mods["torch._utils"]

    def _rebuild_tensor_v2(*args):
        raise RuntimeError("stand-in")
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    mods["torch._utils"]._rebuild_tensor_v2 = _rebuild_tensor_v2
    kinds = {}
    for kind in ("FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage"):
        cls = type(kind, (), {"__module__": "torch"})
        setattr(mods["torch"], kind, cls)
        kinds[kind] = cls
    return _rebuild_tensor_v2, kinds


def torch_pickle(obj, protocol, legacy):
    import collections
    import io
    import pickle
    rebuild, kinds = _torch_standins()
    storages = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if not isinstance(o, _Storage):
                return None
            storages[o.key] = o
            size = {"FloatStorage": 4, "LongStorage": 8}.get(o.kind, 2)
            pid = ("storage", kinds[o.kind], o.key, "cpu", len(o.data) // size)
            return pid + (None,) if legacy else pid

        def reducer_override(self, o):
            if isinstance(o, _Tensor):
                return rebuild, (o.storage, o.offset, o.shape, o.stride, False, collections.OrderedDict())
            return NotImplemented

    buf = io.BytesIO()
    Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue(), storages


def torch_save(obj, protocol=2, legacy=False, folder="archive"):
    import io
    import pickle
    import zipfile
    data, storages = torch_pickle(obj, protocol, legacy)
    if legacy:
        size = {"FloatStorage": 4, "LongStorage": 8}
        out = b"".join(pickle.dumps(v, protocol=protocol) for v in (
            0x1950a86a20f9469cfc6c, 1001, {"protocol_version": 1001, "little_endian": True,
                                           "type_sizes": {"short": 2, "int": 4, "long": 4}}))
        out += data + pickle.dumps(sorted(storages), protocol=protocol)
        for key in sorted(storages):
            s = storages[key]
            out += struct.pack("<q", len(s.data) // size.get(s.kind, 2)) + s.data
        return out
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{folder}/data.pkl", data)
        z.writestr(f"{folder}/byteorder", b"little")
        for key in sorted(storages):
            z.writestr(f"{folder}/data/{key}", storages[key].data)
        z.writestr(f"{folder}/version", b"3\n")
    return buf.getvalue()


def ckpt_seeds(out):
    import collections
    w = _Storage("0", "FloatStorage", bytes(range(48)))
    h = _Storage("1", "HalfStorage", bytes(range(12)))
    ids = _Storage("2", "LongStorage", bytes(16))
    sd = collections.OrderedDict([
        ("model.diffusion_model.conv.weight", _Tensor(w, 0, (2, 3, 1, 2), (6, 2, 2, 1))),
        ("model.view", _Tensor(w, 4, (2, 2), (2, 1))),
        ("first_stage_model.bias", _Tensor(h, 0, (6,), (1,))),
        ("cond_stage_model.position_ids", _Tensor(ids, 0, (1, 2), (2, 1))),
        ("scalar", _Tensor(w, 11, (), ())),
    ])
    nested = {"state_dict": sd, "global_step": 5, "epoch": 1.5, "callbacks": {"cb": ("x", None, True, b"\0")}}
    for protocol in (2, 4, 5):
        for legacy in (False, True):
            name = f"{'legacy' if legacy else 'zip'}_p{protocol}"
            write(out / f"{name}.ckpt", torch_save(nested if protocol != 4 else sd, protocol, legacy))
    write(out / "folder.pt", torch_save({"a": _Tensor(h, 1, (2, 2), (2, 1))}, 2, False, folder="my_model"))
    write(out / "empty.pt", torch_save({}, 2, False))


# ---- packages ----------------------------------------------------------------------------
# Core ML model files for our trimmed schema (src/coreml/coreml.proto), with the wire encoder
# of tests/python/pbwire.py.

FP16, FP32, INT8, INT32, UINT8, UINT32, UINT4 = 10, 11, 21, 23, 31, 33, 35
BLOB_CODE = {FP16: 1, FP32: 2, UINT8: 3, INT8: 4, UINT4: 11}


def tensor_type(dtype, shape):
    dims = b"".join(fld(3, fld(1, vint(1, s))) for s in shape)
    return fld(1, vint(1, dtype) + vint(2, len(shape)) + dims)  # ValueType{tensorType}


def named(name, dtype, shape):
    return fld(1, name) + fld(2, tensor_type(dtype, shape))


def imm(dtype, shape, kind, payload):
    """Value{type, immediateValue{tensor{<kind>{values}}}}; kind: floats 1, ints 2, bytes 7."""
    return fld(2, tensor_type(dtype, shape)) + fld(3, fld(1, fld(kind, fld(1, payload))))


def blob_value(dtype, shape, offset):
    return fld(2, tensor_type(dtype, shape)) + fld(5, fld(1, "@model_path/weights/weight.bin") + vint(2, offset))


def attr(key, value):
    return fld(5, fld(1, key) + fld(2, value))


def op(typ, outputs, inputs=(), attrs=b""):
    ins = b"".join(fld(2, fld(1, k) + fld(2, fld(1, fld(1, v)))) for k, v in inputs)
    return fld(1, typ) + ins + b"".join(fld(3, o) for o in outputs) + attrs


class BlobFile:
    def __init__(self):
        self.data, self.count = bytearray(64), 0

    def add(self, dtype, payload):
        self.data += bytes(-len(self.data) % 64)
        offset = len(self.data)
        self.data += struct.pack("<IIQQQ", 0xDEADBEEF, BLOB_CODE[dtype], len(payload), offset + 64, 0) + bytes(32)
        self.data += payload
        self.count += 1
        return offset

    def bytes(self):
        return struct.pack("<II", self.count, 2) + bytes(self.data[8:])


def f16(values):
    return struct.pack(f"<{len(values)}e", *values)


def f32(values):
    return struct.pack(f"<{len(values)}f", *values)


def base_package():
    """x [2, 4] fp32 plus one constant of every kind the loader decodes: blobs of fp16, fp32,
    uint8, int8 and uint4, immediate floats, ints and bytes, and each constexpr op."""
    w = BlobFile()
    o16 = w.add(FP16, f16([0.5 * i for i in range(8)]))
    o32 = w.add(FP32, f32([1.0, -2.0, 3.0, -4.0]))
    oidx = w.add(UINT8, bytes([0x10, 0x32, 0x54, 0x76]))
    oq = w.add(INT8, bytes([1, 2, 3, 4, 0xFF, 0xFE, 0xFD, 0xFC]))
    o4 = w.add(UINT4, bytes([0x21, 0x43, 0x65, 0x87]))
    S = [2, 4]
    ops = [
        op("const", [named("w16", FP16, S)], attrs=attr("val", blob_value(FP16, S, o16))),
        op("const", [named("w32", FP32, [4])], attrs=attr("val", blob_value(FP32, [4], o32))),
        op("constexpr_lut_to_dense", [named("lut16", FP16, S)],
           attrs=attr("indices", blob_value(UINT8, [4], oidx)) +
           attr("lut", imm(FP16, [16], 7, f16([i / 4 for i in range(16)]))) +
           attr("shape", imm(UINT32, [2], 2, varint(2) + varint(4)))),
        op("constexpr_affine_dequantize", [named("aff", FP32, S)],
           attrs=attr("quantized_data", blob_value(INT8, S, oq)) + attr("zero_point", imm(INT8, [], 7, b"\x01")) +
           attr("scale", imm(FP32, [2], 1, f32([0.5, 0.25]))) + attr("axis", imm(INT32, [], 2, varint(0)))),
        op("constexpr_cast", [named("cast", FP32, S)], attrs=attr("source_val", imm(FP16, S, 7, f16(list(range(8)))))),
        op("constexpr_sparse_to_dense", [named("sparse", FP32, S)],
           attrs=attr("nonzero_data", imm(FP32, [3], 1, f32([1, 2, 3]))) + attr("mask", imm(UINT8, [1], 7, b"\x15")) +
           attr("shape", imm(UINT32, [2], 2, varint(2) + varint(4)))),
        op("const", [named("idx4", UINT4, S)], attrs=attr("val", blob_value(UINT4, S, o4))),
        op("const", [named("lut18", FP16, [1, 1, 16, 1])], attrs=attr("val", imm(FP16, [1, 1, 16, 1], 7, f16(list(range(16)))))),
        op("constexpr_lut_to_dense", [named("lut18_w", FP16, S)], inputs=[("indices", "idx4"), ("lut", "lut18")]),
        op("const", [named("q8", INT8, S)], attrs=attr("val", imm(INT8, S, 7, bytes([1, 2, 3, 4, 5, 6, 7, 8])))),
        op("const", [named("bscale", FP32, [2, 1])], attrs=attr("val", imm(FP32, [2, 1], 1, f32([0.5, 2.0])))),
        op("const", [named("boff", FP32, [2, 1])], attrs=attr("val", imm(FP32, [2, 1], 1, f32([1.0, 0.0])))),
        op("constexpr_blockwise_shift_scale", [named("blk", FP32, S)],
           inputs=[("data", "q8"), ("scale", "bscale"), ("offset", "boff")]),
        op("add", [named("a1", FP32, S)], inputs=[("x", "x"), ("y", "aff")]),
        op("add", [named("a2", FP32, S)], inputs=[("x", "a1"), ("y", "cast")]),
        op("add", [named("y", FP32, S)], inputs=[("x", "a2"), ("y", "sparse")]),
    ]
    block = fld(2, "y") + b"".join(fld(3, o) for o in ops)
    fn = fld(1, named("x", FP32, S)) + fld(2, "CoreML8") + fld(3, fld(1, "CoreML8") + fld(2, block))
    prog = vint(1, 1) + fld(2, fld(1, "main") + fld(2, fn))
    array = fld(5, b"".join(vint(1, d) for d in S) + vint(2, 65568))  # FeatureType{multiArrayType}
    desc = fld(1, fld(1, "x") + fld(3, array)) + fld(10, fld(1, "y") + fld(3, array)) + \
        fld(100, fld(1, "fuzz seed") + fld(100, fld(1, "k") + fld(2, "v")))
    model = vint(1, 9) + fld(2, desc) + varint((502 << 3) | 2) + varint(len(prog)) + prog
    return model, w.bytes()


MANIFEST = json.dumps({
    "fileFormatVersion": "1.0.0",
    "itemInfoEntries": {
        "W": {"author": "com.apple.CoreML", "name": "weights", "path": "com.apple.CoreML/weights"},
        "M": {"author": "com.apple.CoreML", "name": "model.mlmodel", "path": "com.apple.CoreML/model.mlmodel"},
    },
    "rootModelIdentifier": "M",
}, indent=2)


def write_package(dst, manifest, model, weights):
    write(dst / "Manifest.json", manifest)
    write(dst / "Data/com.apple.CoreML/model.mlmodel", model)
    write(dst / "Data/com.apple.CoreML/weights/weight.bin", weights)


def package_seeds(out, converted):
    model, weights = base_package()
    write_package(out / "base.mlpackage", MANIFEST, model, weights)
    write(out / "package/base", parts(MANIFEST, model, weights))
    write(out / "package_model/base", model)
    write(out / "package_weights/base", weights)
    for i, pkg in enumerate(converted):
        pkg = Path(pkg)
        m = (pkg / "Manifest.json").read_bytes()
        p = (pkg / "Data/com.apple.CoreML/model.mlmodel").read_bytes()
        b = (pkg / "Data/com.apple.CoreML/weights/weight.bin").read_bytes()
        write(out / f"package/converted{i}", parts(m, p, b))
        write(out / f"package_model/converted{i}", p)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    if out.exists():
        shutil.rmtree(out)
    safetensors_seeds(out / "safetensors")
    npy_seeds(out / "npy")
    source_seeds(out / "source")
    tokenizer_seeds(out / "tokenizer")
    ckpt_seeds(out / "ckpt")
    package_seeds(out, sys.argv[2:])
    # Committed seeds (small, hand-picked) and crash reproducers join the generated ones.
    for extra in ("corpus", "regressions"):
        for f in sorted((ROOT / "tests/fuzz" / extra).glob("*/*")):
            write(out / f.parent.name / f"{extra}-{f.name}", f.read_bytes())


if __name__ == "__main__":
    main()
