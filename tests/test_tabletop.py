"""The table-top dataset: (grasp, resting pose) pairs of real DexGraspNet grasps, labelled by the lift.

One run on a few grasps of the shared mug (MuJoCo C; the clearance program
is the only compile) is checked against the simulator's own measurements:
every written pair clears the table in its pose, its up-direction is its
resting pose's, held-out poses and grasps never reach the training split,
and a pair labelled lifted lifts again when replayed at its pose.
"""

import json

import numpy as np
import pytest

from diffrl_jax.cli.main import main
from diffrl_jax.data.dexgraspnet import load_dexgraspnet
from diffrl_jax.errors import ConfigError, DataError
from diffrl_jax.sim import resting
from diffrl_jax.workflows import tabletop
from tests._paths import SHARED_DATA, requires_shared_data

MUG = "core-mug-8570d9a8d24cb0acbebd3c0c0c70fb03"
CONFIG = tabletop.TabletopRunConfig(dataset=str(SHARED_DATA), objects=(MUG,), limit=40, poses=10, yaws=1,
                                    heldout_poses=0.2, heldout_grasps=0.25, seed=3)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    out = tmp_path_factory.mktemp("tabletop") / "out"
    return out, tabletop.run_tabletop(CONFIG, out)


@requires_shared_data
def test_pairs_clear_the_table_and_carry_their_pose(labelled):
    out, summary = labelled
    source = load_dexgraspnet(SHARED_DATA, objects=[MUG]).first_per_object(CONFIG.limit)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    n_out = tabletop.heldout_pose_count(CONFIG.poses, CONFIG.heldout_poses)
    assert n_out == 2
    total_clear = 0
    for scale, s in summary["objects"][MUG].items():
        bank = resting.RestingPoses.from_arrays(np.load(out / s["resting"]))
        assert len(bank.poses) == CONFIG.poses and abs(bank.class_frequency.sum() - 1) < 1e-9
        assert s["pairs"] == s["grasps"] * CONFIG.poses
        assert sum(c["train_clear_pairs"] + c["heldout_clear_pairs"] for c in s["classes"]) == s["clear_pairs"]
        total_clear += s["clear_pairs"]
    train = load_dexgraspnet(out)
    heldout = load_dexgraspnet(out / tabletop.HELDOUT_DIR)
    assert len(train) + len(heldout) == total_clear
    assert len(train) == summary["pairs"]["train"] and summary["pairs"]["train_lifted"] == int(
        train.extras["success"].sum())
    for part in (train, heldout):
        assert np.all(part.extras["clearance_m"] >= 0.0)  # the lift's table margin
        up = np.stack([part.extras[k] for k in ("up_x", "up_y", "up_z")], -1)
        np.testing.assert_allclose(np.linalg.norm(up, axis=1), 1.0, atol=1e-6)
        # The grasp is the source's, in the object frame, at the source's scale.
        rows = part.extras["grasp_index"].astype(int)
        np.testing.assert_allclose(part.grasps, source.grasps[rows], atol=1e-5)
        np.testing.assert_allclose(part.scales, source.scales[rows], atol=1e-6)
        assert set(np.unique(part.extras["success"])) <= {0, 1}
    # The up-direction is the resting pose's: R^T e_z of the bank's pose.
    for scale, s in summary["objects"][MUG].items():
        bank = resting.RestingPoses.from_arrays(np.load(out / s["resting"]))
        mine = np.abs(train.scales - float(scale)) < 1e-6
        up = np.stack([train.extras[k][mine] for k in ("up_x", "up_y", "up_z")], -1)
        np.testing.assert_allclose(up, bank.up[train.extras["pose_index"][mine].astype(int)], atol=1e-6)
    # Held-out poses are the last ones; they and held-out grasps stay out of training.
    assert np.all(train.extras["pose_index"] < CONFIG.poses - n_out)
    train_grasps = set(train.extras["grasp_index"].astype(int).tolist())
    heldout_grasps = set(heldout.extras["grasp_index"][heldout.extras["pose_index"] < CONFIG.poses - n_out]
                         .astype(int).tolist())
    assert not train_grasps & heldout_grasps


@requires_shared_data
def test_a_lifted_pair_lifts_again_and_labelling_is_deterministic(labelled):
    import jax.numpy as jnp

    from diffrl_jax.objects import assets
    from diffrl_jax.sim import backends, bank, lift

    out, summary = labelled
    train = load_dexgraspnet(out)
    lifted = np.flatnonzero(train.extras["success"] > 0)
    assert len(lifted), "the mug's DexGraspNet grasps lift in some resting poses"
    k = lifted[0]
    scale = float(train.scales[k])
    stem = summary["objects"][MUG][f"{scale:g}"]["resting"]
    poses = resting.RestingPoses.from_arrays(np.load(out / stem)).poses
    template = lift.make_template(lift.DEFAULT, bank.ObjectBudget(pieces=CONFIG.budget_pieces))
    obj = assets.mesh_object(train.mesh_path(MUG), scale, name=MUG, max_hull_vertices=template.budget.vertices)
    prepared = lift.prepare_object(template, obj)
    # Replayed at several yaws of its resting pose, the lifted grasp mostly lifts again.
    pose = poses[int(train.extras["pose_index"][k])]
    yawed = tabletop.yaw_poses(np.repeat(pose[None], 4, 0), np.linspace(0, 2 * np.pi, 4, endpoint=False))
    world = lift.grasp_to_world(jnp.asarray(np.repeat(train.grasps[k:k + 1], 4, 0), jnp.float32),
                                jnp.asarray(yawed, jnp.float32))
    result = backends.get("mujoco").lift(template, prepared, yawed, np.asarray(world))
    assert np.asarray(result.success).sum() >= 2
    # The same config and seed label the same pairs the same way.
    backend = backends.get("mujoco")
    source = load_dexgraspnet(SHARED_DATA, objects=[MUG]).first_per_object(8)
    a = tabletop.label_entry(backend, template, prepared, source.grasps, CONFIG, seed=1)
    b = tabletop.label_entry(backend, template, prepared, source.grasps, CONFIG, seed=1)
    for name in ("pose", "grasp", "success", "lift_rate"):
        np.testing.assert_array_equal(a[name], b[name])


