"""PhysicalBounds: every range rejects a value outside it, naming file, record, field and range.

Also: the real DexGraspNet sample and the built-in objects pass every bound,
values at the edges of a range pass, and `diffrl validate` refuses a grasp
file with a scale of 1e9 (exit 2, no report) instead of simulating it.
"""

import dataclasses
import math
import types

import numpy as np
import pytest

from _paths import SHARED_DATA, requires_shared_data
from diffrl_jax import bounds
from diffrl_jax.bounds import BOUNDS, PhysicalBounds
from diffrl_jax.cli.main import main
from diffrl_jax.data import example
from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.data.dexgraspnet import GraspDataset, load_dexgraspnet, mesh_path, write_dexgraspnet
from diffrl_jax.data.safe_npy import load_object_npy, save_object_npy
from diffrl_jax.diffusion import pipeline
from diffrl_jax.diffusion.config import DiffusionConfig
from diffrl_jax.errors import ConfigError, DataError
from diffrl_jax.hand import constants
from diffrl_jax.objects import assets
from diffrl_jax.sim import lift, protocol

N = 20
TET = "o convex_0\nv 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\n"  # unit tetrahedron, extent 1 at scale 1
MFJ3 = constants.JOINT_NAMES.index("robot0:MFJ3")
MFJ3_HIGH = constants.JOINT_RANGES[MFJ3, 1] + BOUNDS.joint_margin_rad


def _write_dataset(root, codes=("obj-a", "obj-b")) -> None:
    """N grasps per object within every bound, at scale 0.1, on a tetrahedron, via write_dexgraspnet."""
    source = root.parent / f"{root.name}-meshes"
    rng = np.random.default_rng(0)
    n = N * len(codes)
    translation = rng.uniform(-0.2, 0.2, (n, 3))
    euler = rng.uniform([-np.pi, -np.pi / 2, -np.pi], [np.pi, np.pi / 2, np.pi], (n, 3))
    joints = rng.uniform(constants.JOINT_RANGES[:, 0], constants.JOINT_RANGES[:, 1], (n, constants.NUM_JOINTS))
    for code in codes:
        mesh_path(source, code).parent.mkdir(parents=True)
        mesh_path(source, code).write_text(TET)
    dataset = GraspDataset(
        grasps=grasp_lib.grasps_from_dexgraspnet_qpos(translation, euler, joints),
        scales=np.full(n, 0.1), object_index=np.repeat(np.arange(len(codes)), N), object_codes=codes)
    write_dexgraspnet(root, dataset, mesh_source_root=source)


def _edit_record(root, code, index, field, value) -> str:
    """Sets `field` ("scale" or a qpos key) of record `index` of `code`'s file; returns the file's path."""
    path = root / "grasps" / f"{code}.npy"
    records = load_object_npy(path, ndim=None)
    if field == "scale":
        records[index]["scale"] = np.float64(value)
    else:
        records[index]["qpos"][field] = float(value)
    save_object_npy(path, records)
    return str(path)


@pytest.fixture
def root(tmp_path):
    _write_dataset(tmp_path / "data")
    return tmp_path / "data"


# --- grasp files --------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("scale", 1e9, "record 17 scale is 1e+09, outside [0.01, 1] (PhysicalBounds.scale)"),
    ("scale", 0.001, "record 17 scale is 0.001, outside [0.01, 1] (PhysicalBounds.scale)"),
    ("WRJTx", 1.5, "record 17 palm translation |(WRJTx, WRJTy, WRJTz)| is 1.5"),
    ("WRJTz", -3e5, "outside [0, 1] (PhysicalBounds.translation_m)"),
    ("robot0:MFJ3", MFJ3_HIGH + 0.01,
     (f"record 17 qpos['robot0:MFJ3'] is {MFJ3_HIGH + 0.01:g}, outside [-{MFJ3_HIGH:g}, {MFJ3_HIGH:g}] "
      "(joint limits +- PhysicalBounds.joint_margin_rad)")),
    ("robot0:THJ0", -1e3, "record 17 qpos['robot0:THJ0'] is -1000, outside [-2.571, 1]"),
    ("WRJRy", 100.0, "record 17 qpos['WRJRy'] is 100, outside [-12.5664, 12.5664] (PhysicalBounds.euler_rad)"),
])
def test_grasp_file_value_outside_its_bound_is_a_data_error(root, field, value, message):
    if field.startswith("WRJT"):  # the norm is bounded: put the whole translation on one axis
        for axis in ("WRJTx", "WRJTy", "WRJTz"):
            _edit_record(root, "obj-b", 17, axis, 0.0)
    path = _edit_record(root, "obj-b", 17, field, value)
    with pytest.raises(DataError) as info:
        load_dexgraspnet(root)
    text = str(info.value)
    assert f"obj-b: {path}: " in text and message in text, text
    assert "obj-a" not in text  # only the bad file is listed


