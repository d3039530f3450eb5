"""load_dexgraspnet / write_dexgraspnet: validation messages, skip_bad, exact round trips."""

import copy
import os
import shutil

import numpy as np
import pytest

from _paths import SHARED_DATA, requires_shared_data
from diffrl_jax.data import grasps as gr
from diffrl_jax.data import rotations as rot
from diffrl_jax.data.dexgraspnet import GraspDataset, load_dexgraspnet, mesh_path, write_dexgraspnet
from diffrl_jax.data.safe_npy import load_object_npy, save_object_npy
from diffrl_jax.errors import DataError
from diffrl_jax.hand import constants

SHARED_COUNTS = {
    "core-mug-8570d9a8d24cb0acbebd3c0c0c70fb03": 246,
    "mujoco-Ecoforms_Plant_Plate_S11Turquoise": 236,
    "sem-Bottle-437678d4bc6be981c8724d5673a063a6": 248,
}
TINY_MESH = "o convex_0\nv 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n"


def _object_array(items):
    array = np.empty(len(items), dtype=object)
    for index, item in enumerate(items):
        array[index] = item
    return array


def _synthetic_records(n=12, seed=0, scale=0.1):
    """Records in DexGraspNet's format, built through the grasps module."""
    rng = np.random.default_rng(seed)
    translation = rng.uniform(-0.2, 0.2, (n, 3))
    euler = rng.uniform([-np.pi, -np.pi / 2, -np.pi], [np.pi, np.pi / 2, np.pi], (n, 3))
    joints = rng.uniform(constants.JOINT_RANGES[:, 0], constants.JOINT_RANGES[:, 1], (n, constants.NUM_JOINTS))
    qposes = gr.arrays_to_qpos_dicts(translation, euler, joints)
    return [{"qpos": qpos, "scale": np.float64(scale)} for qpos in qposes]


def _make_root(root, files, meshes=True):
    """root/grasps/<code>.npy for each code -> records (or a ready array), plus tiny meshes."""
    (root / "grasps").mkdir(parents=True, exist_ok=True)
    for code, records in files.items():
        array = records if isinstance(records, np.ndarray) else _object_array(records)
        save_object_npy(root / "grasps" / f"{code}.npy", array)
        if meshes:
            mesh_path(root, code).parent.mkdir(parents=True, exist_ok=True)
            mesh_path(root, code).write_text(TINY_MESH)
    return root


def _one_bad(tmp_path, mutate, code="obj-b"):
    """Three good copies of one file, then `mutate(records)` applied to `code`'s."""
    good = _synthetic_records()
    files = {name: copy.deepcopy(good) for name in ("obj-a", "obj-b", "obj-c")}
    replaced = mutate(files[code])  # mutates in place, or returns a replacement
    if replaced is not None:
        files[code] = replaced
    return _make_root(tmp_path / "data", files)


