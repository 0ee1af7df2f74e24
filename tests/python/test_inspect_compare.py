"""`sdcoreml inspect --compare A B` (issue 10): two packages' contracts and op histograms side by
side, on packages other tools wrote (coremltools' MIL builder, ops in nested blocks) and on
sdcoreml's own from examples/tiny-sd.

The oracle is coremltools' own reader: `ct.utils.load_spec` parses model.mlmodel with Apple's
protobuf schema; the tests count op types recursively through `op.blocks`, read the contract
from `spec.description` and sum the bytes of every distinct blob the consts reference. Expected
differences are computed from the two oracle documents, never from sdcoreml's output."""

import collections
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import check_ok, package_name
from pbwire import fld
from test_hostile_packages import model_with_function, named, operation, package_with

import coremltools as ct  # noqa: E402  (a test requirement: never skip without it)
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

# Core ML ArrayFeatureType.ArrayDataType codes and MIL DataType codes -> what inspect prints.
ARRAY_DTYPES = {65568: "FLOAT32", 65552: "FLOAT16", 131104: "INT32"}
BLOB_ITEM_BYTES = {10: 2, 11: 4, 13: 2, 21: 1, 23: 4, 31: 1}  # FLOAT16 FLOAT32 BFLOAT16 INT8 INT32 UINT8
METADATA = {"author": "author", "license": "license", "version": "versionString",
            "short_description": "shortDescription"}


# ---------------------------------------------------------------------------------------------
# The oracle


