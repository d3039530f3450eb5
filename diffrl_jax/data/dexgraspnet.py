"""Read and write DexGraspNet datasets as canonical grasp arrays.

Layout (the sample in `../shared/data/dexgraspnet` and the full release alike):

    root/grasps/<code>.npy                       [N] dicts {"qpos": {28 floats}, "scale": float}
    root/meshdata/<code>/coacd/decomposed.obj    convex pieces, normalised units

Grasp files are unpickled by `safe_npy.load_object_npy`, which never runs code
from the file. Every record is validated (types, finite values, and the sane
ranges of `bounds.PhysicalBounds`: scale, palm distance, joints, Euler angles);
a bad file either stops loading with a message naming it or, with
`skip_bad=True`, is skipped and reported in `GraspDataset.skipped`.
"""

import dataclasses
import operator
import os
import reprlib
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from diffrl_jax import bounds
from diffrl_jax.data import grasps as grasp_arrays
from diffrl_jax.data.safe_npy import load_object_npy, save_object_npy
from diffrl_jax.errors import DataError
from diffrl_jax.files import is_storage_error, storage_error
from diffrl_jax.hand import constants

GRASPS_DIR = "grasps"
MESHDATA_DIR = "meshdata"
RECORD_KEYS = ("qpos", "scale")
_MAX_LISTED = 20  # bad files / unknown codes spelled out in one message

# Columns of the [N, 28] qpos matrix (constants.QPOS_KEYS order) per part.
_QPOS_COLUMNS = {key: column for column, key in enumerate(constants.QPOS_KEYS)}
_JOINT_COLUMNS = [_QPOS_COLUMNS[key] for key in constants.JOINT_NAMES]
_EULER_COLUMNS = [_QPOS_COLUMNS[key] for key in constants.WRIST_EULER_KEYS]
_TRANSLATION_COLUMNS = [_QPOS_COLUMNS[key] for key in constants.WRIST_TRANSLATION_KEYS]
_get_qpos_row = operator.itemgetter(*constants.QPOS_KEYS)
_QPOS_KEY_TEXT = [f"qpos[{key!r}]" for key in constants.QPOS_KEYS]


def _qpos_ranges():
    """Per qpos column: (low, high, text) of a sane value, from `bounds.BOUNDS`.

    Joints may leave their limits by the margin, Euler angles by a few turns;
    translations are bounded by their norm instead (infinite here).
    """
    low = np.full(len(constants.QPOS_KEYS), -np.inf)
    high = np.full(len(constants.QPOS_KEYS), np.inf)
    text = [""] * len(constants.QPOS_KEYS)
    joint_ranges = bounds.BOUNDS.joint_ranges()
    for column, (joint_low, joint_high) in zip(_JOINT_COLUMNS, joint_ranges):
        low[column], high[column] = joint_low, joint_high
        text[column] = f"[{joint_low:g}, {joint_high:g}] (joint limits +- PhysicalBounds.joint_margin_rad)"
    for column in _EULER_COLUMNS:
        low[column], high[column] = bounds.BOUNDS.euler_rad
        text[column] = bounds.range_text("euler_rad")
    return low, high, text


_QPOS_LOW, _QPOS_HIGH, _QPOS_RANGE_TEXT = _qpos_ranges()


def mesh_path(root, code: str) -> Path:
    """root/meshdata/<code>/coacd/decomposed.obj."""
    return Path(root) / MESHDATA_DIR / code / "coacd" / "decomposed.obj"


def write_mesh(root, code: str, text: str) -> Path:
    """Writes an object's OBJ text (its convex pieces) to `mesh_path(root, code)`, atomically."""
    from diffrl_jax.files import write_text_atomic

    mesh = mesh_path(root, code)
    mesh.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(mesh, text)
    return mesh