def test_yawed_poses_keep_the_up_direction():
    rng = np.random.default_rng(0)
    quat = rng.normal(size=(5, 4))
    quat /= np.linalg.norm(quat, axis=1, keepdims=True)
    poses = np.concatenate([rng.normal(size=(5, 3)), quat], 1)
    yawed = tabletop.yaw_poses(poses, rng.uniform(0, 6, 5))
    np.testing.assert_allclose(resting.up_direction(yawed[:, 3:]), resting.up_direction(quat), atol=1e-9)
    np.testing.assert_array_equal(yawed[:, :3], poses[:, :3])
    assert not np.allclose(np.abs(yawed[:, 3:]), np.abs(quat))


def test_clear_pairs_and_heldout_counts():
    pose, grasp = tabletop.clear_pairs(np.array([[0.01, -0.02], [0.0, 0.03]]), 0.0)
    assert pose.tolist() == [0, 1, 1] and grasp.tolist() == [0, 0, 1]
    assert tabletop.heldout_pose_count(10, 0.2) == 2 and tabletop.heldout_pose_count(3, 0.1) == 1
    assert tabletop.heldout_pose_count(1, 0.5) == 0 and tabletop.heldout_pose_count(10, 0.0) == 0


def test_bad_configs_are_refused(tmp_path):
    for bad in (dict(poses=0), dict(yaws=0), dict(heldout_poses=1.0), dict(heldout_grasps=-0.1),
                dict(poses=1, heldout_poses=0.9), dict(limit=0), dict(poses=True)):
        with pytest.raises(ConfigError):
            tabletop.TabletopRunConfig(dataset="x", **bad).validate()
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "summary.json").write_text("{}")
    with pytest.raises(DataError, match="already holds"):
        tabletop.run_tabletop(tabletop.TabletopRunConfig(dataset=str(tmp_path)), tmp_path / "done")


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert main(["tabletop", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["tabletop", str(tmp_path), "--out", str(tmp_path / "o"), "--heldout-poses", "1.5"])
    assert e.value.code == 2
    assert not (tmp_path / "o").exists()


@requires_shared_data
def test_a_pose_conditioned_model_trains_on_the_pairs_and_evaluates(labelled, tmp_path, capsys):
    out, _ = labelled
    tiny = ["width=32", "depth=1", "time_dim=16", "block_steps=10", "warmup_steps=2", "checkpoint_every=10",
            "encoding_points=16", "encoding_samples=256", "pose_condition=true"]
    sets = [x for item in tiny for x in ("--set", item)]
    ckpt = tmp_path / "ckpt"
    # Every clear pair (--all-grasps), so the tiny run does not depend on how many lifted.
    assert main(["train", str(out), "--out", str(ckpt), "--steps", "10", "--batch", "16", "--all-grasps",
                 *sets]) == 0
    capsys.readouterr()
    argv = ["evaluate", str(ckpt), "--objects", MUG, "--poses", "2", "--candidates", "3", "--backend", "mujoco",
            "--videos", "0", "--select", "one-shot", "first", "--json", "--out", str(tmp_path / "eval")]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    mug = summary["objects"][MUG]
    assert mug["pose_condition"] is True and summary["config"]["pose_condition"] is True
    assert mug["pose_sampling"]["one-shot"]["physics_steps_choosing"] == 0
    assert mug["pose_sampling"]["one-shot"]["n_poses"] == 2
    # Without the pose (the null pose of dropout) the same model still samples.
    assert main([*argv[:-1], str(tmp_path / "eval-nopose"), "--pose", "off"]) == 0
    assert json.loads(capsys.readouterr().out)["objects"][MUG]["pose_condition"] is False
    # The pose-conditioned model on a dataset without up-direction labels.
    assert main(["train", str(SHARED_DATA), "--out", str(tmp_path / "bad"), "--steps", "10", *sets]) == 2
    assert "no up-direction labels" in capsys.readouterr().err


def test_concatenate_pools_datasets_by_object(tmp_path):
    from diffrl_jax.data.dexgraspnet import GraspDataset, concatenate

    rng = np.random.default_rng(0)

    def ds(codes, index, **extras):
        n = len(index)
        return GraspDataset(rng.normal(size=(n, 31)), np.full(n, 0.1), np.asarray(index, np.int32), codes,
                            extras={k: np.asarray(v) for k, v in extras.items()})

    a = ds(("b", "c"), [0, 1, 0], success=[1, 0, 1], only_a=[1, 2, 3])
    b = ds(("a", "b"), [1, 0], success=[0, 1])
    out = concatenate([a, b], label="dataset")
    assert out.object_codes == ("a", "b", "c")
    assert out.object_index.tolist() == [0, 1, 1, 1, 2]
    # Within an object: the first dataset's grasps first, each in its order.
    np.testing.assert_array_equal(out.grasps[1], a.grasps[0])
    np.testing.assert_array_equal(out.grasps[2], a.grasps[2])
    np.testing.assert_array_equal(out.grasps[3], b.grasps[0])
    assert out.extras["dataset"].tolist() == [1, 0, 0, 1, 0]
    assert out.extras["success"].tolist() == [1, 1, 1, 0, 0] and "only_a" not in out.extras
