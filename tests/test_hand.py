"""The hand model against DexGraspNet's reference description."""

import xml.etree.ElementTree as ET

import mujoco
import numpy as np
import pytest

from _paths import SHARED_DATA
from diffrl_jax.data import rotations
from diffrl_jax.hand import constants, shadow

REFERENCE = SHARED_DATA.parents[1] / "reference" / "dexgraspnet_shadow_hand_wrist_free.xml"
requires_reference = pytest.mark.skipif(
    not REFERENCE.is_file(), reason=f"{REFERENCE} not found beside the repository"
)


@pytest.fixture(scope="module")
def model():
    return shadow.hand_spec().compile()


def _floats(text, default):
    return np.array([float(x) for x in text.split()]) if text else np.array(default, float)


@pytest.fixture(scope="module")
def reference():
    return ET.parse(REFERENCE).getroot()


def test_joint_names_and_order(model):
    names = [model.joint(i).name for i in range(model.njnt)]
    assert names == list(shadow.WRIST_JOINT_NAMES + constants.JOINT_NAMES)
    assert model.nq == model.nv == model.nu == 28


@requires_reference
def test_joints_match_reference(model, reference):
    ref_joints = [j for j in reference.iter("joint") if j.get("name", "").startswith("robot0:")]
    assert [j.get("name") for j in ref_joints] == list(constants.JOINT_NAMES)
    for j in ref_joints:
        ours = model.joint(j.get("name"))
        np.testing.assert_allclose(ours.range, _floats(j.get("range"), [0, 0]), atol=1e-9)
        axis = _floats(j.get("axis"), [0, 0, 1])
        np.testing.assert_allclose(model.jnt_axis[ours.id], axis / np.linalg.norm(axis), atol=1e-6)
    np.testing.assert_allclose(
        constants.JOINT_RANGES, [model.joint(n).range for n in constants.JOINT_NAMES]
    )


@requires_reference
def test_bodies_and_collision_geoms_match_reference(model, reference):
    for body in reference.iter("body"):
        name = body.get("name")
        ours = model.body(name)
        np.testing.assert_allclose(model.body_pos[ours.id], _floats(body.get("pos"), [0, 0, 0]),
                                   atol=1e-9, err_msg=name)
        quat = _floats(body.get("quat"), [1, 0, 0, 0])
        np.testing.assert_allclose(model.body_quat[ours.id], quat / np.linalg.norm(quat),
                                   atol=1e-6, err_msg=name)
    n_collision = 0
    for geom in reference.iter("geom"):
        name = geom.get("name") or ""
        if not name.startswith("robot0:C_"):
            continue
        n_collision += 1
        ours = model.geom(name)
        ref_type = geom.get("type")
        assert mujoco.mjtGeom(model.geom_type[ours.id]).name == f"mjGEOM_{ref_type.upper()}"
        size = _floats(geom.get("size"), [])
        np.testing.assert_allclose(model.geom_size[ours.id][: len(size)], size, err_msg=name)
        np.testing.assert_allclose(model.geom_pos[ours.id], _floats(geom.get("pos"), [0, 0, 0]),
                                   err_msg=name)
    assert n_collision == 18  # 2 palm boxes, metacarpal box, 15 capsules


def test_actuators(model):
    names = [model.actuator(i).name for i in range(model.nu)]
    assert names == [n.replace("robot0:", "robot0:A_")
                     for n in shadow.WRIST_JOINT_NAMES + constants.JOINT_NAMES]
    fingers = slice(6, 28)
    np.testing.assert_allclose(model.actuator_ctrlrange[fingers], constants.JOINT_RANGES)
    torque = model.actuator_forcerange[fingers, 1]
    # A real ShadowHand's joints exert well under 5 N m; none may be zero.
    assert np.all(torque > 0.5) and np.all(torque < 5.0)
    assert np.all(model.actuator_gainprm[:, 0] > 0)
    np.testing.assert_allclose(model.actuator_biasprm[:, 1], -model.actuator_gainprm[:, 0])


def test_wrist_joints_are_dexgraspnet_pose(model):
    rng = np.random.default_rng(0)
    data = mujoco.MjData(model)
    palm = model.body(constants.ROOT_BODY).id
    for _ in range(5):
        translation = rng.uniform(-0.2, 0.2, 3)
        euler = rng.uniform(-np.pi, np.pi, 3) * np.array([1, 0.5, 1])
        data.qpos[:6] = np.concatenate([translation, euler[::-1]])
        mujoco.mj_kinematics(model, data)
        np.testing.assert_allclose(data.xpos[palm], translation, atol=1e-12)
        np.testing.assert_allclose(data.xmat[palm].reshape(3, 3),
                                   rotations.euler_sxyz_to_matrix(euler), atol=1e-12)


def test_hand_holds_still_under_gravity(model):
    """Gravity compensation + stiff wrist servos: the hand does not sag or drift."""
    data = mujoco.MjData(model)
    data.qpos[6:] = constants.JOINT_RANGES.mean(axis=1)
    data.ctrl[:] = data.qpos
    start = data.qpos.copy()
    for _ in range(int(0.5 / model.opt.timestep)):
        mujoco.mj_step(model, data)
    assert np.all(np.isfinite(data.qpos))
    np.testing.assert_allclose(data.qpos[:3], start[:3], atol=1e-3)
    np.testing.assert_allclose(data.qpos[3:], start[3:], atol=2e-2)


def test_finger_servo_reaches_target(model):
    data = mujoco.MjData(model)
    target = constants.JOINT_RANGES.mean(axis=1)
    data.ctrl[6:] = target
    for _ in range(int(1.0 / model.opt.timestep)):
        mujoco.mj_step(model, data)
    np.testing.assert_allclose(data.qpos[6:], target, atol=2e-2)