@dataclasses.dataclass(frozen=True, eq=False)
class GraspDataset:
    """Grasps of one or more objects, grouped by object.

    grasps:       [N, 31] float64 canonical grasps in the object frame
                  (translation 3, rot6d 6, joints 22); cast to float32 for JAX.
    scales:       [N] float64 object scale of each grasp (mesh units -> metres).
    object_index: [N] int32 index into `object_codes`.
    object_codes: object codes, sorted.
    root:         dataset directory the meshes live under, or None.
    extras:       name -> [N] per-record labels stored beside qpos/scale
                  (e.g. "success"), present only if every record had them.
    skipped:      (code, reason) of files that `skip_bad=True` passed over.
    """

    grasps: np.ndarray
    scales: np.ndarray
    object_index: np.ndarray
    object_codes: tuple[str, ...]
    root: Path | None = None
    extras: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    skipped: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        normalised = {
            "grasps": np.asarray(self.grasps, dtype=np.float64),
            "scales": np.asarray(self.scales, dtype=np.float64),
            "object_index": np.asarray(self.object_index, dtype=np.int32),
            "object_codes": tuple(self.object_codes),
            "root": None if self.root is None else Path(self.root),
            "extras": {name: np.asarray(values) for name, values in self.extras.items()},
            "skipped": tuple((str(code), str(reason)) for code, reason in self.skipped),
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)  # frozen: only __post_init__ may normalise
        n = len(self.grasps)
        if self.grasps.shape != (n, grasp_arrays.GRASP_DIM):
            raise ValueError(f"grasps has shape {self.grasps.shape}, expected [N, {grasp_arrays.GRASP_DIM}]")
        for name, values in (("scales", self.scales), ("object_index", self.object_index),
                             *((f"extras[{k!r}]", v) for k, v in self.extras.items())):
            if values.shape != (n,):
                raise ValueError(f"{name} has shape {values.shape}, expected ({n},) like grasps")
        if n and (self.object_index.min() < 0 or self.object_index.max() >= len(self.object_codes)):
            raise ValueError(f"object_index must lie in [0, {len(self.object_codes)})")

    def __len__(self) -> int:
        return len(self.grasps)

    def take(self, rows) -> "GraspDataset":
        """The grasps at `rows` (indices or a boolean mask), same objects and labels."""
        return dataclasses.replace(
            self, grasps=self.grasps[rows], scales=self.scales[rows],
            object_index=self.object_index[rows],
            extras={name: values[rows] for name, values in self.extras.items()})

    def first_per_object(self, limit: int | None) -> "GraspDataset":
        """The first `limit` grasps of each object (all of them for None)."""
        if limit is None:
            return self
        rows = np.concatenate([np.flatnonzero(self.object_index == k)[:limit]
                               for k in range(len(self.object_codes))] or [np.zeros(0, np.int64)])
        return self.take(rows)

    def select(self, codes: Sequence[str]) -> "GraspDataset":
        """The grasps of `codes` only (kept in this dataset's order)."""
        codes = [codes] if isinstance(codes, str) else list(codes)
        _check_known(codes, self.object_codes, where="this dataset")
        wanted = set(codes)
        kept = [index for index, code in enumerate(self.object_codes) if code in wanted]
        new_index = np.full(len(self.object_codes), -1, dtype=np.int32)
        new_index[kept] = np.arange(len(kept), dtype=np.int32)
        mask = new_index[self.object_index] >= 0
        return dataclasses.replace(
            self.take(mask),
            object_index=new_index[self.object_index[mask]],
            object_codes=tuple(self.object_codes[index] for index in kept),
        )

    def for_object(self, code: str) -> "GraspDataset":
        """The grasps of one object."""
        return self.select([code])

    def mesh_path(self, code: str) -> Path:
        """root/meshdata/<code>/coacd/decomposed.obj (the CoACD convex pieces)."""
        if self.root is None:
            raise DataError(f"dataset has no root directory, so there is no mesh for {code!r}")
        return mesh_path(self.root, code)


