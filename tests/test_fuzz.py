"""Property-based fuzzing of the input readers: grasp `.npy` files, DexGraspNet datasets, OBJ meshes.

Every reader may only succeed with a valid result or raise the project's own
`DiffrlError` (a DataError, or a ConfigError for an out-of-range scale); any
other exception, a crash or a hang is a bug. Inputs are random bytes, valid
files then mutated, and hand-written pickles and OBJ text aimed at the checks.

Examples are derandomized: CI runs the same few thousand inputs every time, so
a failure reproduces on any machine and never flakes; the regressions the
fuzzing found are pinned as @example or plain tests. To explore new inputs,
set DIFFRL_FUZZ_EXPLORE=<factor>: random examples, <factor> times as many.
"""

import io
import os
import pickle
import struct

import numpy as np
import numpy.lib.format as npy_format
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from _paths import SHARED_DATA
from diffrl_jax import bounds
from diffrl_jax.data import dexgraspnet
from diffrl_jax.data.safe_npy import load_object_npy
from diffrl_jax.errors import DataError, DiffrlError
from diffrl_jax.hand import constants
from diffrl_jax.objects import assets

_EXPLORE = int(os.environ.get("DIFFRL_FUZZ_EXPLORE", "0"))


def _fuzz(examples: int):
    return settings(
        max_examples=examples * max(_EXPLORE, 1),
        derandomize=not _EXPLORE,
        database=None,
        deadline=None,  # a shared CI core stalls at random; sizes are bounded instead
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _outcome(call):
    """call() or the DiffrlError it raised; any other exception fails the test."""
    try:
        return call()
    except DiffrlError as error:
        assert str(error), "a DiffrlError must say what is wrong"
        return error


# ----------------------------------------------------------------------------
# Realistic DexGraspNet records and .npy files.

_SCALES = (0.06, 0.08, 0.10, 0.12, 0.15)


@st.composite
def _record(draw):
    """A record as DexGraspNet writes it: 28 qpos floats inside their ranges, one of its scales."""
    # One seed, not 28 drawn floats: a fifth of the cost per example (the values are not what is fuzzed).
    fractions = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).uniform(size=len(constants.QPOS_KEYS))
    qpos = dict(zip(constants.QPOS_KEYS, fractions.tolist()))
    for (low, high), key in zip(constants.JOINT_RANGES, constants.JOINT_NAMES):
        qpos[key] = float(low + (high - low) * qpos[key])
    for key in constants.WRIST_EULER_KEYS:
        qpos[key] = float(np.pi * (2.0 * qpos[key] - 1.0))
    for key in constants.WRIST_TRANSLATION_KEYS:
        qpos[key] = float(0.1 * (2.0 * qpos[key] - 1.0))
    scale = draw(st.sampled_from(_SCALES))
    return {"qpos": qpos, "scale": np.float64(scale) if draw(st.booleans()) else scale}


_RECORDS = st.lists(_record(), min_size=1, max_size=3)


def _object_array(items) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    for index, item in enumerate(items):  # a loop, so list items stay items
        array[index] = item
    return array


def _npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _header(shape, descr="|O", fortran=False) -> bytes:
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buffer.getvalue()


def _object_npy(payload: bytes, shape=(1,)) -> bytes:
    """An object-array .npy header followed by a hand-made pickle payload."""
    return _header(shape) + payload