def load_spec(pkg):
    """load_spec rewrites Manifest.json: read a copy so the package stays as its tool wrote it."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / Path(pkg).name
        shutil.copytree(pkg, copy)
        return ct.utils.load_spec(str(copy))


def walk(ops):
    for op in ops:
        yield op
        for block in op.blocks:
            yield from walk(block.operations)


def main_ops(spec):
    fn = spec.mlProgram.functions["main"]
    return fn.opset, fn.block_specializations[fn.opset].operations


def oracle(pkg):
    """{histogram, op_count, weight_bytes, contract: {field: value}} as coremltools reads pkg."""
    spec = load_spec(pkg)
    opset, ops = main_ops(spec)
    hist = collections.Counter(op.type for op in walk(ops))
    blobs = {}
    for op in walk(ops):
        val = op.attributes.get("val") if op.type == "const" else None
        if val is not None and val.WhichOneof("value") == "blobFileValue":
            t = val.type.tensorType
            n = int(np.prod([d.constant.size for d in t.dimensions]))
            blobs[(val.blobFileValue.fileName, val.blobFileValue.offset)] = n * BLOB_ITEM_BYTES[t.dataType]
    contract = {"specification_version": spec.specificationVersion, "opset": opset}
    for f in spec.description.input:
        a = f.type.multiArrayType
        contract[f"inputs.{f.name}.dtype"] = ARRAY_DTYPES[a.dataType]
        contract[f"inputs.{f.name}.shape"] = [int(d) for d in a.shape]
    for i, f in enumerate(spec.description.output):
        a = f.type.multiArrayType
        contract[f"outputs[{i}].name"] = f.name
        contract[f"outputs[{i}].dtype"] = ARRAY_DTYPES[a.dataType]
        contract[f"outputs[{i}].shape"] = [int(d) for d in a.shape]
    for ours, theirs in METADATA.items():
        contract[f"metadata.{ours}"] = getattr(spec.description.metadata, theirs)
    weight_bytes = sum(blobs.values())
    contract["weight_bytes"] = weight_bytes
    return {"histogram": hist, "op_count": sum(hist.values()), "weight_bytes": weight_bytes, "contract": contract}


def expected_comparison(a, b):
    """What --compare must report for oracles a and b: differing contract fields (a field one side
    lacks is None there) and {op: (count a, count b)} over both histograms."""
    fields = list(a["contract"]) + [f for f in b["contract"] if f not in a["contract"]]
    diffs = {f: (a["contract"].get(f), b["contract"].get(f)) for f in fields
             if a["contract"].get(f) != b["contract"].get(f)}
    ops = {op: (a["histogram"][op], b["histogram"][op]) for op in set(a["histogram"]) | set(b["histogram"])}
    return diffs, ops


def compare(sdcoreml, a, b, *flags):
    return sdcoreml("inspect", "--compare", a, b, *flags)


def compare_json(sdcoreml, a, b, want_exit):
    r = compare(sdcoreml, a, b, "--json")
    assert r.returncode == want_exit, (r.returncode, r.stderr)
    assert r.stderr == "", r.stderr
    return json.loads(r.stdout)


def check_against_oracle(doc, a, b):
    """The --json document of `--compare A B` against the oracle documents of A and B."""
    oa, ob = oracle(a), oracle(b)
    diffs, ops = expected_comparison(oa, ob)
    assert {d["field"]: (d["a"], d["b"]) for d in doc["contract_differences"]} == diffs
    assert {r["field"] for r in doc["contract"]} == set(oa["contract"]) | set(ob["contract"])
    for row in doc["contract"]:
        want = (oa["contract"].get(row["field"]), ob["contract"].get(row["field"]))
        assert (row["a"], row["b"], row["same"]) == (*want, want[0] == want[1]), row
    assert doc["op_histogram"] == {op: {"a": x, "b": y, "difference": y - x} for op, (x, y) in ops.items()}
    assert sorted(doc["op_types_differing"]) == sorted(op for op, (x, y) in ops.items() if x != y)
    assert doc["op_count"] == {"a": oa["op_count"], "b": ob["op_count"], "difference": ob["op_count"] - oa["op_count"]}
    assert doc["same"] == (not diffs and all(x == y for x, y in ops.values()))
    for side, o, path in (("a", oa, a), ("b", ob, b)):
        assert doc[side]["package"] == str(path)
        assert doc[side]["op_histogram"] == dict(o["histogram"])
        assert doc[side]["weight_bytes"] == o["weight_bytes"]
    return diffs, ops


# ---------------------------------------------------------------------------------------------
# Packages coremltools writes


def save(prog, path, precision=ct.precision.FLOAT16, short_description=None):
    m = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16, compute_precision=precision,
                   skip_model_load=True)
    if short_description:
        m.short_description = short_description
    m.save(str(path))
    return path


def group_norm_program(decomposed, batch=1, groups=4, eps=1e-5):
    """A GroupNorm over (B, 16, 4, 4) then a 1x1 conv, as coremltools lowers torch's group_norm
    (reduce_mean, sub, square, reduce_mean, add eps, sqrt, real_div) or as one layer_norm over the
    group's axes."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((16, 16, 1, 1)).astype(np.float32)
    gamma = rng.standard_normal((1, 16, 1, 1)).astype(np.float32)
    beta = rng.standard_normal((1, 16, 1, 1)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(batch, 16, 4, 4))], opset_version=ct.target.iOS16)
    def prog(x):
        g = mb.reshape(x=x, shape=[batch, groups, 16 // groups * 16])
        if decomposed:
            mean = mb.reduce_mean(x=g, axes=[2], keep_dims=True)
            centred = mb.sub(x=g, y=mean)
            var = mb.reduce_mean(x=mb.square(x=centred), axes=[2], keep_dims=True)
            g = mb.real_div(x=centred, y=mb.sqrt(x=mb.add(x=var, y=eps)))
        else:
            g = mb.layer_norm(x=g, axes=[2], epsilon=eps)
        y = mb.add(x=mb.mul(x=mb.reshape(x=g, shape=[batch, 16, 4, 4]), y=gamma), y=beta)
        return mb.conv(x=y, weight=w, name="out")

    return prog


def cond_program():
    """Ops inside the two blocks of a `cond` (an Operation's nested blocks)."""
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4)), mb.TensorSpec(shape=(1,))], opset_version=ct.target.iOS16)
    def prog(x, p):
        pred = mb.greater(x=mb.squeeze(x=p), y=0.0)
        y = mb.cond(pred=pred, _true_fn=lambda: mb.relu(x=mb.add(x=x, y=1.0)),
                    _false_fn=lambda: mb.sigmoid(x=mb.mul(x=x, y=3.0)))
        return mb.mul(x=y, y=2.0, name="out")

    return prog


LONG_TEXT = "Stable Diffusion generates images conditioned on text and/or other images as input."


