"""Objects and scenes: sizes, masses, hull caps, collision filtering, physics sanity."""

import mujoco
import numpy as np
import pytest
from scipy import spatial

from _paths import SHARED_DATA, requires_shared_data
from diffrl_jax import scene as scene_lib
from diffrl_jax.errors import ConfigError, DataError
from diffrl_jax.hand import shadow
from diffrl_jax.objects import assets

BOTTLE = "sem-Bottle-437678d4bc6be981c8724d5673a063a6"
MUG = "core-mug-8570d9a8d24cb0acbebd3c0c0c70fb03"


def _mesh(code):
    return SHARED_DATA / "meshdata" / code / "coacd" / "decomposed.obj"


@pytest.mark.parametrize("name", sorted(assets.BUILTIN_OBJECTS))
def test_builtin_objects_have_realistic_size_and_mass(name):
    scene = scene_lib.build_scene(assets.builtin_object(name))
    model = scene.model
    mass = model.body_mass[scene.object_body]
    assert 0.05 < mass < 1.0, mass  # household objects: 50 g .. 1 kg
    np.testing.assert_allclose(mass, assets.builtin_object(name).mass, rtol=0.05)
    data = mujoco.MjData(model)
    mujoco.mj_kinematics(model, data)
    extent = 2 * model.geom_rbound[scene.object_geoms].max()
    assert 0.03 < extent < 0.3, extent  # fits a hand


def test_unknown_builtin_object():
    with pytest.raises(ConfigError, match="unknown built-in object 'teapot'"):
        assets.builtin_object("teapot")


@requires_shared_data
def test_mesh_object_pieces_capped_and_scaled():
    raw = assets.read_obj_pieces(_mesh(MUG))
    assert len(raw) == 27
    obj = assets.mesh_object(_mesh(MUG), 0.1, max_hull_vertices=24)
    assert obj.name == MUG and len(obj.pieces) == 27
    for piece, verts in zip(obj.pieces, raw):
        assert 4 <= len(piece.vertices) <= 24
        # The capped hull lies inside the scaled original.
        hull = spatial.Delaunay(verts * 0.1)
        assert np.all(hull.find_simplex(piece.vertices, tol=1e-9) >= 0)
    full = assets.mesh_object(_mesh(MUG), 0.1, max_hull_vertices=None)
    radius = np.linalg.norm(full.surface_points(), axis=1).max()
    assert 0.09 < radius < 0.1  # normalised mesh (radius ~ 1/1.03) times the scale
    scene = scene_lib.build_scene(obj)
    assert len(scene.object_geoms) == 27
    mass = scene.model.body_mass[scene.object_body]
    np.testing.assert_allclose(mass, obj.volume() * assets.DEFAULT_MESH_DENSITY, rtol=0.02)


def test_mesh_object_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="mesh file not found"):
        assets.mesh_object(tmp_path / "missing.obj", 0.1)
    bad = tmp_path / "bad.obj"
    bad.write_text("o convex_0\nv 0 0 nan\nv 1 0 0\nv 0 1 0\nv 0 0 1\n")
    with pytest.raises(DataError, match="non-finite"):
        assets.mesh_object(bad, 0.1)
    bad.write_text("o convex_0\nv 0 zero 0\n")
    with pytest.raises(DataError, match="not a readable OBJ"):
        assets.mesh_object(bad, 0.1)
    bad.write_text("# nothing\n")
    with pytest.raises(DataError, match="no vertices"):
        assets.mesh_object(bad, 0.1)
    good = tmp_path / "tet.obj"
    good.write_text("o convex_0\nv 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\n")
    for scale in (0.0, -1.0, float("nan")):
        with pytest.raises(DataError, match="scale must be a positive"):
            assets.mesh_object(good, scale)


def _collision_pairs(model):
    """Geom pairs that MuJoCo's broad phase may collide (contype/conaffinity rule)."""
    pairs = set()
    for g1 in range(model.ngeom):
        for g2 in range(g1 + 1, model.ngeom):
            if model.geom_bodyid[g1] == model.geom_bodyid[g2]:
                continue
            if (model.geom_contype[g1] & model.geom_conaffinity[g2]) or (
                model.geom_contype[g2] & model.geom_conaffinity[g1]
            ):
                pairs.add((g1, g2))
    return pairs