def _load_error(root, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_dexgraspnet(root, **kwargs)
    return str(info.value)


# --- the shared sample ----------------------------------------------------------------------


@requires_shared_data
def test_load_shared_sample():
    dataset = load_dexgraspnet(SHARED_DATA)
    assert dataset.object_codes == tuple(sorted(SHARED_COUNTS))
    assert len(dataset) == sum(SHARED_COUNTS.values()) == 730
    assert dataset.grasps.dtype == np.float64 and dataset.grasps.shape == (730, 31)
    assert dataset.object_index.dtype == np.int32 and dataset.scales.dtype == np.float64
    assert np.bincount(dataset.object_index).tolist() == [SHARED_COUNTS[c] for c in dataset.object_codes]
    assert dataset.skipped == () and dataset.extras == {} and dataset.root == SHARED_DATA

    for code in dataset.object_codes:
        records = np.load(SHARED_DATA / "grasps" / f"{code}.npy", allow_pickle=True)  # trusted sample
        expected = gr.grasps_from_dexgraspnet_qpos(*gr.qpos_dicts_to_arrays([r["qpos"] for r in records]))
        one = dataset.for_object(code)
        assert one.object_codes == (code,) and np.all(one.object_index == 0)
        np.testing.assert_array_equal(one.grasps, expected)  # file order within the object
        np.testing.assert_array_equal(one.scales, [r["scale"] for r in records])
        assert dataset.mesh_path(code) == SHARED_DATA / "meshdata" / code / "coacd" / "decomposed.obj"
        assert dataset.mesh_path(code).is_file()


@requires_shared_data
def test_load_selected_objects_and_select():
    codes = sorted(SHARED_COUNTS)
    dataset = load_dexgraspnet(SHARED_DATA, objects=[codes[2], codes[0], codes[2]])
    assert dataset.object_codes == (codes[0], codes[2])
    assert len(dataset) == SHARED_COUNTS[codes[0]] + SHARED_COUNTS[codes[2]]
    full = load_dexgraspnet(SHARED_DATA)
    picked = full.select([codes[2], codes[0]])
    np.testing.assert_array_equal(picked.grasps, dataset.grasps)
    np.testing.assert_array_equal(picked.object_index, dataset.object_index)
    with pytest.raises(DataError, match="unknown object code"):
        full.select(["no-such-object"])


# --- round trips ----------------------------------------------------------------------------


def _principal(euler, tol=1e-12):
    """Whether 'sxyz' angles [N, 3] lie in the ranges an inverse conversion returns."""
    a, b, c = euler.T
    return (np.abs(a) <= np.pi + tol) & (np.abs(b) <= np.pi / 2 + tol) & (np.abs(c) <= np.pi + tol)


@requires_shared_data
def test_round_trip_is_exact(tmp_path):
    original = load_dexgraspnet(SHARED_DATA)
    write_dexgraspnet(tmp_path / "copy", original)
    again = load_dexgraspnet(tmp_path / "copy")
    assert again.object_codes == original.object_codes
    np.testing.assert_allclose(again.grasps, original.grasps, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(again.scales, original.scales)
    np.testing.assert_array_equal(again.object_index, original.object_index)

    differing, total = 0, 0
    for code in original.object_codes:
        source = np.load(SHARED_DATA / "grasps" / f"{code}.npy", allow_pickle=True)
        written = np.load(tmp_path / "copy" / "grasps" / f"{code}.npy", allow_pickle=True)
        assert len(written) == len(source)
        for old, new in zip(source, written):
            assert list(new) == ["qpos", "scale"]
            assert list(new["qpos"]) == list(constants.QPOS_KEYS)
            assert all(type(value) is float for value in new["qpos"].values())
            assert type(new["scale"]) is np.float64 and new["scale"] == old["scale"]
            for key in constants.JOINT_NAMES + constants.WRIST_TRANSLATION_KEYS:
                assert new["qpos"][key] == old["qpos"][key], key  # bit-exact
        old_euler = np.array([[r["qpos"][k] for k in constants.WRIST_EULER_KEYS] for r in source])
        new_euler = np.array([[r["qpos"][k] for k in constants.WRIST_EULER_KEYS] for r in written])
        np.testing.assert_allclose(
            rot.euler_sxyz_to_matrix(new_euler), rot.euler_sxyz_to_matrix(old_euler), rtol=0, atol=1e-12
        )
        changed = np.abs(new_euler - old_euler).max(axis=1) > 1e-9
        # Angles may only change where the source was outside the principal ranges.
        assert not np.any(changed & _principal(old_euler)), code
        differing += int(changed.sum())
        total += len(source)
        mesh = tmp_path / "copy" / "meshdata" / code / "coacd" / "decomposed.obj"
        assert mesh.read_bytes() == mesh_path(SHARED_DATA, code).read_bytes()
    print(f"round trip: {differing} of {total} grasps changed Euler angles (same rotation)")


def test_round_trip_with_labels(tmp_path):
    files = {"obj-a": _synthetic_records(7, seed=1), "obj-b": _synthetic_records(5, seed=2)}
    root = _make_root(tmp_path / "src", files)
    dataset = load_dexgraspnet(root)
    success = np.arange(len(dataset)) % 3 == 0
    energy = np.linspace(0.0, 1.0, len(dataset))
    write_dexgraspnet(tmp_path / "out", dataset, labels={"success": success, "energy": energy})

    record = load_object_npy(tmp_path / "out" / "grasps" / "obj-a.npy")[0]
    assert list(record) == ["qpos", "scale", "success", "energy"]
    assert type(record["success"]) is bool and type(record["energy"]) is float

    labelled = load_dexgraspnet(tmp_path / "out")
    assert set(labelled.extras) == {"success", "energy"}
    assert labelled.extras["success"].dtype == np.bool_
    np.testing.assert_array_equal(labelled.extras["success"], success)
    np.testing.assert_array_equal(labelled.extras["energy"], energy)
    np.testing.assert_allclose(labelled.grasps, dataset.grasps, rtol=0, atol=1e-12)
    # selections keep labels aligned; extras are written back by default
    only_b = labelled.for_object("obj-b")
    np.testing.assert_array_equal(only_b.extras["success"], success[7:])
    write_dexgraspnet(tmp_path / "again", only_b)
    np.testing.assert_array_equal(load_dexgraspnet(tmp_path / "again").extras["success"], success[7:])


def test_extras_need_every_file(tmp_path):
    labelled = [dict(r, success=True) for r in _synthetic_records(4)]
    root = _make_root(tmp_path, {"obj-a": labelled, "obj-b": _synthetic_records(4)})
    assert load_dexgraspnet(root).extras == {}
    assert set(load_dexgraspnet(root, objects=["obj-a"]).extras) == {"success"}


def test_write_validates_before_writing(tmp_path):
    dataset = load_dexgraspnet(_make_root(tmp_path / "src", {"obj-a": _synthetic_records(4)}))
    with pytest.raises(ValueError, match="label 'success'"):
        write_dexgraspnet(tmp_path / "out", dataset, labels={"success": np.ones(3, bool)})
    no_root = GraspDataset(dataset.grasps, dataset.scales, dataset.object_index, dataset.object_codes)
    with pytest.raises(DataError, match="no mesh source"):
        write_dexgraspnet(tmp_path / "out", no_root)
    with pytest.raises(DataError, match="cannot copy the mesh"):
        write_dexgraspnet(tmp_path / "out", dataset, mesh_source_root=tmp_path / "elsewhere")
    assert not (tmp_path / "out").exists()
    # a mesh already at the destination is kept, and needs no source
    mesh_path(tmp_path / "out", "obj-a").parent.mkdir(parents=True)
    mesh_path(tmp_path / "out", "obj-a").write_text("o mine\n")
    write_dexgraspnet(tmp_path / "out", no_root)
    assert mesh_path(tmp_path / "out", "obj-a").read_text() == "o mine\n"
    assert sorted(os.listdir(tmp_path / "out" / "grasps")) == ["obj-a.npy"]


# --- validation messages --------------------------------------------------------------------


def test_missing_directory(tmp_path):
    message = _load_error(tmp_path / "absent")
    assert "does not exist" in message and str(tmp_path / "absent") in message


def test_root_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    assert "is not a directory" in _load_error(tmp_path / "file")


def test_no_grasps_directory(tmp_path):
    assert "has no grasps/ directory" in _load_error(tmp_path)


def test_empty_dataset(tmp_path):
    (tmp_path / "grasps").mkdir()
    (tmp_path / "grasps" / "README.txt").write_text("not a grasp file")
    assert "holds no .npy grasp files" in _load_error(tmp_path)


def test_unknown_object_code(tmp_path):
    root = _make_root(tmp_path, {"obj-a": _synthetic_records(3), "obj-b": _synthetic_records(3)})
    message = _load_error(root, objects=["obj-a", "nope", "nada"])
    assert "unknown object code(s) 'nope', 'nada'" in message
    assert "2 object(s) are available" in message and "'obj-a'" in message


def test_missing_mesh(tmp_path):
    root = _make_root(tmp_path, {"obj-a": _synthetic_records(3)}, meshes=False)
    message = _load_error(root)
    assert "missing mesh file" in message and str(mesh_path(root, "obj-a")) in message
    assert len(load_dexgraspnet(root, require_meshes=False)) == 3


def _drop_qpos_key(records):
    del records[7]["qpos"]["robot0:THJ2"]
    del records[7]["qpos"]["WRJTz"]


def _drop_scale(records):
    del records[3]["scale"]


def _set(index, key, value):
    def mutate(records):
        if key == "scale":
            records[index]["scale"] = value
        else:
            records[index]["qpos"][key] = value

    return mutate


def _replace_record(records):
    records[2] = [1.0, 2.0]


def _replace_qpos(records):
    records[1]["qpos"] = [0.0] * 28


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (_drop_qpos_key, "record 7 qpos lacks key(s) 'robot0:THJ2', 'WRJTz'"),
        (_drop_scale, "record 3 lacks key(s) ['scale']"),
        (_set(5, "WRJTx", float("nan")), "record 5 qpos['WRJTx'] is nan, expected a finite number"),
        (_set(6, "robot0:FFJ3", float("inf")), "record 6 qpos['robot0:FFJ3'] is inf"),
        (_set(2, "robot0:FFJ3", "0.5"), "record 2 qpos['robot0:FFJ3'] is str '0.5', expected a number"),
        (_set(4, "WRJRy", None), "record 4 qpos['WRJRy'] is NoneType None, expected a number"),
        (_set(9, "scale", "big"), "record 9 scale is str 'big', expected a number"),
        (_set(8, "scale", np.float64(np.nan)), "record 8 scale is nan"),
        (_set(4, "scale", -0.1), "record 4 scale is -0.1, expected a positive number"),
        (_set(0, "scale", 0.0), "record 0 scale is 0.0, expected a positive number"),
        (_replace_record, "record 2 is a list, expected a dict with keys 'qpos' and 'scale'"),
        (_replace_qpos, "record 1 qpos is a list, expected a dict of 28 floats"),
        (lambda records: [], "holds no grasp records"),
        (lambda records: np.zeros((5, 28)), "holds a float64 array of shape (5, 28), expected a 1-D object array"),
    ],
    ids=["missing-qpos-key", "missing-scale", "nan", "inf", "str", "none", "scale-str", "scale-nan",
         "scale-negative", "scale-zero", "not-a-dict", "qpos-not-a-dict", "empty", "numeric-array"],
)
def test_bad_file_messages(tmp_path, mutate, expected):
    root = _one_bad(tmp_path, mutate)
    message = _load_error(root)
    assert expected in message
    assert "1 of 3 object(s)" in message and str(root / "grasps" / "obj-b.npy") in message
    assert "obj-a" not in message and "obj-c" not in message
    assert "skip_bad=True" in message and "--skip-bad" in message