def _check_known(codes: Sequence[str], available: Sequence[str], where: str) -> None:
    known = set(available)
    unknown = [code for code in dict.fromkeys(codes) if code not in known]
    if unknown:
        listed = ", ".join(repr(code) for code in unknown[:_MAX_LISTED])
        more = f" and {len(unknown) - _MAX_LISTED} more" if len(unknown) > _MAX_LISTED else ""
        examples = ", ".join(repr(code) for code in list(available)[:3])
        raise DataError(
            f"unknown object code(s) {listed}{more}: {len(available)} object(s) are available "
            f"in {where}" + (f" (e.g. {examples})" if examples else "")
        )


class _BadFile(Exception):
    """A grasp file that fails validation; the message is the reason."""


def _type_name(value) -> str:
    return type(value).__name__


class _ShortRepr(reprlib.Repr):
    """repr for messages, bounded whatever a file holds: lists 10^4 deep, ints of 10^5 digits."""

    def repr_int(self, x, level):
        if x.bit_length() > 256:  # str() refuses ints past 4300 digits
            return f"<int of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_SHORT_REPR = _ShortRepr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxstring, _SHORT_REPR.maxother = 3, 40, 40


def _key_text(key) -> str:
    return key if isinstance(key, str) else _SHORT_REPR.repr(key)


def _is_real_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _first_non_number(rows, keys) -> str:
    for index, row in enumerate(rows):
        for key, value in zip(keys, row):
            if not _is_real_number(value):
                return f"record {index} {key} is {_type_name(value)} {_SHORT_REPR.repr(value)}, expected a number"
    return "values are not all numbers"


def _numeric_matrix(rows, keys, what: str) -> np.ndarray:
    """rows of numbers -> float64 [N, len(keys)]; rejects non-numbers and non-finite values."""
    try:
        values = np.asarray(rows)  # numpy infers the dtype: strings or None make it non-numeric
    except (ValueError, TypeError):
        values = None
    if values is None or values.dtype.kind not in "iuf" or values.shape != (len(rows), len(keys)):
        raise _BadFile(_first_non_number(rows, keys))
    values = values.astype(np.float64, copy=False)
    finite = np.isfinite(values)
    if not finite.all():
        index, column = np.argwhere(~finite)[0]
        count = int((~finite).sum())
        raise _BadFile(
            f"record {index} {keys[column]} is {values[index, column]}, expected a finite number"
            + (f" ({count} non-finite {what} values in all)" if count > 1 else "")
        )
    return values


def _parse_records(array: np.ndarray):
    """[N] object array of dicts -> (qpos [N, 28] in QPOS_KEYS order, scales [N], extras)."""
    if array.dtype != np.dtype(object) or array.ndim != 1:
        raise _BadFile(f"holds a {array.dtype} array of shape {array.shape}, expected a 1-D object array of dicts")
    records = array.tolist()
    if not records:
        raise _BadFile("holds no grasp records")
    for index, record in enumerate(records):
        if type(record) is not dict:
            raise _BadFile(f"record {index} is a {_type_name(record)}, expected a dict with keys 'qpos' and 'scale'")
    try:
        qposes = [record["qpos"] for record in records]
        scales = [record["scale"] for record in records]
    except KeyError:
        for index, record in enumerate(records):
            missing = [key for key in RECORD_KEYS if key not in record]
            if missing:
                keys = sorted(map(_key_text, record))
                more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
                listed = f"{keys[:_MAX_LISTED]}{more}"
                raise _BadFile(f"record {index} lacks key(s) {missing} (has {listed})") from None
        raise
    for index, qpos in enumerate(qposes):
        if not isinstance(qpos, Mapping):
            raise _BadFile(
                f"record {index} qpos is a {_type_name(qpos)}, "
                f"expected a dict of {len(constants.QPOS_KEYS)} floats"
            )
    try:
        rows = list(map(_get_qpos_row, qposes))
    except KeyError:
        for index, qpos in enumerate(qposes):
            missing = [key for key in constants.QPOS_KEYS if key not in qpos]
            if missing:
                bad = sum(1 for q in qposes if any(key not in q for key in constants.QPOS_KEYS))
                raise _BadFile(
                    f"record {index} qpos lacks key(s) {', '.join(map(repr, missing))}"
                    + (f" ({bad} records lack qpos keys)" if bad > 1 else "")
                ) from None
        raise
    qpos_keys = [f"qpos[{key!r}]" for key in constants.QPOS_KEYS]
    qpos_matrix = _numeric_matrix(rows, qpos_keys, "qpos")
    scale_values = _numeric_matrix([(scale,) for scale in scales], ["scale"], "scale")[:, 0]
    if (scale_values <= 0).any():
        index = int(np.argmax(scale_values <= 0))
        raise _BadFile(f"record {index} scale is {scale_values[index]}, expected a positive number")
    _check_ranges(qpos_matrix, _QPOS_LOW, _QPOS_HIGH, _QPOS_KEY_TEXT, _QPOS_RANGE_TEXT, "qpos")
    translation = np.linalg.norm(qpos_matrix[:, _TRANSLATION_COLUMNS], axis=1, keepdims=True)
    low, high = bounds.BOUNDS.translation_m
    _check_ranges(translation, [low], [high], ["palm translation |(WRJTx, WRJTy, WRJTz)|"],
                  [bounds.range_text("translation_m")], "translation")
    low, high = bounds.BOUNDS.scale
    _check_ranges(scale_values[:, None], [low], [high], ["scale"], [bounds.range_text("scale")], "scale")
    return qpos_matrix, scale_values, _parse_extras(records)


