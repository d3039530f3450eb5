"""An MJX scene compiles and steps on a CPU, without NaN, like the C engine.

One jitted rollout is compiled for the whole module (tens of seconds on a
CPU; JAX's persistent cache makes reruns cheap).
"""

import functools

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

from diffrl_jax import scene as scene_lib
from diffrl_jax.objects import assets

N_STEPS = 50
BATCH = 2


@pytest.fixture(scope="module")
def scene():
    return scene_lib.build_scene(
        assets.builtin_object("cylinder"), scene_lib.SceneConfig(table=True)
    )


@pytest.fixture(scope="module")
def rollout(scene):
    mjx = scene_lib.import_mjx()
    mx = scene.mjx_model()

    @jax.jit
    @functools.partial(jax.vmap, in_axes=(0, 0))
    def run(qpos, ctrl):
        data = mjx.make_data(mx).replace(qpos=qpos, ctrl=ctrl)

        def step(d, _):
            d = mjx.step(mx, d)
            return d, d.qpos

        return jax.lax.scan(step, data, None, length=N_STEPS)[1]

    return run


def _initial(scene):
    """World 0: hand far above; world 1: hand lower, fingers half closed."""
    qpos = np.tile(scene.model.qpos0, (BATCH, 1))
    qpos[0, :3] = [0.0, 0.0, 0.5]
    qpos[1, :3] = [0.0, -0.15, 0.05]
    qpos[1, 6:28] = 0.5 * (scene.model.jnt_range[6:28, 0] + scene.model.jnt_range[6:28, 1]) / 2
    ctrl = qpos[:, :28].copy()
    return qpos, ctrl


@pytest.mark.slow
def test_mjx_steps_without_nan_and_object_rests(scene, rollout):
    qpos, ctrl = _initial(scene)
    traj = np.asarray(rollout(jnp.asarray(qpos, jnp.float32), jnp.asarray(ctrl, jnp.float32)))
    assert traj.shape == (BATCH, N_STEPS, scene.model.nq)
    assert np.all(np.isfinite(traj))
    # The can stands on the table and the hands hold their poses.
    object_z = traj[:, -1, scene.object_qpos + 2]
    np.testing.assert_allclose(object_z, 0.0, atol=2e-3)
    np.testing.assert_allclose(traj[:, -1, :3], qpos[:, :3], atol=2e-3)


@pytest.mark.slow
def test_mjx_agrees_with_c_engine(scene, rollout):
    qpos, ctrl = _initial(scene)
    traj = np.asarray(rollout(jnp.asarray(qpos, jnp.float32), jnp.asarray(ctrl, jnp.float32)))
    model = scene.model
    for b in range(BATCH):
        data = mujoco.MjData(model)
        data.qpos[:] = qpos[b]
        data.ctrl[:] = ctrl[b]
        for _ in range(N_STEPS):
            mujoco.mj_step(model, data)
        # Same model, same integrator: hand joints agree closely; contacts differ in detail.
        np.testing.assert_allclose(traj[b, -1, :28], data.qpos[:28], atol=5e-3)
        np.testing.assert_allclose(traj[b, -1, 28:31], data.qpos[28:31], atol=2e-3)
