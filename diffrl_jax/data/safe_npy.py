"""Load and save numpy object arrays (DexGraspNet grasp files) without running code.

A DexGraspNet grasp file is a `.npy` whose payload is a pickle of an object
array of dicts, and `np.load(allow_pickle=True)` would run whatever callable
the pickle names. `load_object_npy` unpickles with an allow-list of exactly
what numpy's own pickles of such arrays reference:

    numpy.core.multiarray._reconstruct   (numpy 2: numpy._core.multiarray)
    numpy.ndarray                        (only as _reconstruct's subtype)
    numpy.dtype                          (plain bool/int/float/complex/object)
    numpy.core.multiarray.scalar         (bool/int/float/complex scalars)

Even these are not handed out raw: `dtype.__setstate__` could turn a fresh
dtype into a structured one with object fields at attacker-chosen offsets,
and an array built on it would read raw bytes as object pointers. So the
allowed globals return small stand-ins that record their arguments and
state, validate them, and build the real numpy objects from scratch.
"""

import io
import math
import os
import pickle
import pickletools
import tokenize
from pathlib import Path

import numpy as np
import numpy.lib.format as npy_format

from diffrl_jax.errors import DataError
from diffrl_jax.files import atomic_path

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray

_MULTIARRAY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
# Kinds of dtype an object array of dicts may need: bool, ints, floats, complex, object.
_NUMERIC_KINDS = "biufc"
_MAX_HEADER_SIZE = 10_000
# Hashing a tuple (a dict key, a set member) recurses in C with no depth check: on
# CPython 3.11 a dict key nested ~120,000 tuples deep (one opcode byte per level)
# segfaults. Deeper nesting than this is refused; real grasp files nest 3 deep.
_MAX_TUPLE_DEPTH = 20_000
_TUPLE_OPCODES = (pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3)
_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GETS = {"GET", "BINGET", "LONG_BINGET"}


class _Refused(Exception):
    """Raised inside the unpickler; turned into a DataError naming the file."""


class _NdarrayType:
    """Stands in for `numpy.ndarray`, which the format only passes to `_reconstruct`."""

    def __repr__(self):
        return "numpy.ndarray"

    def __call__(self, *args, **kwargs):
        raise _Refused("the file calls numpy.ndarray, which may only be passed to _reconstruct")


_NDARRAY = _NdarrayType()


class _DtypeStub:
    """What the pickle's `numpy.dtype(spec, align, copy)` call returns.

    BUILD then calls `__setstate__` with numpy's dtype state; we only accept
    the state of a plain (non-structured, non-subarray) dtype and keep its
    byte order.
    """

    __slots__ = ("spec", "byteorder", "_state_set", "_dtype")

    def __init__(self, spec, align=False, copy=False):
        if not isinstance(spec, str) or not isinstance(align, bool) or not isinstance(copy, bool):
            raise _Refused(f"numpy.dtype called with {spec!r}, {align!r}, {copy!r}; expected a type code string")
        try:
            dtype = np.dtype(spec)
        except TypeError as error:
            raise _Refused(f"numpy.dtype({spec!r}) is not a valid dtype: {error}") from None
        if dtype.kind not in _NUMERIC_KINDS + "O" or dtype.fields is not None or dtype.subdtype is not None:
            raise _Refused(f"numpy.dtype({spec!r}) is not a plain numeric, bool or object dtype")
        self.spec = spec
        self.byteorder = "="
        self._state_set = False
        self._dtype = None

    def __repr__(self):
        return f"numpy.dtype({self.spec!r})"

    def __setstate__(self, state):
        if self._state_set or self._dtype is not None:
            raise _Refused("a dtype's state is set after the dtype was set up or used")
        self._state_set = True
        if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
            raise _Refused(f"unexpected dtype state {state!r:.200}")
        byteorder, subarray, names, fields = state[1:5]
        if byteorder not in ("<", ">", "|", "=") or subarray is not None or names is not None or fields is not None:
            raise _Refused(f"dtype state {state!r:.200} describes a structured or subarray dtype")
        if len(state) == 9 and state[8]:
            raise _Refused(f"dtype state {state!r:.200} carries metadata")
        self.byteorder = byteorder

    def dtype(self) -> np.dtype:
        if self._dtype is None:
            dtype = np.dtype(self.spec)
            if self.byteorder in "<>" and dtype.kind in _NUMERIC_KINDS and dtype.itemsize > 1:
                dtype = dtype.newbyteorder(self.byteorder)
            self._dtype = dtype
        return self._dtype


def _dtype_of(value, what: str) -> np.dtype:
    if not isinstance(value, _DtypeStub):
        raise _Refused(f"{what} got {type(value).__name__}, expected a dtype from the same file")
    return value.dtype()