@st.composite
def _mutated(draw, data: bytes, header_size: int = 128) -> bytes:
    """`data` after 1-4 edits: bit flips, byte sets, truncation, insertion, deletion, duplication."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "duplicate"]))
        last = max(len(data) - 1, 0)
        at = draw(st.one_of(st.integers(0, min(header_size, last)), st.integers(0, last)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif kind == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
    return bytes(data)


# ----------------------------------------------------------------------------
# 1. The safe .npy reader.


def _load_npy(workdir, data: bytes, ndim=None):
    path = workdir / "fuzz.npy"
    path.write_bytes(data)
    result = _outcome(lambda: load_object_npy(path, ndim=ndim))
    if not isinstance(result, DiffrlError):
        assert isinstance(result, np.ndarray)
        if result.dtype == object and ndim is not None:
            assert result.ndim == ndim
    return result


_NPY_MAGIC = st.sampled_from([b"", b"\x93NUMPY", b"\x93NUMPY\x01\x00", b"\x93NUMPY\x02\x00", b"\x93NUMPY\x03\x00"])


@_fuzz(400)
@given(prefix=_NPY_MAGIC, data=st.binary(max_size=400))
def test_npy_random_bytes(workdir, prefix, data):
    result = _load_npy(workdir, prefix + data)
    assert isinstance(result, (DiffrlError, np.ndarray))


@_fuzz(700)
@given(data=st.data(), records=_RECORDS, ndim=st.sampled_from([None, 1]))
def test_npy_mutated_grasp_files(workdir, data, records, ndim):
    original = _npy_bytes(_object_array(records))
    mutated = data.draw(_mutated(original))
    result = _load_npy(workdir, mutated, ndim=ndim)
    if mutated == original:
        assert not isinstance(result, DiffrlError)


_SHAPE_SIZES = st.one_of(st.integers(-3, 4), st.integers(2**31 - 2, 2**31 + 2), st.integers(2**40, 2**70))


@_fuzz(300)
@given(
    descr=st.sampled_from(["|O", "<f8", ">i4", "|b1", "<c16", "<U0", "|V0", "<U8", "|S3", "<M8[s]",
                           [("a", "|O")], [("a", "<f8"), ("b", "|O")], [("x", "<i2")]]),
    shape=st.lists(_SHAPE_SIZES, max_size=3).map(tuple),
    fortran=st.booleans(),
    body=st.sampled_from([b"", b"\0" * 64, pickle.dumps(_object_array([{"a": 1}]), protocol=3)]),
)
@example(descr="<f8", shape=(10**13,), fortran=False, body=b"\0" * 64)  # found: np.load tried to allocate 80 TB
@example(descr="<f8", shape=(10**9,), fortran=False, body=b"\0" * 64)  # 8 GB, past RAM on a small machine
@example(descr="<U0", shape=(2**64,), fortran=False, body=b"")  # found: OverflowError counting 0-byte items
def test_npy_header_edits_and_huge_shapes(workdir, descr, shape, fortran, body):
    try:
        header = _header(shape, descr, fortran)
    except ValueError:  # numpy's writer refuses the dtype; write the header text ourselves
        text = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode("latin1")
        text += b" " * (-(len(text) + 11) % 64) + b"\n"
        header = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text
    result = _load_npy(workdir, header + body)
    if not isinstance(result, DiffrlError):
        # Whatever loaded must fit in the file: a header cannot make the reader allocate.
        assert result.nbytes <= len(body)


@_fuzz(200)
@given(header_text=st.text(max_size=200), version=st.sampled_from([b"\x01\x00", b"\x02\x00"]))
@example(header_text="{'descr': '|O', 'fortran_order': False, 'shape': (1,", version=b"\x01\x00")  # TokenError
@example(header_text="-" * 5000 + "1", version=b"\x01\x00")  # found: RecursionError in Python's parser
def test_npy_free_form_headers(workdir, header_text, version):
    text = header_text.encode("latin1", "replace")
    length = struct.pack("<H" if version == b"\x01\x00" else "<I", len(text))
    result = _load_npy(workdir, b"\x93NUMPY" + version + length + text + b"\0" * 16)
    assert isinstance(result, (DiffrlError, np.ndarray))


# Python values a grasp file might hold instead of floats: huge, non-finite, wrong types, nested.
_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from([4400, 5000]).map(lambda digits: 10**digits),
    st.sampled_from([2**64, -(2**63) - 1]),
    st.floats(), st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 5e-324]),
    st.text(max_size=8), st.binary(max_size=8), st.complex_numbers(max_magnitude=1e10),
)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner, max_size=4),
                            st.frozensets(st.integers(), max_size=3)),
    max_leaves=12,
)


@_fuzz(300)
@given(value=_VALUES, inside_array=st.booleans(), protocol=st.integers(0, 5))
def test_npy_pickles_of_other_types(workdir, value, inside_array, protocol):
    try:
        payload = pickle.dumps(_object_array([value]) if inside_array else value, protocol=protocol)
    except ValueError:  # protocols 0-1 write ints as text, and str() refuses 10**4400
        assume(False)
    result = _load_npy(workdir, _object_npy(payload))
    if not inside_array:
        assert isinstance(result, DataError)  # the pickle must hold an array


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _call(callable_bytes: bytes, *args: str) -> bytes:
    """Pickle opcodes that call the global with string arguments (REDUCE)."""
    return callable_bytes + b"(" + b"".join(b"V" + arg.encode("raw_unicode_escape") + b"\n" for arg in args) + b"tR"


_FORBIDDEN = [
    ("os", "system"), ("posix", "system"), ("subprocess", "call"), ("subprocess", "Popen"),
    ("subprocess", "check_output"), ("builtins", "eval"), ("builtins", "exec"), ("builtins", "__import__"),
    ("builtins", "getattr"), ("builtins", "open"), ("__builtin__", "eval"), ("shutil", "rmtree"),
    ("pickle", "loads"), ("numpy", "load"), ("numpy.lib.npyio", "load"), ("numpy.core.multiarray", "fromfile"),
    ("numpy._core.multiarray", "_reconstruct_evil"), ("numpy", "frompyfunc"), ("runpy", "run_path"),
]


@_fuzz(300)
@given(
    target=st.one_of(st.sampled_from(_FORBIDDEN),
                     st.tuples(st.from_regex(r"[a-z_][a-z0-9_.]{0,20}", fullmatch=True),
                               st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True))),
    where=st.sampled_from(["top", "qpos value", "trailing"]),
)
def test_npy_forbidden_globals_are_refused_and_never_run(workdir, target, where):
    marker = workdir / "marker"
    command = f"open({str(marker)!r}, 'w').close()"
    args = {"system": ["touch " + str(marker)], "eval": [command], "exec": [command]}.get(target[1], [str(marker)])
    evil = _call(_global(*target), *args)
    # Protocol 3: bytes are native (protocol 2 pickles them with _codecs.encode, which is refused too).
    good = pickle.dumps(_object_array([{"qpos": {"a": 0.5}, "scale": 0.1}]), protocol=3)
    placeholder = pickle.dumps(0.5, protocol=3)[2:-1]  # BINFLOAT 0.5 as it sits inside `good`
    assert good.count(placeholder) == 1 and isinstance(_load_npy(workdir, _object_npy(good)), np.ndarray)
    payload = {"top": b"\x80\x03" + evil + b".",
               "qpos value": good.replace(placeholder, evil),
               "trailing": good[:-1] + evil + b"0."}[where]  # called, then popped: the array stays the result
    result = _load_npy(workdir, _object_npy(payload))
    assert isinstance(result, DataError)
    assert not marker.exists()


_PLACEHOLDER = 1234.5


def _with_item(value, item: bytes) -> bytes:
    """pickle of `value` (protocol 3) with the one float _PLACEHOLDER in it replaced by opcodes `item`."""
    payload = pickle.dumps(value, protocol=3)
    binfloat = b"G" + struct.pack(">d", _PLACEHOLDER)
    assert payload.count(binfloat) == 1
    return payload.replace(binfloat, item)


def _deep_pickle(kind: str, depth: int) -> bytes:
    """Opcodes of a list, dict or tuple nested `depth` deep (built without recursion)."""
    if kind == "list":
        return b"]" * depth + b"K\x00" + b"a" * depth
    if kind == "dict":
        return b"}\x8c\x01a" * depth + b"K\x00" + b"s" * depth
    return b"K\x00" + b"\x85" * depth


_DEPTHS = st.one_of(st.integers(1, 100), st.sampled_from([10**3, 10**4, 19_999, 20_001, 50_000]))


@_fuzz(100)
@given(kind=st.sampled_from(["list", "dict", "tuple"]), depth=_DEPTHS,
       where=st.sampled_from(["item", "dict value", "dict key"]))
@example(kind="tuple", depth=200_000, where="dict key")  # found: hashing the key segfaulted CPython
def test_npy_deep_nesting(workdir, kind, depth, where):
    nested = _deep_pickle(kind, depth)
    item = {"item": nested, "dict value": b"}\x8c\x04qpos" + nested + b"s",
            "dict key": b"}" + nested + b"K\x01s"}[where]
    payload = _with_item(_object_array([_PLACEHOLDER]), item)
    result = _load_npy(workdir, _object_npy(payload))
    unhashable_key = where == "dict key" and kind != "tuple"
    if unhashable_key or (kind == "tuple" and where == "dict key" and depth > 20_000):
        assert isinstance(result, DataError)


_HUGE_LENGTHS = st.sampled_from([2**31 - 1, 2**32 + 7, 2**40, 2**62])


@_fuzz(100)
@given(opcode=st.sampled_from([b"\x8e", b"\x8d", b"\x96", b"B", b"X", b"\x8a", b"\x8b", b"T"]),
       length=_HUGE_LENGTHS, tail=st.binary(max_size=16))
def test_npy_huge_declared_pickle_lengths(workdir, opcode, length, tail):
    width = {b"\x8e": "<Q", b"\x8d": "<Q", b"\x96": "<Q", b"\x8a": "<B", b"\x8b": "<i"}.get(opcode, "<I")
    size = struct.pack(width, min(length, 2 ** (8 * struct.calcsize(width) - (width == "<i")) - 1))
    result = _load_npy(workdir, _object_npy(b"\x80\x04" + opcode + size + tail))
    assert isinstance(result, DataError)


def test_real_grasp_files_load(workdir):
    files = sorted((SHARED_DATA / "grasps").glob("*.npy"))
    if not files:
        pytest.skip("../shared/data/dexgraspnet not found beside the repository")
    for path in files:
        assert load_object_npy(path).dtype == object


# ----------------------------------------------------------------------------
# 2. The DexGraspNet loader.

_CUBE = "".join(f"v {x} {y} {z}\n" for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5))


def _dataset(workdir, files: dict[str, bytes]):
    """A dataset directory holding `files` (code -> .npy bytes), each with a cube mesh."""
    root = workdir / "dataset"
    grasps = root / dexgraspnet.GRASPS_DIR
    grasps.mkdir(parents=True, exist_ok=True)
    for old in grasps.iterdir():
        old.unlink()
    for code, data in files.items():
        (grasps / f"{code}.npy").write_bytes(data)
        mesh = dexgraspnet.mesh_path(root, code)
        if not mesh.exists():
            mesh.parent.mkdir(parents=True, exist_ok=True)
            mesh.write_text("o convex_0\n" + _CUBE)
    return root


def _load_dataset(workdir, files: dict[str, bytes], skip_bad=False):
    root = _dataset(workdir, files)
    result = _outcome(lambda: dexgraspnet.load_dexgraspnet(root, skip_bad=skip_bad))
    if not isinstance(result, DiffrlError):
        assert isinstance(result, dexgraspnet.GraspDataset) and len(result) > 0
        assert np.isfinite(result.grasps).all() and np.isfinite(result.scales).all()
        assert (result.scales > 0).all()
        assert all(isinstance(name, str) for name in result.extras)
    return result


_BAD_VALUES = st.one_of(
    _VALUES, st.sampled_from([float("nan"), float("inf"), -1.0, 0.0, 1e308, -1e308, 1e6, 2**64]),
    st.builds(pow, st.just(10), st.integers(300, 5000)),
    st.floats(), st.lists(st.floats(), max_size=30), st.just(np.float64("nan")),
)


@st.composite
def _broken_records(draw):
    """Realistic records with a few things wrong: types, keys, values, extras."""
    records = draw(_RECORDS)
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, len(records) - 1))
        record = records[index]
        edit = draw(st.sampled_from(["qpos value", "drop qpos key", "scale", "drop key", "extra key",
                                     "qpos type", "record type", "extra qpos key"]))
        if edit == "qpos value" and isinstance(record, dict) and isinstance(record.get("qpos"), dict):
            record["qpos"][draw(st.sampled_from(constants.QPOS_KEYS))] = draw(_BAD_VALUES)
        elif edit == "drop qpos key" and isinstance(record, dict) and isinstance(record.get("qpos"), dict):
            record["qpos"].pop(draw(st.sampled_from(constants.QPOS_KEYS)), None)
        elif edit == "scale" and isinstance(record, dict):
            record["scale"] = draw(_BAD_VALUES)
        elif edit == "drop key" and isinstance(record, dict):
            record.pop(draw(st.sampled_from(dexgraspnet.RECORD_KEYS)), None)
        elif edit == "extra key" and isinstance(record, dict):
            record[draw(st.one_of(st.text(max_size=8), st.integers(), st.none()))] = draw(_BAD_VALUES)
        elif edit == "qpos type" and isinstance(record, dict):
            record["qpos"] = draw(_VALUES)
        elif edit == "record type":
            records[index] = draw(_VALUES)
        elif edit == "extra qpos key" and isinstance(record, dict) and isinstance(record.get("qpos"), dict):
            record["qpos"][draw(st.one_of(st.text(max_size=8), st.integers()))] = draw(_BAD_VALUES)
    return records


@_fuzz(900)
@given(records=_broken_records(), skip_bad=st.booleans())
@example(records=[{"qpos": {"robot0:FFJ3": [10**5000]}, "scale": 0.1}], skip_bad=False)  # found: ValueError
@example(records=[{"qpos": {}, "scale": 0.1, 10**5000: 1.0}], skip_bad=False)  # found: str(int) ValueError
@example(records=[{"qpos": {}, 10**5000: 1.0}], skip_bad=False)  # found: the missing-key message's str()
def test_dexgraspnet_broken_records(workdir, records, skip_bad):
    try:
        data = _npy_bytes(_object_array(records))
    except (TypeError, pickle.PicklingError, ValueError):  # e.g. frozensets of unhashable values
        return
    _load_dataset(workdir, {"broken": data}, skip_bad=skip_bad)


@_fuzz(300)
@given(records=_RECORDS, extras=st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), _BAD_VALUES,
                                                 max_size=3))
def test_dexgraspnet_extra_keys(workdir, records, extras):
    for record in records:
        record.update(extras)
    result = _load_dataset(workdir, {"extras": _npy_bytes(_object_array(records))})
    if not any(isinstance(name, str) and name in dexgraspnet.RECORD_KEYS for name in extras):
        # Extras never spoil a file, but Python complex numbers pickle as builtins.complex, which is refused.
        assert not isinstance(result, DiffrlError) or "builtins.complex" in str(result)


_ARRAYS = st.one_of(
    st.just(np.empty(0, dtype=object)),
    st.tuples(st.integers(0, 3), st.integers(0, 30)).map(lambda shape: np.zeros(shape)),
    _RECORDS.map(lambda records: _object_array(records).reshape(len(records), 1)),
    _RECORDS.map(lambda records: np.array([_object_array(records)] * 2, dtype=object)),
    _RECORDS.map(lambda records: _object_array([{"qpos": np.array(list(r["qpos"].values())), "scale": r["scale"]}
                                                for r in records])),
    _RECORDS.map(lambda records: _object_array([[r] for r in records])),
    st.lists(st.floats(), max_size=5).map(np.array),
    st.just(np.array(["qpos", "scale"])),
)


@_fuzz(200)
@given(array=_ARRAYS)
def test_dexgraspnet_wrong_arrays(workdir, array):
    result = _load_dataset(workdir, {"array": _npy_bytes(array)})
    assert isinstance(result, DataError)


@_fuzz(500)
@given(data=st.data(), records=_RECORDS, skip_bad=st.booleans())
def test_dexgraspnet_mutated_files(workdir, data, records, skip_bad):
    good = _npy_bytes(_object_array(records))
    _load_dataset(workdir, {"good": good, "mutated": data.draw(_mutated(good))}, skip_bad=skip_bad)


@_fuzz(100)
@given(kind=st.sampled_from(["list", "dict", "tuple"]), depth=_DEPTHS, where=st.sampled_from(["value", "scale"]))
@example(kind="list", depth=10**4, where="value")  # found: RecursionError in the message's repr
@example(kind="dict", depth=10**4, where="scale")  # found: RecursionError in the message's repr
def test_dexgraspnet_deep_nesting(workdir, kind, depth, where):
    qpos = {key: 0.1 for key in constants.QPOS_KEYS}
    if where == "value":
        qpos["robot0:FFJ3"] = _PLACEHOLDER
    record = {"qpos": qpos, "scale": _PLACEHOLDER if where == "scale" else 0.1}
    payload = _with_item(_object_array([record]), _deep_pickle(kind, depth))
    result = _load_dataset(workdir, {"deep": _object_npy(payload)})
    assert isinstance(result, DataError)


# ----------------------------------------------------------------------------
# 3. The OBJ reader.


def _mesh_text() -> str:
    """The shared mug's first three CoACD pieces (faces included) if present, else two cubes as CoACD writes them."""
    path = SHARED_DATA / "meshdata" / "core-mug-8570d9a8d24cb0acbebd3c0c0c70fb03" / "coacd" / "decomposed.obj"
    if path.is_file():  # the whole file costs 3x as much per example and fuzzes nothing more
        return "o convex_".join(path.read_text().split("o convex_")[:4])
    shifted = "".join(f"v {x + 1.0} {y} {z}\n" for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5))
    return "o convex_0\n" + _CUBE + "f 1 2 3\nf 2 3 4\no convex_1\n" + shifted + "f 9 10 11\n"


