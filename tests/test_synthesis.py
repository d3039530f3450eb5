"""Grasp synthesis: the hand's geometry, the energy's terms, the optimiser.

The hand model is checked against MuJoCo's kinematics and DexGraspNet's own
contact candidates; the object's signed distance against a cube's exact
values; each energy term against a hand-computed case; gradients against
finite differences; and the optimiser lowers the energy, deterministically.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.data import rotations
from diffrl_jax.errors import ConfigError
from diffrl_jax.hand import constants, shadow
from diffrl_jax.sim.geometry import hand_qpos
from diffrl_jax.synthesis import energy as energy_lib
from diffrl_jax.synthesis import hand_model as hm
from diffrl_jax.synthesis import object_sdf, optimize

REFERENCE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference"


def _random_grasps(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rot = rotations.rot6d_to_matrix(rng.normal(size=(n, 6)))
    low, high = constants.JOINT_RANGES.T
    return grasp_lib.make_grasps(rng.normal(size=(n, 3)) * 0.1, rot, rng.uniform(low, high, size=(n, 22)))


def _cube(half: float) -> np.ndarray:
    return half * np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)


def _icosphere(radius: float, subdivisions: int = 3) -> np.ndarray:
    t = (1 + 5 ** 0.5) / 2
    v = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
         (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    f = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
         (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
         (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    verts = [np.asarray(p, float) / np.linalg.norm(p) for p in v]
    for _ in range(subdivisions):
        cache, faces = {}, []

        def mid(i, j):
            key = (min(i, j), max(i, j))
            if key not in cache:
                m = verts[i] + verts[j]
                verts.append(m / np.linalg.norm(m))
                cache[key] = len(verts) - 1
            return cache[key]

        for a, b, c in f:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        f = faces
    return radius * np.asarray(verts)


@pytest.fixture(scope="module")
def hand():
    return hm.hand_model()


def test_forward_kinematics_is_mujocos(hand):
    model = shadow.hand_spec().compile()
    data = mujoco.MjData(model)
    palm = model.body(constants.ROOT_BODY).id
    fk = jax.jit(lambda g: hm.forward_kinematics(hand, g))
    for grasp in _random_grasps(4):
        data.qpos[:] = hand_qpos(grasp[None])[0]
        mujoco.mj_kinematics(model, data)
        rots, poss = fk(jnp.asarray(grasp, jnp.float32))
        np.testing.assert_allclose(np.asarray(poss), data.xpos[palm:], atol=1e-6)
        np.testing.assert_allclose(np.asarray(rots), data.xmat[palm:].reshape(-1, 3, 3), atol=1e-6)


def test_contact_candidates_lie_on_the_inner_side_of_their_capsules(hand):
    assert hand.num_contacts == 140 and len(hand.keypoint_body) == 19
    frames = hm.forward_kinematics(hand, jnp.asarray(_random_grasps(1)[0], jnp.float32))
    points, normals = hm.contact_candidates(hand, frames)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    # On their own capsule's surface (body frame), on or inside the hand in the world
    # (a candidate at a link's end sits inside the neighbouring link's cap).
    capsule = {int(b): i for i, b in enumerate(hand.capsule_body)}
    for body, local in zip(hand.contact_body, hand.contact_local):
        a, b = hand.capsule_a[capsule[int(body)]], hand.capsule_b[capsule[int(body)]]
        t = np.clip((local - a) @ (b - a) / ((b - a) @ (b - a)), 0, 1)
        assert np.linalg.norm(local - (a + t * (b - a))) == pytest.approx(hand.capsule_radius[capsule[int(body)]])
    distance = np.asarray(hm.hand_signed_distance(hand, frames, points))
    assert distance.max() < 1e-5
    outside = np.asarray(hm.hand_signed_distance(hand, frames, points + 0.003 * normals))
    assert outside.max() < 0.003 + 1e-5 and np.median(outside) == pytest.approx(0.003, abs=1e-5)


@pytest.mark.skipif(not (REFERENCE / "dexgraspnet_contact_points.json").is_file(),
                    reason="needs ../shared/reference (DexGraspNet's contact candidates)")
def test_contact_candidates_match_dexgraspnets(hand):
    reference = json.loads((REFERENCE / "dexgraspnet_contact_points.json").read_text())
    links = {name.removesuffix("_child"): np.asarray(points) for name, points in reference.items() if points}
    assert set(links) == set(hm.CONTACT_LINKS)
    for link, points in links.items():
        ours = hand.contact_local[hand.contact_body == hand.body_names.index(link)]
        normals = hand.contact_normal_local[hand.contact_body == hand.body_names.index(link)]
        # Same side of the link: the mean direction of DexGraspNet's points is our inner side.
        side = normals.mean(0) / np.linalg.norm(normals.mean(0))
        radial = points * np.array([1.0, 1.0, 0.0])
        mean = radial.mean(0) / np.linalg.norm(radial.mean(0))
        assert mean @ side > 0.95, link
        # Same span along the link (within 3 mm) and within 1 mm of our capsule's radius.
        assert abs(points[:, 2].min() - ours[:, 2].min()) < 3e-3 and abs(points[:, 2].max() - ours[:, 2].max()) < 3e-3
        radius = np.linalg.norm(ours[:, :2], axis=1).mean()
        np.testing.assert_allclose(np.linalg.norm(radial, axis=1), radius, atol=1e-3)


def test_cube_signed_distance_is_exact():
    sdf = object_sdf.object_sdf([_cube(0.03)], num_surface=64)
    points = jnp.array([[0.05, 0, 0], [0.05, 0.05, 0], [0.05, 0.05, 0.05], [0.01, 0, 0], [0, 0, -0.025]])
    d, n = jax.jit(object_sdf.signed_distance)(sdf, points)
    np.testing.assert_allclose(np.asarray(d), [0.02, 0.02 * 2 ** 0.5, 0.02 * 3 ** 0.5, -0.02, -0.005], atol=1e-6)
    np.testing.assert_allclose(np.asarray(n[0]), [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(n[1]), [2 ** -0.5, 2 ** -0.5, 0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(n[4]), [0, 0, -1], atol=1e-6)


def test_union_of_pieces_is_the_nearest_piece():
    sdf = object_sdf.object_sdf([_cube(0.02), _cube(0.02) + np.array([0.1, 0, 0])], num_surface=64)
    d, _ = object_sdf.signed_distance(sdf, jnp.array([[0.05, 0, 0], [0.09, 0, 0], [-0.03, 0, 0]]))
    np.testing.assert_allclose(np.asarray(d), [0.03, -0.01, 0.01], atol=1e-6)


def test_nearest_candidate_pieces_give_the_all_piece_distance():
    # A row of 8 cubes: 3 candidate pieces per point give every piece's exact answer.
    pieces = [_cube(0.01) + np.array([0.025 * i, 0.003 * (i % 3), 0.0]) for i in range(8)]
    sdf = object_sdf.object_sdf(pieces, num_surface=64)
    points = jnp.asarray(np.random.default_rng(0).uniform([-0.03, -0.03, -0.03], [0.21, 0.03, 0.03], (256, 3)),
                         jnp.float32)
    exact, exact_n = object_sdf.signed_distance(sdf, points, candidates=None)
    near, near_n = object_sdf.signed_distance(sdf, points, candidates=3)
    np.testing.assert_allclose(np.asarray(near), np.asarray(exact), atol=1e-7)
    np.testing.assert_allclose(np.asarray(near_n), np.asarray(exact_n), atol=1e-6)
    # Planes alone: exact depth inside, a lower bound of the distance outside.
    lower = np.asarray(object_sdf.plane_distance(sdf, points))
    inside = np.asarray(exact) < 0
    assert inside.any() and (~inside).any()
    np.testing.assert_allclose(lower[inside], np.asarray(exact)[inside], atol=1e-7)
    assert np.all(lower[~inside] <= np.asarray(exact)[~inside] + 1e-7)


DEXGRASPNET = REFERENCE.parent / "data" / "dexgraspnet"


@pytest.mark.skipif(not DEXGRASPNET.is_dir(), reason="needs ../shared/data/dexgraspnet")
def test_gradient_is_finite_next_to_a_sliver_triangle():
    # The shared mug's hull has near-collinear triangles; float32 barycentrics of one
    # made this point's gradient NaN under jit, and a NaN row stalled the whole batch.
    from diffrl_jax.workflows.synthesize import mesh_objects

    (mug,) = mesh_objects(DEXGRASPNET, codes=["core-mug-8570d9a8d24cb0acbebd3c0c0c70fb03"], scales=[0.1])
    sdf = object_sdf.object_sdf(mug.pieces, num_surface=64)
    points = jnp.tile(jnp.array([[-0.050699905, -0.08643119, -0.058394525]], jnp.float32), (2, 1))
    for candidates in (3, None):
        grad = jax.jit(jax.grad(lambda p: jnp.sum(object_sdf.signed_distance(sdf, p, candidates)[0])))(points)
        assert np.all(np.isfinite(np.asarray(grad))), candidates


def test_capsule_spheres_fill_the_capsules(hand):
    frames = hm.forward_kinematics(hand, jnp.asarray(_random_grasps(1, seed=3)[0], jnp.float32))
    centres, radii = hm.capsule_spheres(hand, frames)
    assert len(centres) == len(hand.sphere_body) and np.all(np.isin(hand.sphere_body, hand.capsule_body))
    # Every sphere lies in the hand; every surface point of a capsule is within the
    # bulge bound of some sphere of its capsule (so the spheres stand in for it).
    assert float(jnp.max(hm.hand_signed_distance(hand, frames, centres) + radii)) < 1e-5
    points, normals = hm.contact_candidates(hand, frames)
    gap = jnp.linalg.norm(points[:, None] - centres[None], axis=-1) - radii[None]
    r = hand.sphere_radius.min()
    assert float(jnp.max(jnp.min(gap, 1))) < r - np.sqrt(r ** 2 - (hm.SPHERE_SPACING / 2) ** 2) + 1e-6


def test_force_closure_of_an_antipodal_pinch_is_below_a_one_sided_contact():
    points = jnp.array([[0.03, 0, 0], [-0.03, 0, 0]])
    antipodal = energy_lib.force_closure(points, jnp.array([[1.0, 0, 0], [-1.0, 0, 0]]))
    one_sided = energy_lib.force_closure(points + jnp.array([0.06, 0, 0]), jnp.array([[1.0, 0, 0], [1.0, 0, 0]]))
    assert float(antipodal) == pytest.approx(0.0, abs=1e-12)
    assert float(one_sided) == pytest.approx(4.0, rel=1e-6)


def test_self_penetration_counts_close_pairs():
    points = jnp.array([[0.0, 0, 0], [0.015, 0, 0], [0.5, 0, 0]])
    assert float(energy_lib.self_penetration(points)) == pytest.approx(2 * 0.005, rel=1e-5)


def _hand_on_sphere(hand, gap: float, contact: int = 25, radius: float = 0.04):
    """The open hand, and a sphere whose surface is `gap` from contact candidate `contact` along its normal.

    Candidate 25 is at the middle of the index finger's distal phalanx; the sphere touches nothing else.
    """
    grasp = jnp.asarray(grasp_lib.make_grasps(np.zeros(3), np.eye(3), np.zeros(22)), jnp.float32)  # open hand
    frames = hm.forward_kinematics(hand, grasp)
    points, normals = hm.contact_candidates(hand, frames)
    centre = np.asarray(points[contact] + (radius + gap) * normals[contact])
    sdf = object_sdf.object_sdf([_icosphere(radius) + centre], num_surface=4096)
    return grasp, sdf


def test_energy_terms_of_a_hand_on_a_sphere(hand):
    # 5 mm away: contact distance 5 mm (to the polytope's tolerance), no penetration.
    grasp, sdf = _hand_on_sphere(hand, gap=0.005)
    terms = energy_lib.energy_terms(hand, sdf, grasp, jnp.array([25, 25]))
    assert float(terms["distance"]) == pytest.approx(2 * 0.005, abs=2 * 3e-4)
    assert float(terms["penetration"]) == 0.0
    # The pad of candidate 25 faces the sphere: its normal against the surface's.
    assert float(terms["alignment"]) == pytest.approx(0.0, abs=2e-3)
    # 3 mm into the finger: the deepest surface sample is about 3 mm inside the hand.
    grasp, sdf = _hand_on_sphere(hand, gap=-0.003)
    frames = hm.forward_kinematics(hand, grasp)
    depth = -np.asarray(hm.hand_signed_distance(hand, frames, sdf.surface))
    assert 0.002 < depth.max() < 0.0035
    terms = energy_lib.energy_terms(hand, sdf, grasp, jnp.array([25, 25]))
    assert float(terms["penetration"]) >= depth.max()
    assert float(terms["distance"]) == pytest.approx(2 * 0.003, abs=2 * 3e-4)


def test_joint_limit_term():
    joints = jnp.asarray(constants.JOINT_RANGES[:, 0]).at[0].add(-0.1).at[1].set(constants.JOINT_RANGES[1, 1] + 0.2)
    assert float(energy_lib.joint_limit_violation(joints)) == pytest.approx(0.3, abs=1e-6)


@pytest.mark.parametrize("gap, term", [(0.003, None), (-0.002, "penetration")])
def test_energy_gradient_matches_finite_differences(hand, gap, term):
    # Outside the object every term is smooth (the closest point moves continuously).
    # Inside, the normal is its face's, piecewise constant as in DexGraspNet, so
    # force closure jumps between faces: there only the penetration term is compared.
    grasp, sdf = _hand_on_sphere(hand, gap=gap)
    contacts = jnp.array([25, 60, 100, 135])
    weights = energy_lib.EnergyWeights()

    def total(g):
        terms = energy_lib.energy_terms(hand, sdf, g, contacts)
        return terms[term] if term else energy_lib.total_energy(terms, weights)

    f = jax.jit(total)
    grad = np.asarray(jax.jit(jax.grad(total))(grasp))
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
    for i, eps in ((0, 1e-4), (1, 1e-4), (2, 1e-4), (12, 1e-3), (20, 1e-3), (27, 1e-3)):
        step = jnp.zeros(31).at[i].set(eps)
        numeric = (float(f(grasp + step)) - float(f(grasp - step))) / (2 * eps)
        assert numeric == pytest.approx(grad[i], rel=0.05, abs=1e-3 + 1e-2 * float(np.abs(grad).max())), i


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError):
        optimize.SynthesisConfig(steps=0)
    with pytest.raises(ConfigError):
        optimize.SynthesisConfig(distance_low=0.05, distance_high=0.01)


# One small configuration for every optimiser test: they share its compiled programs.
SMALL = optimize.SynthesisConfig(steps=100, surface_points=256)


@pytest.fixture(scope="module")
def small_run():
    pieces = [_cube(0.03)]
    sdf = object_sdf.object_sdf(pieces, num_surface=SMALL.surface_points)
    points, normals = optimize.hull_samples(pieces, 512)
    config = SMALL
    synthesizer = optimize.make_synthesizer(config, batch=8, chunk=50)
    init = synthesizer.init(jax.random.key(0), sdf, jnp.asarray(points, jnp.float32),
                            jnp.asarray(normals, jnp.float32))
    states = []
    for _ in range(2):
        state = init
        for chunk in range(2):
            state = synthesizer.run(jax.random.fold_in(jax.random.key(1), chunk), sdf, state, chunk * 50)
        states.append(state)
    return synthesizer, sdf, init, states


def test_initial_palms_face_the_object_from_outside(small_run):
    _, sdf, init, _ = small_run
    translation, rotation, joints = grasp_lib.split_grasps(np.asarray(init.grasps, np.float64))
    centre = translation + np.einsum("nij,j->ni", rotation, optimize.PALM_CENTRE)
    d, _ = object_sdf.signed_distance(sdf, jnp.asarray(centre, jnp.float32))
    assert np.all(np.asarray(d) > 0.015)
    facing = -rotation[:, :, 1]  # the palm's inner normal (local -y) in the object frame
    to_object = -centre / np.linalg.norm(centre, axis=1, keepdims=True)
    assert np.all(np.sum(facing * to_object, axis=1) > 0.0)
    low, high = constants.JOINT_RANGES.T
    assert np.all((joints >= low - 1e-6) & (joints <= high + 1e-6))


def test_optimisation_lowers_the_energy_deterministically(small_run):
    synthesizer, sdf, init, (first, second) = small_run
    before, _ = synthesizer.energy(sdf, init.grasps, init.contacts)
    after, terms = synthesizer.energy(sdf, first.grasps, first.contacts)
    assert np.all(np.isfinite(np.asarray(after)))
    assert np.median(np.asarray(after)) < 0.5 * np.median(np.asarray(before))
    _, terms_before = synthesizer.energy(sdf, init.grasps, init.contacts)
    assert np.median(np.asarray(terms["distance"])) < 0.5 * np.median(np.asarray(terms_before["distance"]))
    np.testing.assert_allclose(np.asarray(after), np.asarray(first.energy), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(first.grasps), np.asarray(second.grasps))
    np.testing.assert_array_equal(np.asarray(first.contacts), np.asarray(second.contacts))


def _cube_mesh_dir(root: pathlib.Path, code: str = "cube") -> pathlib.Path:
    from diffrl_jax.data.dexgraspnet import write_mesh
    from diffrl_jax.data.example import obj_text

    write_mesh(root, code, obj_text([_cube(1.0 / 3 ** 0.5)]))  # radius 1, as DexGraspNet normalises
    return root


def test_synthesize_writes_a_labelled_dataset(small_run, tmp_path):
    from diffrl_jax.data.dexgraspnet import load_dexgraspnet
    from diffrl_jax.workflows.synthesize import run_synthesize

    root = _cube_mesh_dir(tmp_path / "meshes")
    result = run_synthesize(root, tmp_path / "out", scales=[0.052], grasps_per_object=8, config=SMALL,
                            batch=8, chunk=50, seed=0)
    dataset = load_dexgraspnet(tmp_path / "out")
    assert dataset.object_codes == ("cube",) and len(dataset) == 8 == result["grasps"]
    np.testing.assert_allclose(dataset.scales, 0.052)
    assert np.all(np.isfinite(dataset.grasps)) and not grasp_lib.joint_limit_violation(dataset.grasps).any()
    for name in ("energy",) + tuple(f"energy_{t}" for t in energy_lib.TERMS):
        assert dataset.extras[name].shape == (8,) and np.all(np.isfinite(dataset.extras[name]))
    # The cube at scale 0.052 is the optimiser test's cube (half side 0.03 to 0.1%): the written
    # energies are the optimised ones, well below those of initial grasps on it.
    synthesizer, sdf, init, _ = small_run
    before, _ = synthesizer.energy(sdf, init.grasps, init.contacts)
    assert np.median(dataset.extras["energy"]) < 0.5 * np.median(np.asarray(before))
    assert result["grasps_per_s"] > 0
    # Keeping half: the same run's 4 grasps of lowest energy, lowest first.
    half = run_synthesize(root, tmp_path / "half", scales=[0.052], grasps_per_object=8, config=SMALL,
                          batch=8, chunk=50, seed=0, keep=0.5)
    kept = load_dexgraspnet(tmp_path / "half")
    assert len(kept) == 4 == half["grasps"] and half["synthesised"] == 8
    order = np.argsort(dataset.extras["energy"], kind="stable")[:4]
    np.testing.assert_allclose(kept.extras["energy"], dataset.extras["energy"][order])
    np.testing.assert_allclose(kept.grasps, dataset.grasps[order])


@pytest.mark.parametrize("extra, message", [
    (["--steps", "120"], "multiple of the chunk"),
    ([], "no scale known"),
    (["--objects", "teapot", "--scale", "0.1"], "no mesh for teapot"),
    (["--set", "step_size=-1", "--scale", "0.1"], "step_size"),
    (["--keep", "0", "--scale", "0.1"], "keep must be a fraction"),
])
def test_synthesize_cli_bad_input_exits_2(tmp_path, capsys, extra, message):
    from diffrl_jax.cli.main import main

    root = _cube_mesh_dir(tmp_path / "meshes")
    if extra[:1] == ["--steps"]:
        extra = extra + ["--scale", "0.1"]
    assert main(["synthesize", str(root), "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