class _ArrayStub:
    """What `_reconstruct(ndarray, (0,), b'b')` returns; BUILD fills it in.

    `__setstate__` receives numpy's array state (version, shape, dtype,
    fortran, data) and builds a real array with a dtype we made ourselves.
    """

    __slots__ = ("array",)

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        if self.array is not None:
            raise _Refused("an array's state is set twice")
        if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
            raise _Refused(f"unexpected array state {state!r:.200}")
        _, shape, dtype_stub, fortran_order, data = state
        dtype = _dtype_of(dtype_stub, "an array's state")
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
            raise _Refused(f"array shape {shape!r:.100} is not a tuple of sizes")
        if not isinstance(fortran_order, bool):
            raise _Refused(f"array fortran flag {fortran_order!r:.100} is not a bool")
        size = int(np.prod(shape, dtype=np.int64))
        if dtype.kind == "O":
            if not isinstance(data, list) or len(data) != size:
                raise _Refused(f"object array data is {type(data).__name__}, expected a list of {size} items")
            array = np.empty(size, dtype=object)
            for index, item in enumerate(data):  # a loop, so list items stay items
                array[index] = item
            # numpy pickles object items in C order whatever the memory layout.
            self.array = array.reshape(shape)
        else:
            if not isinstance(data, bytes) or len(data) != size * dtype.itemsize:
                raise _Refused(f"numeric array data is not {size * dtype.itemsize} bytes")
            array = np.frombuffer(data, dtype=dtype).copy()
            self.array = array.reshape(shape, order="F" if fortran_order else "C")


def _reconstruct(subtype, shape, code):
    if subtype is not _NDARRAY or type(shape) is not tuple or shape != (0,) or code not in (b"b", "b"):
        raise _Refused(
            f"numpy _reconstruct called as ({subtype!r:.60}, {shape!r:.60}, {code!r:.60}); "
            "numpy only writes _reconstruct(ndarray, (0,), b'b')"
        )
    return _ArrayStub()


def _scalar(dtype_stub, data=None):
    dtype = _dtype_of(dtype_stub, "numpy scalar")
    if dtype.kind not in _NUMERIC_KINDS:
        raise _Refused(f"numpy scalar of dtype {dtype} (only bool and numeric scalars are allowed)")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise _Refused(
            f"numpy scalar of dtype {dtype} with {type(data).__name__} data, expected {dtype.itemsize} bytes"
        )
    return _multiarray.scalar(dtype, data)


_ALLOWED = {
    **{(module, "_reconstruct"): _reconstruct for module in _MULTIARRAY_MODULES},
    **{(module, "scalar"): _scalar for module in _MULTIARRAY_MODULES},
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DtypeStub,
}


class _AllowListUnpickler(pickle.Unpickler):
    """C unpickler whose globals come only from `_ALLOWED`."""

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(
                f"the file references {module}.{name}, which a DexGraspNet grasp file never needs"
            ) from None

    def persistent_load(self, pid):
        raise _Refused(f"the file needs persistent id {pid!r:.60}, which a DexGraspNet grasp file never uses")


def _deepest_tuple(payload: bytes) -> int:
    """How deep the pickle nests tuples, from its opcodes' stack and memo effects (builds nothing)."""
    stack, marks, memo, deepest = [], [], {}, 0  # stack and memo hold tuple depths (0: not a tuple)
    for opcode, arg, _ in pickletools.genops(payload):
        name = opcode.name
        if name == "MARK":
            marks.append(len(stack))
        elif name in _MEMO_GETS:
            stack.append(memo.get(arg, 0))
        elif name in _MEMO_PUTS or name == "MEMOIZE":
            memo[arg if name in _MEMO_PUTS else len(memo)] = stack[-1] if stack else 0
        elif name == "DUP":
            stack.append(stack[-1] if stack else 0)
        else:
            before = opcode.stack_before
            popped = []
            if pickletools.markobject in before:
                start = marks.pop() if marks else 0
                popped, stack[start:] = stack[start:], []
                before = before[: before.index(pickletools.markobject)]
            for _ in before:
                popped.append(stack.pop() if stack else 0)
            if name.startswith("TUPLE") or name == "EMPTY_TUPLE":
                stack.append(1 + max(popped, default=0))
                deepest = max(deepest, stack[-1])
            else:
                stack.extend(0 for _ in opcode.stack_after)
    return deepest


def _check_tuple_depth(payload: bytes, path: Path) -> None:
    # One opcode byte per level: a payload with few tuple-opcode bytes (any real
    # grasp file: ~6,000 in 250 records) cannot nest deeper, and skips the scan.
    if sum(payload.count(opcode) for opcode in _TUPLE_OPCODES) <= _MAX_TUPLE_DEPTH:
        return
    try:
        depth = _deepest_tuple(payload)
    except ValueError as error:  # an unknown opcode or a truncated argument
        raise DataError(f"{path} is corrupt or truncated: its pickled payload does not parse ({error})") from None
    if depth > _MAX_TUPLE_DEPTH:
        raise DataError(
            f"refusing to load {path}: its pickle nests tuples {depth} deep (at most {_MAX_TUPLE_DEPTH}; "
            "hashing deeper ones would crash Python)"
        )