_MESH = _mesh_text()
_MESH_LINES = _MESH.splitlines(keepends=True)


def _read_obj(workdir, data: bytes, scale=0.1, max_hull_vertices=assets.DEFAULT_MAX_HULL_VERTICES):
    path = workdir / "fuzz.obj"
    path.write_bytes(data)
    pieces = _outcome(lambda: assets.read_obj_pieces(path))
    if not isinstance(pieces, DiffrlError):
        assert pieces and all(p.ndim == 2 and p.shape[1] == 3 and np.isfinite(p).all() for p in pieces)
    result = _outcome(lambda: assets.mesh_object(path, scale, max_hull_vertices=max_hull_vertices))
    if not isinstance(result, DiffrlError):
        assert not isinstance(pieces, DiffrlError), "mesh_object accepted a file read_obj_pieces refuses"
        assert len(result.pieces) == len(pieces)
        for piece in result.pieces:
            assert np.isfinite(piece.vertices).all() and len(piece.vertices) >= 4
            assert max_hull_vertices is None or len(piece.vertices) <= max_hull_vertices
            assert piece.volume() > 0
    return result


_COORDINATES = st.one_of(
    st.floats(-2, 2).map(repr), st.floats().map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-0", "1_0", "0x10", "", "1,5", "١٢", "1e-320", "+.5", "e"]),
)
_OBJ_LINES = st.one_of(
    st.tuples(_COORDINATES, _COORDINATES, _COORDINATES).map(lambda xyz: "v " + " ".join(xyz)),
    st.lists(_COORDINATES, max_size=5).map(lambda xs: "v " + " ".join(xs)),
    st.text(max_size=10).map(lambda name: "o " + name),
    st.lists(st.integers(-10, 10**6).map(str), max_size=5).map(lambda ids: "f " + " ".join(ids)),
    st.sampled_from(["#", "", "v", "o", "vn 0 0 1", "vt 0 0", "s off", "g group", "mtllib x.mtl", "\t v 1 2 3"]),
    st.text(max_size=20),
)