@pytest.fixture(scope="module")
def coremltools_packages(tmp_path_factory):
    d = tmp_path_factory.mktemp("coremltools")
    return {
        "decomposed": save(group_norm_program(True), d / "decomposed.mlpackage"),
        "layer_norm": save(group_norm_program(False), d / "layer_norm.mlpackage"),
        "batch2": save(group_norm_program(True, batch=2), d / "batch2.mlpackage"),
        "float32": save(group_norm_program(True), d / "float32.mlpackage", ct.precision.FLOAT32),
        "cond": save(cond_program(), d / "cond.mlpackage", ct.precision.FLOAT32),
        "described": save(group_norm_program(True), d / "described.mlpackage", short_description=LONG_TEXT),
        "described_too": save(group_norm_program(True), d / "described_too.mlpackage",
                              short_description=LONG_TEXT.replace("and/or", "or")),
    }


def test_single_package_counts_nested_blocks(sdcoreml, coremltools_packages):
    pkg = coremltools_packages["cond"]
    o = oracle(pkg)
    assert o["histogram"]["relu"] == 1 and o["histogram"]["sigmoid"] == 1  # inside cond's blocks
    doc = json.loads(check_ok(sdcoreml("inspect", pkg, "--json")).stdout)
    assert doc["op_histogram"] == dict(o["histogram"])
    assert doc["op_count"] == o["op_count"]


def test_same_package_is_same(sdcoreml, coremltools_packages, tmp_path):
    a = coremltools_packages["decomposed"]
    b = shutil.copytree(a, tmp_path / "copy.mlpackage")
    doc = compare_json(sdcoreml, a, b, 0)
    diffs, ops = check_against_oracle(doc, a, b)
    assert doc["same"] and not diffs and doc["op_count"]["difference"] == 0
    assert all(r["same"] for r in doc["contract"])
    r = check_ok(compare(sdcoreml, a, b))
    assert r.stdout.rstrip().endswith("same contract and op histogram")
    assert not any(line.startswith("*") for line in r.stdout.splitlines()), r.stdout


def test_group_norm_forms_differ_in_ops_only(sdcoreml, coremltools_packages):
    """The issue's case: the same contract, different normalization ops."""
    a, b = coremltools_packages["layer_norm"], coremltools_packages["decomposed"]
    doc = compare_json(sdcoreml, a, b, 1)
    diffs, ops = check_against_oracle(doc, a, b)
    assert diffs == {}
    for op in ("reduce_mean", "sub", "square", "sqrt", "real_div"):
        assert ops[op][0] == 0 and ops[op][1] > 0, (op, ops[op])
    assert ops["layer_norm"] == (1, 0)
    # the text marks exactly the differing op types, with B - A
    r = compare(sdcoreml, a, b)
    assert r.returncode == 1, r.stderr
    marked = {line.split()[1]: line.split()[2:] for line in r.stdout.splitlines() if line.startswith("* ")}
    want = {op: [str(x), str(y), f"{y - x:+d}"] for op, (x, y) in ops.items() if x != y}
    want["all"] = ["ops", str(doc["op_count"]["a"]), str(doc["op_count"]["b"]), f"{doc['op_count']['difference']:+d}"]
    assert marked == want, r.stdout
    assert f"different (marked *): 0 contract fields, {len(doc['op_types_differing'])} op types" in r.stdout


@pytest.mark.parametrize("other", ["batch2", "float32", "cond"])
def test_contract_differences_are_listed(sdcoreml, coremltools_packages, other):
    a, b = coremltools_packages["decomposed"], coremltools_packages[other]
    doc = compare_json(sdcoreml, a, b, 1)
    diffs, _ = check_against_oracle(doc, a, b)
    assert diffs, "the oracle sees no contract difference: the case tests nothing"
    r = compare(sdcoreml, a, b)
    marked = {line.split()[1] for line in r.stdout.splitlines() if line.startswith("* ")}
    assert set(diffs) <= marked, r.stdout


def test_long_texts_show_where_they_differ(sdcoreml, coremltools_packages):
    """Texts wider than the column are shown from a little before the first difference."""
    a, b = coremltools_packages["described"], coremltools_packages["described_too"]
    doc = compare_json(sdcoreml, a, b, 1)
    diffs, _ = check_against_oracle(doc, a, b)
    assert list(diffs) == ["metadata.short_description"]
    r = compare(sdcoreml, a, b)
    row = next(line for line in r.stdout.splitlines() if "metadata.short_description" in line)
    assert row.startswith("* ") and "text and/or other" in row and "text or other" in row, row


