"""safe_npy: DexGraspNet's pickled .npy files load exactly, and never run code."""

import io
import os
import pickle
import shlex

import numpy as np
import numpy.lib.format as npy_format
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _paths import SHARED_DATA, requires_shared_data
from diffrl_jax.data.safe_npy import load_object_npy, save_object_npy
from diffrl_jax.errors import DataError, DiffrlError

try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray


def _object_array(items, shape=None):
    array = np.empty(len(items), dtype=object)
    for index, item in enumerate(items):
        array[index] = item
    return array if shape is None else array.reshape(shape)


def _write_npy(path, payload, shape=(1,), protocol=3):
    """A .npy object-array header followed by an arbitrary pickle."""
    with open(path, "wb") as fh:
        npy_format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": shape})
        pickle.dump(payload, fh, protocol=protocol)


def _write_raw_npy(path, pickle_bytes, shape=(1,)):
    with open(path, "wb") as fh:
        npy_format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": shape})
        fh.write(pickle_bytes)


def _same_content(a, b):
    """Equal values and equal types, recursively (np.float64 is not float)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same_content(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(_same_content, a, b))
    if isinstance(a, np.ndarray):
        same_items = all(map(_same_content, a.ravel().tolist(), b.ravel().tolist()))
        return a.shape == b.shape and a.dtype == b.dtype and same_items
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    return a == b or (a != a and b != b)


# --- the real files -----------------------------------------------------------------------


@requires_shared_data
@pytest.mark.parametrize("code", sorted(p.stem for p in (SHARED_DATA / "grasps").glob("*.npy")) or ["none"])
def test_real_files_load_like_np_load(code):
    path = SHARED_DATA / "grasps" / f"{code}.npy"
    ours = load_object_npy(path)
    reference = np.load(path, allow_pickle=True)  # trusted: the shared sample
    assert ours.shape == reference.shape and ours.dtype == np.dtype(object) and len(ours) > 200
    assert _same_content(ours, reference)
    assert type(ours[0]["scale"]) is np.float64 and type(ours[0]["qpos"]["WRJTx"]) is float


@requires_shared_data
def test_three_real_files():
    assert len(list((SHARED_DATA / "grasps").glob("*.npy"))) == 3


# --- malicious payloads ---------------------------------------------------------------------


class _ExecPayload:
    """Unpickling calls builtins.exec, which writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class _SystemPayload:
    """Unpickling calls os.system (posix.system), which touches a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


class _Reduce:
    """Unpickling calls `function(*args)`, then BUILDs `state` if given."""

    def __init__(self, function, args, state=None):
        self.function, self.args, self.state = function, args, state

    def __reduce__(self):
        return (self.function, self.args) if self.state is None else (self.function, self.args, self.state)


@pytest.mark.parametrize("payload_class, forbidden", [(_ExecPayload, "builtins.exec"), (_SystemPayload, "system")])
@pytest.mark.parametrize("inside_array", [True, False])
def test_code_execution_payload_is_refused_and_never_runs(tmp_path, payload_class, forbidden, inside_array):
    marker = tmp_path / "marker"
    payload = payload_class(marker)
    pickle.loads(pickle.dumps(payload))  # the payload is live: plain pickle runs it
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "evil.npy"
    _write_npy(path, _object_array([{"qpos": payload, "scale": 0.1}]) if inside_array else payload)
    with pytest.raises(DataError, match="refusing to load") as info:
        load_object_npy(path)
    assert str(path) in str(info.value) and forbidden in str(info.value)
    assert "never needs" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload, expected",
    [
        (_Reduce(np.load, ("elsewhere.npy", None, True)), "numpy.load"),
        (_Reduce(np.frombuffer, (b"\0" * 8,)), "numpy.frombuffer"),
        (_Reduce(np.ma.MaskedArray, ((1,),)), "MaskedArray"),
        (_Reduce(getattr, (np.float64(1.0), "tofile")), "builtins.getattr"),
    ],
    ids=["load", "frombuffer", "masked", "getattr"],
)
def test_non_allowlisted_globals_are_refused(tmp_path, payload, expected):
    path = tmp_path / "evil.npy"
    _write_npy(path, _object_array([payload]))
    with pytest.raises(DataError, match="refusing to load") as info:
        load_object_npy(path)
    assert expected in str(info.value)


# Allowed globals used outside the format: each must be refused by its wrapper.
_OBJECT_FIELD_STATE = (3, "|", None, ("a",), {"a": (np.dtype(object), 0)}, 8, 1, 63)


@pytest.mark.parametrize(
    "payload, expected",
    [
        # dtype.__setstate__ could give a fresh float dtype object fields at chosen offsets
        (_Reduce(np.dtype, ("f8", False, True), _OBJECT_FIELD_STATE), "structured"),
        (_Reduce(np.dtype, ([("a", "O")],)), "type code string"),
        (_Reduce(np.dtype, ("V8", False, True)), "plain numeric"),
        (_Reduce(_multiarray._reconstruct, (np.dtype, (0,), b"b")), "_reconstruct"),
        (_Reduce(_multiarray._reconstruct, (np.ndarray, (10**12,), b"b")), "_reconstruct"),
        (_Reduce(_multiarray.scalar, (np.dtype(object), [1])), "only bool and numeric"),
        (_Reduce(_multiarray.scalar, (np.dtype("f8"), b"\0" * 3)), "8 bytes"),
        (_Reduce(np.ndarray, ((1,),)), "only be passed to _reconstruct"),
    ],
    ids=["dtype-state", "dtype-struct", "dtype-void", "reconstruct-subtype", "reconstruct-shape",
         "scalar-object", "scalar-short", "ndarray-call"],
)
def test_allowed_globals_only_work_as_the_format_uses_them(tmp_path, payload, expected):
    path = tmp_path / "evil.npy"
    _write_npy(path, _object_array([payload]))
    with pytest.raises(DataError, match=expected):
        load_object_npy(path)


def test_raw_bytes_cannot_become_object_pointers(tmp_path):
    # An object array whose state carries bytes instead of a list of items.
    stub = _Reduce(_multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                   (1, (2,), np.dtype(object), False, b"\x41" * 16))
    path = tmp_path / "evil.npy"
    _write_npy(path, stub, shape=(2,))
    with pytest.raises(DataError, match="expected a list"):
        load_object_npy(path)


def test_persistent_ids_are_refused(tmp_path):
    class PersistentPickler(pickle.Pickler):
        def persistent_id(self, obj):
            return "external" if isinstance(obj, str) and obj == "secret" else None

    buffer = io.BytesIO()
    PersistentPickler(buffer, protocol=3).dump(_object_array(["secret"]))
    path = tmp_path / "persistent.npy"
    _write_raw_npy(path, buffer.getvalue())
    with pytest.raises(DataError, match="persistent id"):
        load_object_npy(path)


def test_the_pickle_must_hold_an_array(tmp_path):
    path = tmp_path / "dict.npy"
    _write_npy(path, {"qpos": {}, "scale": 0.1})
    with pytest.raises(DataError, match="does not hold a pickled numpy array"):
        load_object_npy(path)


# --- malformed files -----------------------------------------------------------------------


def _good_file(tmp_path):
    path = tmp_path / "good.npy"
    save_object_npy(path, _object_array([{"qpos": {"a": float(i)}, "scale": np.float64(0.1)} for i in range(50)]))
    return path


@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_truncated_payload(tmp_path, keep):
    data = _good_file(tmp_path).read_bytes()
    path = tmp_path / "truncated.npy"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match="corrupt or truncated") as info:
        load_object_npy(path)
    assert str(path) in str(info.value)


def test_truncated_header(tmp_path):
    path = tmp_path / "truncated.npy"
    path.write_bytes(_good_file(tmp_path).read_bytes()[:40])
    with pytest.raises(DataError, match="not a valid .npy file"):
        load_object_npy(path)


@pytest.mark.parametrize("content", [b"", b"hello, not numpy\n", b"o convex_0\nv 0 0 0\n"])
def test_non_npy_file(tmp_path, content):
    path = tmp_path / "not.npy"
    path.write_bytes(content)
    with pytest.raises(DataError, match="not a valid .npy file") as info:
        load_object_npy(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        load_object_npy(tmp_path / "absent.npy")
    assert issubclass(DataError, DiffrlError)


def test_header_and_payload_must_agree(tmp_path):
    path = tmp_path / "mismatch.npy"
    _write_npy(path, _object_array([{}, {}]), shape=(5,))
    with pytest.raises(DataError, match="header promises"):
        load_object_npy(path)


def test_wrong_number_of_dimensions(tmp_path):
    path = tmp_path / "two_d.npy"
    save_object_npy(path, _object_array([{}] * 4, shape=(2, 2)))
    with pytest.raises(DataError, match=r"shape \(2, 2\); expected 1 dimension"):
        load_object_npy(path)
    assert load_object_npy(path, ndim=None).shape == (2, 2)


def test_plain_numeric_npy_loads_without_pickle(tmp_path):
    path = tmp_path / "numbers.npy"
    values = np.arange(12.0).reshape(3, 4)
    np.save(path, values)
    loaded = load_object_npy(path)
    assert loaded.dtype == np.float64 and np.array_equal(loaded, values)


def test_structured_array_with_objects_is_refused(tmp_path):
    path = tmp_path / "structured.npy"
    array = np.zeros(2, dtype=[("x", "f8"), ("o", "O")])
    np.save(path, array, allow_pickle=True)
    with pytest.raises(DataError, match="structured array"):
        load_object_npy(path)


# --- saving and equivalence with np.load ----------------------------------------------------


def test_save_is_readable_by_np_load_and_atomic(tmp_path):
    path = tmp_path / "grasps.npy"
    records = _object_array([{"qpos": {"a": 1.5}, "scale": np.float64(0.08), "success": True}])
    save_object_npy(path, records)
    assert _same_content(np.load(path, allow_pickle=True), records)
    assert _same_content(load_object_npy(path), records)

    before = path.read_bytes()
    with pytest.raises(Exception):
        save_object_npy(path, _object_array([lambda: None]))  # lambdas do not pickle
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["grasps.npy"]


def test_fortran_and_big_endian_content(tmp_path):
    path = tmp_path / "mixed.npy"
    big_endian = _Reduce(_multiarray.scalar, (np.dtype(">f8"), np.array(2.5, dtype=">f8").tobytes()))
    items = [np.float64(1.25), big_endian, np.float32(3.5), np.int16(-7),
             np.bool_(True), np.complex64(1 - 2j), 3, "text", None, [1.0, {"k": b"bytes"}]]
    array = np.asfortranarray(_object_array(items, shape=(2, 5)))
    save_object_npy(path, array)
    assert _same_content(load_object_npy(path, ndim=None), np.load(path, allow_pickle=True))


_leaf = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**40), 2**40),
    st.booleans(),
    st.text(max_size=5),
    st.floats(width=32).map(np.float32),
    st.floats().map(np.float64),
    st.booleans().map(np.bool_),
    st.integers(-100, 100).map(np.int32),
)
_record = st.dictionaries(
    st.text(max_size=6), st.one_of(_leaf, st.dictionaries(st.text(max_size=4), _leaf, max_size=4)), max_size=5
)


@settings(max_examples=40, deadline=None)
@given(records=st.lists(_record, max_size=8), protocol=st.sampled_from([3, 4]))
def test_matches_np_load_on_random_records(tmp_path_factory, records, protocol):
    path = tmp_path_factory.mktemp("random") / "records.npy"
    _write_npy(path, _object_array(records), shape=(len(records),), protocol=protocol)
    assert _same_content(load_object_npy(path), np.load(path, allow_pickle=True))