def _unpickle_array(payload: bytes, path: Path) -> np.ndarray:
    _check_tuple_depth(payload, path)
    # BufferedReader has peek(), which lets the C unpickler read in blocks:
    # a bare BytesIO costs a Python call per opcode, 3x slower.
    stream = io.BufferedReader(io.BytesIO(payload))
    unpickler = _AllowListUnpickler(stream, encoding="ASCII", fix_imports=False)
    try:
        result = unpickler.load()
    except _Refused as error:
        raise DataError(f"refusing to load {path}: {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, UnicodeDecodeError, RecursionError, MemoryError, OverflowError) as error:
        raise DataError(
            f"{path} is corrupt or truncated: its pickled payload does not load "
            f"({type(error).__name__}: {error})"
        ) from None
    if not isinstance(result, _ArrayStub) or result.array is None:
        raise DataError(f"{path} does not hold a pickled numpy array (got {type(result).__name__})")
    return result.array


def _read_header(fh, path: Path):
    try:
        version = npy_format.read_magic(fh)
        if version == (1, 0):
            return npy_format.read_array_header_1_0(fh, max_header_size=_MAX_HEADER_SIZE)
        if version == (2, 0):
            return npy_format.read_array_header_2_0(fh, max_header_size=_MAX_HEADER_SIZE)
    # numpy parses the header text with ast.literal_eval, and for a header it
    # cannot parse, tokenizes it again: "(((" raises TokenError, "----1" and
    # "1+1+...+1" RecursionError in the parser (numpy 2.4, Python 3.11).
    except (ValueError, SyntaxError, tokenize.TokenError, RecursionError, MemoryError) as error:
        raise DataError(f"{path} is not a valid .npy file: {type(error).__name__}: {error}") from None
    raise DataError(f"{path} has .npy format version {version}; only 1.0 and 2.0 are supported")


def _check_data_size(fh, path: Path, shape, dtype: np.dtype) -> None:
    """DataError unless the file holds the data its header promises: np.load allocates it before reading."""
    if any(n < 0 for n in shape):
        raise DataError(f"{path} is not a valid .npy file: its header declares shape {shape}, with a negative size")
    if math.prod(shape) > np.iinfo(np.intp).max:  # even of 0-byte items: numpy cannot count them
        raise DataError(f"{path} is not a valid .npy file: its header declares shape {shape}, too many items")
    promised = math.prod(shape) * dtype.itemsize  # Python ints: a huge shape cannot overflow
    held = os.fstat(fh.fileno()).st_size - fh.tell()
    if held < promised:
        raise DataError(
            f"{path} is corrupt or truncated: its header promises {promised} bytes of {dtype} data "
            f"(shape {shape}), the file holds {held}"
        )


def load_object_npy(path, *, ndim: int | None = 1) -> np.ndarray:
    """Load a `.npy` object array (e.g. DexGraspNet's [N] dicts) without executing code.

    A plain numeric `.npy` is returned as `np.load(path, allow_pickle=False)`
    gives it; callers that need objects must check `dtype`. `ndim`, when not
    None, is the number of dimensions an object array must have. Raises
    DataError for unreadable, truncated, corrupt or disallowed files.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            shape, _, dtype = _read_header(fh, path)
            if not dtype.hasobject:
                _check_data_size(fh, path, shape, dtype)
                fh.seek(0)
                try:
                    return np.load(fh, allow_pickle=False)
                except (ValueError, EOFError) as error:
                    raise DataError(f"{path} is corrupt or truncated: {error}") from None
            payload = fh.read()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    if dtype != np.dtype(object):
        raise DataError(f"{path} holds a structured array of dtype {dtype}; expected a plain object array")
    if ndim is not None and len(shape) != ndim:
        raise DataError(f"{path} holds an object array of shape {shape}; expected {ndim} dimension(s)")
    array = _unpickle_array(payload, path)
    if array.dtype != np.dtype(object) or array.shape != shape:
        raise DataError(
            f"{path} is corrupt: its header promises an object array of shape {shape}, "
            f"its payload holds dtype {array.dtype} with shape {array.shape}"
        )
    return array


def save_object_npy(path, array) -> None:
    """Write `array` to `path` as `.npy` atomically (temp file, then os.replace).

    Object arrays are pickled as `np.save` does, so plain
    `np.load(path, allow_pickle=True)` reads them back. A failure leaves any
    previous file at `path` untouched and no temp file behind.
    """
    array = np.asanyarray(array)
    with atomic_path(path, ".npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=True)
