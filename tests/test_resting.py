"""Resting poses as data: drops settle at rest on the table, a box lies on its faces,
pose classes are stable under reseeding and under reordering, bad input is refused.

MuJoCo C only (the settle's MJX agreement is test_backends' and test_lift's), the
default lift protocol, a budget of four pieces, 64 drops per object."""

import numpy as np
import pytest

from diffrl_jax.data import rotations
from diffrl_jax.errors import ConfigError
from diffrl_jax.files import write_npz_atomic
from diffrl_jax.objects import assets
from diffrl_jax.sim import backends, bank, lift, resting

DROPS = 64


@pytest.fixture(scope="module")
def world():
    template = lift.make_template(lift.LiftProtocol(), bank.ObjectBudget(pieces=4))
    backend = backends.MuJoCo(nthread=1)
    prepared = {name: lift.prepare_object(template, assets.builtin_object(name)) for name in ("box", "mug")}
    banks = {(name, seed): resting.resting_bank(backend, template, prepared[name], DROPS, seed=seed)
             for name in prepared for seed in (0, 1)}
    return dict(template=template, prepared=prepared, banks=banks)


def test_drops_come_to_rest_on_the_table(world):
    template = world["template"]
    for (name, _), rest in world["banks"].items():
        fields = template.fields(world["prepared"][name])
        for pose in rest.poses:
            low = float(lift.lowest_point(fields, rotations.quat_to_matrix(pose[3:])))
            # The lowest point of the object touches the table top (soft contacts: < 2 mm in it).
            assert -0.002 < pose[2] + low < 0.001, (name, pose, low)
        np.testing.assert_allclose(np.linalg.norm(rest.up, axis=1), 1.0, atol=1e-9)
        np.testing.assert_allclose(rest.class_frequency.sum(), 1.0)
        assert np.all(np.diff(rest.class_frequency) <= 0)  # most frequent first


def test_a_box_lies_on_one_of_its_six_faces(world):
    for seed in (0, 1):
        rest = world["banks"][("box", seed)]
        # Each up-direction is within 3 degrees of a face normal (+-x, +-y, +-z).
        assert np.all(np.abs(rest.up).max(axis=1) > np.cos(np.radians(3.0)))
        assert rest.num_classes == 6
        np.testing.assert_allclose(np.abs(rest.class_up).max(axis=1), 1.0, atol=2e-3)


def _matched(a: resting.RestingPoses, b: resting.RestingPoses, min_frequency: float):
    """Classes of `a` at least `min_frequency` frequent, each matched to b's nearest class."""
    pairs = []
    for k in np.flatnonzero(a.class_frequency >= min_frequency):
        angle = np.degrees(np.arccos(np.clip(b.class_up @ a.class_up[k], -1, 1)))
        pairs.append((k, int(np.argmin(angle)), float(angle.min())))
    return pairs


def test_classes_are_stable_under_reseeding(world):
    for name in ("box", "mug"):
        a, b = world["banks"][(name, 0)], world["banks"][(name, 1)]
        for k, j, angle in _matched(a, b, 0.1):
            assert angle < a.tolerance_deg, (name, k, angle)
            # Frequencies agree within sampling error: 64 drops give a standard error of
            # at most 0.0625 per frequency, so a difference of two pooled errors is allowed.
            se = np.sqrt(2 * 0.25 / DROPS)
            assert abs(a.class_frequency[k] - b.class_frequency[j]) < 2 * se, (name, k)


def test_classes_do_not_depend_on_the_order_of_the_drops(world):
    rest = world["banks"][("mug", 0)]
    order = np.random.default_rng(0).permutation(DROPS)
    label, centres, frequency = resting.pose_classes(rest.up[order], rest.tolerance_deg)
    np.testing.assert_allclose(centres, rest.class_up, atol=1e-12)
    np.testing.assert_array_equal(frequency, rest.class_frequency)
    np.testing.assert_array_equal(label, rest.pose_class[order])


def test_up_direction_is_world_z_in_the_object_frame():
    # The object turned +90 degrees about x: its +y axis now points up.
    quat = np.array([np.cos(np.pi / 4), np.sin(np.pi / 4), 0.0, 0.0])
    np.testing.assert_allclose(resting.up_direction(quat), [0.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(resting.up_direction([1.0, 0, 0, 0]), [0.0, 0.0, 1.0])


def test_round_trip_through_a_file(world, tmp_path):
    rest = world["banks"][("box", 0)]
    path = tmp_path / "box.npz"
    write_npz_atomic(path, rest.to_arrays())
    with np.load(path) as f:
        back = resting.RestingPoses.from_arrays(f)
    for name in ("poses", "up", "pose_class", "class_up", "class_frequency"):
        np.testing.assert_array_equal(getattr(back, name), getattr(rest, name))
    assert back.tolerance_deg == rest.tolerance_deg


@pytest.mark.parametrize("up, tolerance, match", [
    (np.zeros((0, 3)), 15.0, "shape"),
    (np.ones((4, 2)), 15.0, "shape"),
    (np.ones((4, 3)), 0.0, "tolerance"),
    (np.ones((4, 3)), 95.0, "tolerance"),
    (np.ones((4, 3)), float("nan"), "tolerance"),
])
def test_bad_input(up, tolerance, match):
    with pytest.raises(ConfigError, match=match):
        resting.pose_classes(up, tolerance)


def test_bad_files_and_counts(world):
    rest = world["banks"][("box", 0)]
    arrays = rest.to_arrays()
    with pytest.raises(ConfigError, match="missing array 'up'"):
        resting.RestingPoses.from_arrays({k: v for k, v in arrays.items() if k != "up"})
    with pytest.raises(ConfigError, match="pose_class outside"):
        resting.RestingPoses.from_arrays({**arrays, "pose_class": arrays["pose_class"] + 10})
    with pytest.raises(ConfigError, match="non-finite"):
        resting.RestingPoses.from_arrays({**arrays, "poses": arrays["poses"] * np.nan})
    with pytest.raises(ConfigError, match="positive integer"):
        resting.resting_bank(backends.MuJoCo(), world["template"], world["prepared"]["box"], 0)