def test_the_first_record_outside_is_named_and_the_others_counted(root):
    _edit_record(root, "obj-a", 3, "scale", 2.0)
    _edit_record(root, "obj-a", 9, "scale", 5.0)
    with pytest.raises(DataError, match=r"record 3 scale is 2, outside .* \(2 scale values out of range in all\)"):
        load_dexgraspnet(root)


def test_skip_bad_skips_a_file_outside_the_bounds_like_any_bad_file(root):
    _edit_record(root, "obj-a", 0, "robot0:FFJ3", 7.0)
    dataset = load_dexgraspnet(root, skip_bad=True)
    assert dataset.object_codes == ("obj-b",) and len(dataset) == N
    [(code, reason)] = dataset.skipped
    assert code == "obj-a" and "record 0 qpos['robot0:FFJ3'] is 7, outside" in reason


def test_values_at_the_edges_of_the_ranges_load(root):
    low, high = BOUNDS.scale
    _edit_record(root, "obj-a", 0, "scale", low)
    _edit_record(root, "obj-a", 1, "scale", high)
    _edit_record(root, "obj-a", 2, "robot0:MFJ3", MFJ3_HIGH)
    _edit_record(root, "obj-a", 3, "robot0:MFJ3", MFJ3_HIGH + 0.01)  # just outside: rejected ...
    with pytest.raises(DataError, match="record 3 qpos"):
        load_dexgraspnet(root)
    _edit_record(root, "obj-a", 3, "robot0:MFJ3", 0.0)  # ... and in again: the file loads
    dataset = load_dexgraspnet(root)
    np.testing.assert_allclose(dataset.scales[:2], [low, high])
    np.testing.assert_allclose(dataset.grasps[2, 9 + MFJ3], MFJ3_HIGH)


# --- meshes ------------------------------------------------------------------------------------


def test_obj_piece_with_too_few_vertices_is_a_data_error(tmp_path):
    path = tmp_path / "flat.obj"
    path.write_text(TET + "o convex_1\nv 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(DataError) as info:
        assets.read_obj_pieces(path)
    assert str(info.value) == (f"{path}: vertex count of convex piece 1 (from 0) is 3, outside [4, 100000] "
                               "(PhysicalBounds.piece_vertices)")


def test_obj_with_too_many_vertices_is_a_data_error(tmp_path, monkeypatch):
    # A million-vertex file is slow to write here; the bound is a field, so narrow it instead.
    monkeypatch.setattr(bounds, "BOUNDS", dataclasses.replace(BOUNDS, object_vertices=(4, 7)))
    path = tmp_path / "two.obj"
    path.write_text(TET + TET.replace("convex_0", "convex_1"))
    message = r"two.obj: vertex count is 8, outside \[4, 7\] \(PhysicalBounds.object_vertices\)"
    with pytest.raises(DataError, match=message):
        assets.read_obj_pieces(path)
    path.write_text(TET)
    assert len(assets.read_obj_pieces(path)) == 1


@pytest.mark.parametrize("vertex_scale, scale, density, error, message", [
    (1.0, 1e9, 500.0, ConfigError, "object scale is 1e+09, outside [0.01, 1] (PhysicalBounds.scale)"),
    (1.0, 0.1, 1e6, ConfigError, "object density is 1e+06, outside [1, 25000] (PhysicalBounds.density_kg_m3)"),
    (1000.0, 0.1, 500.0, DataError,
     "largest bounding-box side (m) at scale 0.1 is 100, outside [0.005, 2] (PhysicalBounds.extent_m)"),
    (0.1, 0.01, 500.0, DataError,
     "largest bounding-box side (m) at scale 0.01 is 0.001, outside [0.005, 2] (PhysicalBounds.extent_m)"),
    (50.0, 0.02, 25_000.0, DataError, ("object mass (kg) at scale 0.02 and density 25000 is 4166.67, outside "
                                       "[1e-05, 1000] (PhysicalBounds.mass_kg)")),
    (1.0, 0.01, 1.0, DataError, "object mass (kg) at scale 0.01 and density 1 is 1.66667e-07, outside"),
])
def test_mesh_object_outside_its_bounds(tmp_path, vertex_scale, scale, density, error, message):
    path = tmp_path / "tet.obj"
    path.write_text("".join(line if not line.startswith("v ") else
                            "v " + " ".join(f"{float(x) * vertex_scale:g}" for x in line.split()[1:]) + "\n"
                            for line in TET.splitlines(keepends=True)))
    with pytest.raises(error) as info:
        assets.mesh_object(path, scale, density=density)
    assert message in str(info.value)
    if error is DataError:
        assert str(path) in str(info.value)


def test_a_flat_piece_gets_a_thin_volume_not_a_qhull_error():
    flat = assets.ConvexPiece(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=np.float64))
    assert 0 <= flat.volume() < 1e-3