def test_skip_bad_keeps_the_good_files(tmp_path):
    root = _one_bad(tmp_path, _set(5, "WRJTx", float("nan")))
    dataset = load_dexgraspnet(root, skip_bad=True)
    assert dataset.object_codes == ("obj-a", "obj-c") and len(dataset) == 24
    assert [code for code, _ in dataset.skipped] == ["obj-b"]
    assert "record 5 qpos['WRJTx'] is nan" in dataset.skipped[0][1]
    good = load_dexgraspnet(root, objects=["obj-a", "obj-c"])
    np.testing.assert_array_equal(dataset.grasps, good.grasps)


def test_skip_bad_with_nothing_good(tmp_path):
    root = _make_root(tmp_path, {"obj-a": [{"qpos": {}, "scale": 0.1}], "obj-b": []})
    message = _load_error(root, skip_bad=True)
    assert "none of the 2 object(s)" in message and "obj-a" in message and "obj-b" in message


def test_unsafe_or_corrupt_files_are_bad_files(tmp_path):
    root = _make_root(tmp_path, {"obj-a": _synthetic_records(3), "obj-b": _synthetic_records(3)})
    (root / "grasps" / "obj-b.npy").write_bytes((root / "grasps" / "obj-b.npy").read_bytes()[:200])
    assert "corrupt or truncated" in _load_error(root)
    (root / "grasps" / "obj-b.npy").write_bytes(b"text\n")
    assert "not a valid .npy file" in _load_error(root)
    save_object_npy(root / "grasps" / "obj-b.npy", _object_array([{"qpos": np.load, "scale": 0.1}]))
    assert "refusing to load" in _load_error(root)
    assert load_dexgraspnet(root, skip_bad=True).object_codes == ("obj-a",)