def test_argument_order(sdcoreml, coremltools_packages):
    """`inspect A --compare B` is `inspect --compare A B`: A is the package named first."""
    a, b = coremltools_packages["layer_norm"], coremltools_packages["decomposed"]
    one = sdcoreml("inspect", "--compare", a, b, "--json")
    two = sdcoreml("inspect", a, "--compare", b, "--json")
    assert one.returncode == two.returncode == 1
    assert one.stdout == two.stdout
    swapped = json.loads(sdcoreml("inspect", "--compare", b, a, "--json").stdout)
    assert swapped["op_histogram"]["layer_norm"] == {"a": 0, "b": 1, "difference": 1}


def test_unknown_dims_print_as_question_marks(sdcoreml, tmp_path):
    """An output sized at run time: coremltools states no shape (Core ML's "not stated"),
    printed [?]; a stated shape with an open dim (-1, written into the spec here) prints that
    dim as ?; --json keeps the spec's numbers."""
    @mb.program(input_specs=[mb.TensorSpec(shape=(2,), dtype=types.int32)], opset_version=ct.target.iOS16)
    def prog(reps):
        return mb.tile(x=np.ones((1, 1), np.float32), reps=reps)

    pkg = save(prog, tmp_path / "tile.mlpackage", ct.precision.FLOAT32)
    spec = load_spec(pkg)
    assert list(spec.description.output[0].type.multiArrayType.shape) == []  # the oracle: coremltools' own spec
    spec.description.input[0].type.multiArrayType.shape[0] = -1
    (pkg / "Data/com.apple.CoreML/model.mlmodel").write_bytes(spec.SerializeToString())
    r = check_ok(sdcoreml("inspect", pkg))
    rows = {line.split()[0]: line.split(None, 2)[2] for line in r.stdout.splitlines() if line.startswith("  ")
            and len(line.split()) >= 3 and line.split()[1] in ("INT32", "FLOAT32")}
    assert rows == {spec.description.input[0].name: "[?]", spec.description.output[0].name: "[?]"}, r.stdout
    doc = json.loads(check_ok(sdcoreml("inspect", pkg, "--json")).stdout)
    assert doc["inputs"][0]["shape"] == [-1] and doc["outputs"][0]["shape"] == [], doc


# ---------------------------------------------------------------------------------------------
# sdcoreml's packages


def test_sdcoreml_packages(sdcoreml, convert):
    """tiny-sd's UNet in two attention implementations, and its text encoder at two precisions."""
    se = convert("sd1", "--convert-unet")
    orig = convert("sd1", "--convert-unet", "--attention-implementation", "ORIGINAL")
    f32 = convert("sd1", "--compute-precision", "FLOAT32")
    unet, te = package_name("tiny-sd", "unet"), package_name("tiny-sd", "text_encoder")

    doc = compare_json(sdcoreml, se / unet, orig / unet, 1)
    diffs, ops = check_against_oracle(doc, se / unet, orig / unet)
    assert diffs == {} and ops["einsum"][0] > 0 == ops["einsum"][1], ops

    doc = compare_json(sdcoreml, se / te, f32 / te, 1)
    diffs, _ = check_against_oracle(doc, se / te, f32 / te)
    assert "weight_bytes" in diffs and diffs["weight_bytes"][1] > diffs["weight_bytes"][0], diffs

    doc = compare_json(sdcoreml, se / te, orig / te, 0)  # the text encoder has no attention option
    check_against_oracle(doc, se / te, orig / te)


# ---------------------------------------------------------------------------------------------
# Packages that cannot be read: one line naming the file, exit 2 (as diff's "trouble")


def one_error(r, names):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdcoreml: error: ") and names in lines[0], r.stderr
    return lines[0]


@pytest.mark.parametrize("which", ["a", "b"])
def test_not_a_package(sdcoreml, coremltools_packages, tmp_path, which):
    good = coremltools_packages["cond"]
    bad = tmp_path / "plain"
    bad.mkdir()
    (bad / "file.txt").write_text("not a package\n")
    args = (bad, good) if which == "a" else (good, bad)
    one_error(compare(sdcoreml, *args), str(bad))
    one_error(compare(sdcoreml, *args, "--json"), str(bad))
    one_error(compare(sdcoreml, good, tmp_path / "missing.mlpackage"), "missing.mlpackage")