@_fuzz(400)
@given(data=st.binary(max_size=300))
def test_obj_random_bytes(workdir, data):
    _read_obj(workdir, data)


@_fuzz(700)
@given(lines=st.lists(_OBJ_LINES, max_size=30), newline=st.sampled_from(["\n", "\r\n", "\r"]))
def test_obj_random_lines(workdir, lines, newline):
    _read_obj(workdir, newline.join(lines).encode("utf-8", "surrogatepass"))


@st.composite
def _mutated_mesh(draw) -> bytes:
    """The valid mesh after line edits: bad coordinates, bad faces, empty or duplicated pieces."""
    lines = list(_MESH_LINES)
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(lines) - 1))
        edit = draw(st.sampled_from(["coordinate", "delete", "duplicate", "empty piece", "split piece", "face",
                                     "random line"]))
        if edit == "coordinate" and lines[at].startswith("v "):
            parts = lines[at].split()
            parts[draw(st.integers(1, 3))] = draw(_COORDINATES)
            lines[at] = " ".join(parts) + "\n"
        elif edit == "delete":
            del lines[at:at + draw(st.integers(1, 50))]
        elif edit == "duplicate":
            lines[at:at] = lines[at:at + draw(st.integers(1, 50))]
        elif edit == "empty piece":
            lines.insert(at, "o empty\n")
        elif edit == "split piece":
            lines.insert(at, f"o convex_{at}\n")
        elif edit == "face":
            lines.insert(at, "f " + " ".join(map(str, draw(st.lists(st.integers(-5, 10**6), max_size=4)))) + "\n")
        elif edit == "random line":
            lines.insert(at, draw(_OBJ_LINES) + "\n")
        if not lines:
            break
    data = "".join(lines).encode()
    if draw(st.booleans()):
        data = draw(_mutated(data, header_size=len(data)))
    return data