def _kinds(scene, pairs):
    hand, obj = set(scene.hand_geoms), set(scene.object_geoms)

    def kind(g):
        return "hand" if g in hand else "object" if g in obj else "table"

    return {tuple(sorted((kind(a), kind(b)))) for a, b in pairs}


def test_collision_filtering():
    obj = assets.builtin_object("cylinder")
    plain = scene_lib.build_scene(obj, scene_lib.SceneConfig(table=True))
    kinds = _kinds(plain, _collision_pairs(plain.model))
    assert kinds == {("hand", "object"), ("object", "table"), ("hand", "table")}
    selfish = scene_lib.build_scene(
        obj, scene_lib.SceneConfig(table=True, hand_self_collision=True))
    assert ("hand", "hand") in _kinds(selfish, _collision_pairs(selfish.model))


def test_scene_indices_and_table_placement():
    obj = assets.builtin_object("box")
    scene = scene_lib.build_scene(obj, scene_lib.SceneConfig(table=True))
    model = scene.model
    assert model.nq == 28 + 7 and model.nu == 28
    np.testing.assert_array_equal(scene.hand_qpos, np.arange(28))
    assert scene.object_qpos == 28
    assert len(scene.hand_geoms) == 18 and len(scene.fingertip_geoms) == 5
    top = model.geom_pos[scene.table_geom][2] + model.geom_size[scene.table_geom][2]
    np.testing.assert_allclose(top, -0.06, atol=1e-9)  # box half-height 6 cm


def test_object_rests_on_table_and_falls_without_it():
    """Physics sanity in the C engine: support holds, gravity acts."""
    obj = assets.builtin_object("cylinder")
    for table in (True, False):
        scene = scene_lib.build_scene(obj, scene_lib.SceneConfig(table=table))
        model, data = scene.model, mujoco.MjData(scene.model)
        data.qpos[:3] = [0.0, 0.0, 0.5]  # hand well away from the object
        data.ctrl[:3] = data.qpos[:3]
        for _ in range(int(0.5 / model.opt.timestep)):
            mujoco.mj_step(model, data)
        z = data.qpos[scene.object_qpos + 2]
        if table:
            assert abs(z) < 2e-3, z
        else:
            np.testing.assert_allclose(z, -0.5 * 9.81 * 0.5 ** 2, rtol=0.05)


def test_bad_scene_config():
    obj = assets.builtin_object("sphere")
    with pytest.raises(ConfigError, match="solver must be one of"):
        scene_lib.build_scene(obj, scene_lib.SceneConfig(solver="pgs"))
    with pytest.raises(ConfigError, match="timestep must be positive"):
        scene_lib.build_scene(obj, scene_lib.SceneConfig(timestep=0.0))
    with pytest.raises(ConfigError, match="strength"):
        scene_lib.build_scene(obj, scene_lib.SceneConfig(hand=shadow.HandConfig(strength=-1)))


@pytest.mark.parametrize("name", sorted(assets.BUILTIN_OBJECTS))
def test_builtin_scenes_are_mjx_compatible(name):
    """MJX accepts every built-in scene, table included (no cylinder-box pairs)."""
    scene = scene_lib.build_scene(assets.builtin_object(name), scene_lib.SceneConfig(table=True))
    assert scene.mjx_model().ngeom == scene.model.ngeom


@requires_shared_data
def test_dexgraspnet_scene_is_mjx_compatible():
    obj = assets.mesh_object(_mesh(BOTTLE), 0.1)
    scene = scene_lib.build_scene(obj, scene_lib.SceneConfig(table=True))
    assert scene.mjx_model().nmesh == 5


def test_mjx_rejects_unsupported_scene_clearly():
    """A true cylinder touches the palm's boxes, which MJX cannot collide."""
    obj = assets.ObjectAsset("can", (assets.Primitive("cylinder", (0.03, 0.05)),), mass=0.2)
    with pytest.raises(ConfigError, match="MJX cannot simulate the scene of 'can'"):
        scene_lib.build_scene(obj).mjx_model()