def _check_ranges(values, low, high, keys, ranges, what: str) -> None:
    """values [N, C] within [low, high] per column (see `bounds`), or _BadFile naming the first outside."""
    outside = (values < np.asarray(low)) | (values > np.asarray(high))
    if outside.any():
        index, column = np.argwhere(outside)[0]
        count = int(outside.sum())
        raise _BadFile(
            f"record {index} {keys[column]} is {values[index, column]:g}, outside {ranges[column]}"
            + (f" ({count} {what} values out of range in all)" if count > 1 else "")
        )


def _parse_extras(records) -> dict[str, np.ndarray]:
    """Numeric/bool labels stored beside qpos and scale in every record."""
    if all(len(record) == len(RECORD_KEYS) for record in records):
        return {}  # the common case: plain DexGraspNet records
    names = {name for name in records[0] if isinstance(name, str)}.difference(RECORD_KEYS)
    for record in records[1:]:
        names.intersection_update(record)
    extras = {}
    for name in sorted(names):
        try:
            values = np.asarray([record[name] for record in records])
        except (ValueError, TypeError):
            continue
        if values.shape == (len(records),) and values.dtype.kind in "biuf":
            extras[name] = values
    return extras


def concatenate(datasets: Sequence[GraspDataset], label: str | None = None) -> GraspDataset:
    """The grasps of several datasets as one, grouped by object (sorted codes), each object's in order.

    Meshes are the first dataset's: every object must have its mesh under
    the first dataset's root. Labels present in every dataset are kept;
    `label` adds one more, the index of the dataset each grasp came from.
    """
    if not datasets:
        raise ValueError("nothing to concatenate")
    first = datasets[0]
    codes = tuple(sorted({c for d in datasets for c in d.object_codes}))
    if first.root is not None:
        missing = [c for c in codes if not mesh_path(first.root, c).is_file()]
        if missing:
            raise DataError(f"{first.root} has no mesh for {missing[:3]}: the first dataset must hold "
                            "every object's mesh")
    names = set(first.extras).intersection(*(d.extras for d in datasets[1:]))
    rows = []  # (object index in `codes`, dataset, row)
    for k, d in enumerate(datasets):
        remap = np.array([codes.index(c) for c in d.object_codes], np.int32)
        rows += [(remap[d.object_index[i]], k, i) for i in range(len(d))]
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    take = lambda attr: np.array([getattr(datasets[k], attr)[i] for _, k, i in rows])  # noqa: E731
    extras = {n: np.array([datasets[k].extras[n][i] for _, k, i in rows]) for n in sorted(names)}
    if label is not None:
        extras[label] = np.array([k for _, k, _ in rows], np.int32)
    grasps = take("grasps").reshape(-1, grasp_arrays.GRASP_DIM)
    return GraspDataset(grasps, take("scales"), np.array([o for o, _, _ in rows], np.int32), codes,
                        root=first.root, extras=extras)