# --- protocols and flags -----------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("friction", 50.0), ("friction", 1e-6), ("finger_strength", 1e4), ("finger_kp", math.inf),
    ("finger_kp", 1e-4), ("object_density", 1e9), ("mass_scale", 1e6), ("acceleration", 1e5),
])
def test_hold_protocol_field_outside_its_bound(field, value):
    name = bounds.PROTOCOL_FIELDS[field]
    path = field if field == "acceleration" else f"physics.{field}"  # where the field sits now
    with pytest.raises(ConfigError) as info:
        protocol.protocol("strict", **{field: value})
    assert str(info.value) == f"protocol field {path} is {value:g}, outside {bounds.range_text(name)}"


@pytest.mark.parametrize("field, value", [
    ("friction", 11.0), ("finger_strength", 1e-3), ("finger_kp", 1e5), ("object_density", 0.5), ("mass_scale", 1e3),
])
def test_lift_protocol_field_outside_its_bound(field, value):
    with pytest.raises(ConfigError, match=rf"lift protocol field physics.{field} is .*\(PhysicalBounds\."):
        lift.LiftProtocol().replace(**{field: value})


def test_presets_and_the_experiments_settings_pass():
    for name in protocol.PROTOCOLS:
        protocol.protocol(name)
    protocol.protocol("strict", finger_kp=30.0, impratio=10.0, finger_strength=4.0, mass_scale=2.0,
                      object_density=125.0, acceleration=0.0)
    lift.LiftProtocol().replace(friction=0.5, finger_strength=0.5, mass_scale=2.0)


def test_scale_flag_of_the_sampler_is_checked_before_sampling():
    trained = types.SimpleNamespace(config=DiffusionConfig())  # resolve_object checks --scale first
    with pytest.raises(ConfigError, match=r"--scale is 5, outside \[0.01, 1\] \(PhysicalBounds.scale\)"):
        pipeline.resolve_object(trained, "builtin:box", scale=5.0)


def test_propose_scale_flag_outside_its_bound_exits_2(tmp_path, capsys):
    mesh = tmp_path / "tet.obj"
    mesh.write_text(TET)
    out = tmp_path / "proposals"
    assert main(["propose", "--object", str(mesh), "--scale", "1e9", "--out", str(out), "--no-label"]) == 2
    err = capsys.readouterr().err
    assert "object scale is 1e+09, outside [0.01, 1] (PhysicalBounds.scale)" in err and "Traceback" not in err
    assert not out.exists()


# --- legitimate data ---------------------------------------------------------------------------


@requires_shared_data
def test_the_shared_sample_passes_every_bound():
    dataset = load_dexgraspnet(SHARED_DATA)
    assert len(dataset) == 730 and not dataset.skipped
    for code in dataset.object_codes:
        for scale in np.unique(dataset.for_object(code).scales):
            obj = assets.mesh_object(dataset.mesh_path(code), float(scale), max_hull_vertices=None)
            assert BOUNDS.mass_kg[0] < obj.volume() * obj.density < BOUNDS.mass_kg[1]
    # The sample's joints leave their limits by up to 0.58 rad: the margin keeps them all, with room.
    assert grasp_lib.joint_limit_violation(dataset.grasps).max() < BOUNDS.joint_margin_rad - 0.3


@pytest.mark.parametrize("name", sorted(assets.BUILTIN_OBJECTS))
def test_builtin_objects_pass_every_bound(tmp_path, name):
    """As `diffrl propose builtin:NAME` and the example datasets write them: normalised mesh, natural scale."""
    pieces = example.object_mesh_pieces(assets.builtin_object(name))
    scale = 1.03 * max(np.linalg.norm(p, axis=1).max() for p in pieces)
    path = tmp_path / "decomposed.obj"
    path.write_text(example.obj_text([p / scale for p in pieces]))
    bounds.check(scale, "scale", "natural scale")
    bounds.check(assets.builtin_object(name).mass, "mass_kg", "mass")
    assets.mesh_object(path, scale)


def test_bounds_are_one_frozen_dataclass_of_ranges():
    with pytest.raises(dataclasses.FrozenInstanceError):
        BOUNDS.scale = (0.0, 1e9)
    for field in dataclasses.fields(PhysicalBounds):
        value = getattr(BOUNDS, field.name)
        if isinstance(value, tuple):
            assert len(value) == 2 and value[0] < value[1], field.name


# --- end to end --------------------------------------------------------------------------------


def test_validate_refuses_a_scale_of_1e9(root, tmp_path, capsys):
    path = _edit_record(root, "obj-a", 17, "scale", 1e9)
    out = tmp_path / "report.json"
    assert main(["validate", str(root), "--backend", "mujoco", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert f"{path}: record 17 scale is 1e+09, outside [0.01, 1] (PhysicalBounds.scale)" in err
    assert "Nan, Inf or huge value" not in err
    assert not out.exists()