@requires_shared_data
def test_real_file_copies_with_one_bad(tmp_path):
    """The brief's case on real data: copies of one real file and its mesh, one corrupted."""
    code = "sem-Bottle-437678d4bc6be981c8724d5673a063a6"
    root = tmp_path / "data"
    (root / "grasps").mkdir(parents=True)
    for name in ("copy-1", "copy-2", "copy-3"):
        shutil.copyfile(SHARED_DATA / "grasps" / f"{code}.npy", root / "grasps" / f"{name}.npy")
        mesh_path(root, name).parent.mkdir(parents=True)
        shutil.copyfile(mesh_path(SHARED_DATA, code), mesh_path(root, name))
    records = load_object_npy(root / "grasps" / "copy-2.npy")
    del records[10]["qpos"]["robot0:LFJ4"]
    save_object_npy(root / "grasps" / "copy-2.npy", records)
    message = _load_error(root)
    assert "copy-2" in message and "record 10 qpos lacks key(s) 'robot0:LFJ4'" in message
    dataset = load_dexgraspnet(root, skip_bad=True)
    assert dataset.object_codes == ("copy-1", "copy-3") and len(dataset) == 2 * 248
    assert dataset.skipped[0][0] == "copy-2"


def test_dataset_checks_its_shapes():
    with pytest.raises(ValueError, match="grasps has shape"):
        GraspDataset(np.zeros((2, 30)), np.ones(2), np.zeros(2, int), ("a",))
    with pytest.raises(ValueError, match="scales has shape"):
        GraspDataset(np.zeros((2, 31)), np.ones(3), np.zeros(2, int), ("a",))
    with pytest.raises(ValueError, match="object_index must lie"):
        GraspDataset(np.zeros((2, 31)), np.ones(2), np.array([0, 1]), ("a",))