def load_dexgraspnet(
    root,
    objects: Sequence[str] | None = None,
    skip_bad: bool = False,
    require_meshes: bool = True,
) -> GraspDataset:
    """Load `root/grasps/*.npy` (all objects, or `objects`) into a GraspDataset.

    Objects come sorted by code, grasps in file order within an object. Each
    file is checked record by record; a bad file (or a missing mesh, when
    `require_meshes`) raises a DataError listing every bad file, unless
    `skip_bad`, which skips them and lists them in `dataset.skipped`.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(
            f"dataset directory {root} does not exist; expected a DexGraspNet directory "
            f"with {GRASPS_DIR}/<code>.npy and {MESHDATA_DIR}/<code>/coacd/decomposed.obj"
        )
    if not root.is_dir():
        raise DataError(f"dataset path {root} is not a directory; expected a DexGraspNet directory")
    grasps_dir = root / GRASPS_DIR
    if not grasps_dir.is_dir():
        raise DataError(f"{root} has no {GRASPS_DIR}/ directory; expected {GRASPS_DIR}/<code>.npy grasp files there")
    with os.scandir(grasps_dir) as entries:
        available = sorted(
            entry.name[: -len(".npy")] for entry in entries if entry.name.endswith(".npy") and entry.is_file()
        )
    if not available:
        raise DataError(f"{grasps_dir} holds no .npy grasp files: the dataset is empty")
    if objects is None:
        codes = available
    else:
        objects = [objects] if isinstance(objects, str) else list(objects)
        if not objects:
            raise DataError(f"no object codes requested; {len(available)} object(s) are available in {grasps_dir}")
        _check_known(objects, available, where=str(grasps_dir))
        codes = sorted(set(objects))

    loaded, bad = [], []
    for code in codes:
        path = grasps_dir / f"{code}.npy"
        if require_meshes and not mesh_path(root, code).is_file():
            bad.append((code, f"missing mesh file {mesh_path(root, code)}"))
            continue
        try:
            loaded.append((code, *_parse_records(load_object_npy(path, ndim=None))))
        except _BadFile as error:
            bad.append((code, f"{path}: {error}"))
        except DataError as error:  # unreadable, corrupt or refused by the safe unpickler
            bad.append((code, str(error)))

    if bad and not skip_bad:
        raise DataError(
            f"{len(bad)} of {len(codes)} object(s) in {root} are bad:\n"
            + _list_bad(bad)
            + "\npass skip_bad=True (CLI: --skip-bad) to skip them and load the rest"
        )
    if not loaded:
        raise DataError(f"none of the {len(codes)} object(s) in {root} could be loaded:\n" + _list_bad(bad))
    return _assemble(root, loaded, bad)


def _list_bad(bad) -> str:
    lines = [f"  {code}: {reason}" for code, reason in bad[:_MAX_LISTED]]
    if len(bad) > _MAX_LISTED:
        lines.append(f"  ... and {len(bad) - _MAX_LISTED} more")
    return "\n".join(lines)


def _assemble(root: Path, loaded, bad) -> GraspDataset:
    codes = tuple(code for code, *_ in loaded)
    qpos = np.concatenate([entry[1] for entry in loaded])
    scales = np.concatenate([entry[2] for entry in loaded])
    counts = [len(entry[2]) for entry in loaded]
    object_index = np.repeat(np.arange(len(codes), dtype=np.int32), counts)
    extra_names = set(loaded[0][3]).intersection(*(entry[3] for entry in loaded[1:]))
    extras = {name: np.concatenate([entry[3][name] for entry in loaded]) for name in sorted(extra_names)}
    grasps = grasp_arrays.grasps_from_dexgraspnet_qpos(
        qpos[:, _TRANSLATION_COLUMNS], qpos[:, _EULER_COLUMNS], qpos[:, _JOINT_COLUMNS]
    )
    return GraspDataset(
        grasps=grasps,
        scales=scales,
        object_index=object_index,
        object_codes=codes,
        root=root,
        extras=extras,
        skipped=tuple(bad),
    )


def write_dexgraspnet(root, dataset: GraspDataset, mesh_source_root=None, labels=None) -> None:
    """Write `dataset` to `root` in DexGraspNet's layout and file format.

    Each object's grasps go to `root/grasps/<code>.npy` as DexGraspNet writes
    them: an object array of {"qpos": {28 Python floats in QPOS_KEYS order},
    "scale": np.float64}, plus one key per entry of `dataset.extras` and
    `labels` (name -> [N] numbers or bools; `labels` wins on a clash), which
    `load_dexgraspnet` returns as `extras`. Grasps are grouped by object, in
    their order within it. Euler
    angles come back in principal ranges, so they may differ from a source
    file's while giving the same rotation. Mesh directories missing under
    `root` are hard-linked (or copied) from `mesh_source_root or dataset.root`.
    Every file is written atomically, and all inputs are checked first.
    """
    root = Path(root)
    n = len(dataset)
    labels = {**dataset.extras, **(labels or {})}
    label_values = {}
    for name, values in labels.items():
        values = np.asarray(values)
        if not isinstance(name, str) or name in RECORD_KEYS:
            raise ValueError(f"label name {name!r} must be a string other than {RECORD_KEYS}")
        if values.shape != (n,) or values.dtype.kind not in "biuf":
            raise ValueError(
                f"label {name!r} has {values.dtype} shape {values.shape}, expected ({n},) numbers or bools"
            )
        label_values[name] = values.tolist()  # Python bools/ints/floats, like the qpos values

    source_root = Path(mesh_source_root) if mesh_source_root is not None else dataset.root
    meshes_to_copy = []
    for code in dataset.object_codes:
        destination = root / MESHDATA_DIR / code
        if destination.exists():
            continue
        if source_root is None:
            raise DataError(f"no mesh source for {code!r}: pass mesh_source_root, or write a dataset loaded from disk")
        source = source_root / MESHDATA_DIR / code
        if not mesh_path(source_root, code).is_file():
            raise DataError(f"cannot copy the mesh of {code!r}: {mesh_path(source_root, code)} does not exist")
        meshes_to_copy.append((source, destination))

    translation, euler, joints = grasp_arrays.grasps_to_dexgraspnet_qpos(dataset.grasps)
    qposes = grasp_arrays.arrays_to_qpos_dicts(translation, euler, joints)
    scales = dataset.scales.tolist()

    (root / GRASPS_DIR).mkdir(parents=True, exist_ok=True)
    (root / MESHDATA_DIR).mkdir(parents=True, exist_ok=True)
    for object_id, code in enumerate(dataset.object_codes):
        indices = np.flatnonzero(dataset.object_index == object_id).tolist()
        records = np.empty(len(indices), dtype=object)
        for slot, index in enumerate(indices):
            qpos = qposes[index]
            record = {
                "qpos": {key: float(qpos[key]) for key in constants.QPOS_KEYS},
                "scale": np.float64(scales[index]),
            }
            for name, values in label_values.items():
                record[name] = values[index]
            records[slot] = record
        save_object_npy(root / GRASPS_DIR / f"{code}.npy", records)
    for source, destination in meshes_to_copy:
        _link_or_copy_tree(source, destination)


def _link_or_copy_tree(source: Path, destination: Path) -> None:
    """Hard-link (or, across file systems, copy) a directory tree, atomically."""
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        for directory, _, files in os.walk(source):
            target_dir = staging / Path(directory).relative_to(source)
            target_dir.mkdir(parents=True, exist_ok=True)
            for name in files:
                try:
                    os.link(Path(directory) / name, target_dir / name)
                except OSError:
                    shutil.copyfile(Path(directory) / name, target_dir / name)
        staging.chmod(0o755)  # mkdtemp makes 0700
        os.replace(staging, destination)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if is_storage_error(e):  # a full disk: an OutputError naming the mesh, not a traceback
            raise storage_error(destination, e) from None
        raise