@_fuzz(500)
@given(data=_mutated_mesh(), scale=st.sampled_from(_SCALES), capped=st.booleans())
def test_obj_mutated_mesh(workdir, data, scale, capped):
    _read_obj(workdir, data, scale=scale, max_hull_vertices=assets.DEFAULT_MAX_HULL_VERTICES if capped else None)


_DEGENERATE = st.sampled_from(["point", "line", "plane", "duplicates", "tiny", "huge", "few", "cube"])


def _piece(kind: str, rng: np.random.Generator, count: int, offset: float) -> np.ndarray:
    if kind == "few":
        return rng.normal(size=(min(count, 3), 3))
    points = rng.uniform(-0.5, 0.5, size=(max(count, 4), 3))
    if kind == "point":
        points[:] = points[0]
    elif kind == "line":
        points = np.outer(points[:, 0], rng.normal(size=3))
    elif kind == "plane":
        points[:, 2] = 0.0
    elif kind == "duplicates":
        points = np.repeat(points[:2], len(points) // 2 + 1, axis=0)
    elif kind == "tiny":
        points *= 1e-12
    elif kind == "huge":
        points *= 1e200
    return points + offset


@_fuzz(400)
@given(kinds=st.lists(_DEGENERATE, min_size=1, max_size=4), seed=st.integers(0, 2**32 - 1),
       count=st.integers(1, 60), offset=st.sampled_from([0.0, 1.0, 1e6, 1e300]), scale=st.sampled_from(_SCALES))
@example(kinds=["few"], seed=0, count=3, offset=0.0, scale=0.1)  # found: QhullError (needs 4 points)
@example(kinds=["cube", "plane"], seed=0, count=8, offset=0.0, scale=0.1)  # found: accepted, MuJoCo refuses
@example(kinds=["cube", "line"], seed=0, count=8, offset=0.0, scale=0.1)  # found: accepted, MuJoCo refuses
def test_obj_degenerate_pieces(workdir, kinds, seed, count, offset, scale):
    rng = np.random.default_rng(seed)
    pieces = [_piece(kind, rng, count, offset) for kind in kinds]
    text = "".join(f"o convex_{index}\n" + "".join(f"v {x!r} {y!r} {z!r}\n" for x, y, z in points)
                   for index, points in enumerate(pieces))
    result = _read_obj(workdir, text.encode(), scale=scale)
    if any(kind in ("point", "line", "plane", "duplicates", "few") for kind in kinds) or offset == 1e300:
        assert isinstance(result, DiffrlError)


@_fuzz(15)
@given(count=st.integers(1000, 20_000), pieces=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_obj_many_vertices(workdir, count, pieces, seed):
    rng = np.random.default_rng(seed)
    text = "".join(f"o convex_{index}\n" + "".join(f"v {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in
                                                    rng.normal(size=(count, 3)) * 0.3) for index in range(pieces))
    result = _read_obj(workdir, text.encode())
    assert not isinstance(result, DiffrlError)


def test_obj_past_the_vertex_bound_is_refused(workdir):
    high = bounds.BOUNDS.piece_vertices[1]
    text = "o convex_0\n" + "v 0.1 0.2 0.3\nv -0.2 0.1 0.3\nv 0.3 -0.1 -0.2\nv 0 0 0.1\n" * (high // 4 + 1)
    assert isinstance(_read_obj(workdir, text.encode()), DataError)