def test_truncated_model(sdcoreml, coremltools_packages, tmp_path):
    good = coremltools_packages["decomposed"]
    bad = shutil.copytree(good, tmp_path / "truncated.mlpackage")
    model = next(bad.glob("Data/com.apple.CoreML/*.mlmodel"))
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    one_error(compare(sdcoreml, good, bad), str(model))


def test_blocks_nested_too_deep(sdcoreml, coremltools_packages, tmp_path):
    """Blocks nested without bound (each op's block holds one op with a block): counted to a
    fixed depth, then refused, never a stack overflow."""
    fp32 = 11

    def nested(depth):
        op = operation("relu", [("x", "x")], [named("y", fp32, [1])])
        for _ in range(depth):
            op = operation("cond", [("pred", "p")], [named("y", fp32, [1])], fld(4, fld(2, "y") + fld(3, op)))
        block = fld(2, "y") + fld(3, op)
        return fld(1, named("x", fp32, [1])) + fld(2, "CoreML6") + fld(3, fld(1, "CoreML6") + fld(2, block))

    base = coremltools_packages["cond"]
    ok = package_with(model_with_function(nested(20)), base, tmp_path / "deep20.mlpackage")
    doc = json.loads(check_ok(sdcoreml("inspect", ok, "--json")).stdout)
    assert doc["op_histogram"] == {"cond": 20, "relu": 1}
    bad = package_with(model_with_function(nested(5000)), base, tmp_path / "deep5000.mlpackage")
    line = one_error(compare(sdcoreml, ok, bad), "deep5000.mlpackage")
    assert "more than 32 deep" in line
    r = sdcoreml("inspect", bad)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "more than 32 deep" in r.stderr, r.stderr


def described_model(description):
    """A one-op program whose ModelDescription (Model field 2) is given as wire bytes."""
    fp32 = 11
    block = fld(2, "y") + fld(3, operation("relu", [("x", "x")], [named("y", fp32, [1])]))
    fn = fld(1, named("x", fp32, [1])) + fld(2, "CoreML6") + fld(3, fld(1, "CoreML6") + fld(2, block))
    return model_with_function(fn) + fld(2, description)


# ModelDescription{input = 1, metadata = 100}; Metadata{userDefined = 100: entries {key = 1, value = 2}}
NOT_UTF8 = {
    "input_name": fld(1, fld(1, b"x\xff")),
    "metadata_key": fld(100, fld(100, fld(1, b"k\xfe") + fld(2, "v"))),
    "metadata_value": fld(100, fld(100, fld(1, "k") + fld(2, b"v\xfe"))),
}


@pytest.mark.parametrize("field", list(NOT_UTF8))
def test_text_not_utf8_fails_the_document(sdcoreml, coremltools_packages, tmp_path, field):
    """Text that JSON cannot hold fails the package, never drops out of it (two contracts that
    differ only there would otherwise compare the same)."""
    base = coremltools_packages["cond"]
    ok = package_with(described_model(fld(1, fld(1, "x"))), base, tmp_path / "ok.mlpackage")
    check_ok(sdcoreml("inspect", ok, "--json"))
    bad = package_with(described_model(NOT_UTF8[field]), base, tmp_path / "bad.mlpackage")
    model = bad / "Data" / "com.apple.CoreML" / "model.mlmodel"
    r = sdcoreml("inspect", bad, "--json")
    assert r.returncode == 1 and r.stdout == "" and r.stderr.count("\n") == 1, (r.returncode, r.stderr)
    assert str(model) in r.stderr and "not UTF-8" in r.stderr, r.stderr
    assert "not UTF-8" in one_error(compare(sdcoreml, ok, bad), str(model))


def test_usage(sdcoreml, coremltools_packages):
    a = coremltools_packages["cond"]
    r = sdcoreml("inspect", "--compare", a)
    assert r.returncode == 2 and "missing PACKAGE" in r.stderr, r.stderr
    r = sdcoreml("inspect", a, "--compare", a, "--compare", a)
    assert r.returncode == 2 and "--compare is given twice" in r.stderr, r.stderr
