"""diffrl_jax.parallel: meshes, padding, process shares, merges; sharded training and
sampling equal one device; two processes on localhost work as one.

conftest gives the test process four CPU devices.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from _paths import SHARED_DATA, requires_shared_data
from _toy_envs import PointMass
from diffrl_jax import parallel
from diffrl_jax.cli.main import main
from diffrl_jax.errors import ConfigError
from diffrl_jax.rl import ppo

import _diffusion_step

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

needs_devices = pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 devices (conftest sets 4 CPU devices)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _close(a, b, rtol=1e-5, atol=1e-6):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ------------------------------------------------------------------ helpers

def test_padding_repeats_the_last_row():
    tree = {"a": np.arange(5), "b": np.arange(10).reshape(5, 2)}
    padded, n = parallel.pad_batch(tree, 4)
    assert n == 5 and padded["a"].tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    assert padded["b"].shape == (8, 2) and (padded["b"][5:] == [8, 9]).all()
    same, n = parallel.pad_batch(tree, 5)
    assert n == 5 and same["a"] is tree["a"]
    assert parallel.padded_size(0, 4) == 4 and parallel.padded_size(9, 4) == 12
    with pytest.raises(ConfigError, match="disagree"):
        parallel.pad_batch({"a": np.zeros(3), "b": np.zeros(4)}, 2)


@needs_devices
def test_indivisible_batch_is_a_clear_error():
    mesh = parallel.data_mesh()
    with pytest.raises(ConfigError, match="does not divide over 4 devices.*multiple of 4 \\(e.g. 8\\)"):
        parallel.check_divisible(6, mesh, "batch size")
    with pytest.raises(ConfigError, match="batch size 6 does not divide"):
        parallel.shard_batch(np.zeros((6, 2)), mesh)
    parallel.check_divisible(6, None, "batch size")  # one device: anything goes


def test_process_share_partitions_and_balances():
    sizes = [16, 16, 3, 16, 16, 16, 1, 16]
    shares = [parallel.process_share(sizes, p, 3) for p in range(3)]
    assert sorted(np.concatenate(shares).tolist()) == list(range(len(sizes)))
    for s in shares:  # contiguous runs
        assert np.all(np.diff(s) == 1)
    work = [sum(sizes[i] for i in s) for s in shares]
    assert max(work) - min(work) <= 16, work
    assert parallel.process_share(sizes, 0, 1).tolist() == list(range(len(sizes)))
    assert parallel.process_share([], 0, 2).size == 0


def test_merge_rows_takes_each_row_from_its_process():
    a = {"done": np.array([1, 1, 0, 0], bool), "x": np.array([1.0, 2.0, 0.0, 0.0])}
    b = {"done": np.array([0, 0, 1, 0], bool), "x": np.array([9.0, 9.0, 3.0, 0.0])}
    merged = parallel.merge_rows([a, b])
    assert merged["done"].tolist() == [True, True, True, False]
    assert merged["x"].tolist() == [1.0, 2.0, 3.0, 0.0]
    with pytest.raises(ConfigError, match="overlap"):
        parallel.merge_rows([a, a])


def test_distributed_config_from_flags_and_environment():
    assert not parallel.DistributedConfig.from_env(environ={}).enabled
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    config = parallel.DistributedConfig.from_env(environ=env)
    assert (config.coordinator, config.num_processes, config.process_id) == ("10.0.0.1:1234", 4, 3)
    config = parallel.DistributedConfig.from_env(process_id=1, environ=env)  # a flag wins
    assert config.process_id == 1
    for kwargs, message in [
        (dict(coordinator="localhost:1"), "missing: number of processes, process id"),
        (dict(coordinator="localhost", num_processes=2, process_id=0), "HOST:PORT"),
        (dict(coordinator="localhost:99999", num_processes=2, process_id=0), "HOST:PORT"),
        (dict(coordinator="localhost:1", num_processes=2, process_id=2), "process id must lie in \\[0, 2\\)"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parallel.DistributedConfig.from_env(environ={}, **kwargs)
    with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES must be an integer"):
        parallel.DistributedConfig.from_env(environ={"JAX_NUM_PROCESSES": "two"})


def test_bad_distributed_flags_exit_2(capsys):
    assert main(["validate", "/nonexistent", "--coordinator", "localhost:1", "--num-processes", "2",
                 "--process-id", "5"]) == 2
    err = capsys.readouterr().err
    assert "process id must lie in [0, 2)" in err and "Traceback" not in err


# ------------------------------------------------------ sharded == one device

@needs_devices
def test_sharded_diffusion_training_equals_one_device():
    one, loss_one = _diffusion_step.run(None)
    four, loss_four = _diffusion_step.run(parallel.data_mesh())
    _close(one, four)
    assert abs(loss_one - loss_four) < 1e-5


@needs_devices
def test_sharded_diffusion_sampling_equals_one_device():
    from diffrl_jax.diffusion import sampler
    from diffrl_jax.diffusion.model import make_denoiser
    from diffrl_jax.diffusion.schedule import cosine_schedule
    from diffrl_jax.diffusion.train import Normaliser

    model = make_denoiser(data_dim=31, cond_dim=5, width=16, depth=1, time_dim=8)
    params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 31), np.float32), np.zeros((1,), np.int32),
                                 np.zeros((1, 5), np.float32), np.zeros((1,), bool))
    norm = Normaliser(np.zeros(31, np.float32), np.ones(31, np.float32))
    cond, key = np.ones(5, np.float32), jax.random.key(3)
    schedule = cosine_schedule(50)
    one = sampler.make_grasp_sampler(model, schedule, num_samples=8, steps=4)(params, norm, cond, key)
    mesh = parallel.data_mesh()
    sharded = sampler.make_grasp_sampler(model, schedule, num_samples=8, steps=4, mesh=mesh)
    out = sharded(*parallel.replicate((params, norm, cond), mesh), key)
    assert len(out.sharding.device_set) == 4
    _close(one, out)
    with pytest.raises(ConfigError, match="sample batch 6 does not divide"):
        sampler.make_grasp_sampler(model, schedule, num_samples=6, mesh=mesh)


PPO_CONFIG = ppo.PPOConfig(num_envs=16, unroll_length=5, episode_length=10, num_minibatches=2, num_epochs=2,
                           num_iterations=2, learning_rate=1e-3, policy_hidden_sizes=(16, 16),
                           value_hidden_sizes=(16, 16))


@needs_devices
def test_sharded_ppo_iteration_equals_one_device():
    env = PointMass()
    state = ppo.init(PPO_CONFIG, env, jax.random.PRNGKey(0))
    one_state, one_metrics = jax.jit(ppo.make_block(PPO_CONFIG, env, 2))(state)

    mesh = parallel.data_mesh()
    sharded = ppo.shard_state(state, mesh)
    assert len(sharded.env_state.obs.sharding.device_set) == 4
    block = jax.jit(ppo.make_block(PPO_CONFIG, env, 2, mesh),
                    out_shardings=(ppo.state_shardings(sharded, mesh), parallel.replicated_sharding(mesh)))
    four_state, four_metrics = block(sharded)
    assert four_state.env_state.obs.sharding.spec == parallel.batch_sharding(mesh).spec
    _close(one_state.params, four_state.params, rtol=1e-4, atol=1e-5)
    _close(one_state.env_state.obs, four_state.env_state.obs, rtol=1e-4, atol=1e-5)
    _close(one_metrics["reward"], four_metrics["reward"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="num_envs 6 does not divide"):
        ppo.make_iteration(PPO_CONFIG.replace(num_envs=6, num_minibatches=1), env, mesh)


# ------------------------------------------------------- several processes

def _spawn(argv, logs: Path):
    """A process of the group; output to files (a full pipe would block it, and with
    it the group's shutdown barrier)."""
    import os

    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{TESTS}", XLA_FLAGS="")
    n = len(list(logs.glob("*.out")))
    out, err = (open(logs / f"{n}.{kind}", "w") for kind in ("out", "err"))
    proc = subprocess.Popen([sys.executable, *argv], stdout=out, stderr=err, text=True, env=env, cwd=REPO)
    proc.logs = logs / f"{n}"
    return proc


def _wait(procs, timeout=300):
    outs = []
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        err = Path(f"{p.logs}.err").read_text()
        assert p.returncode == 0, err[-3000:]
        outs.append(Path(f"{p.logs}.out").read_text())
    return outs


@requires_shared_data
def test_two_processes_validate_together_like_one(tmp_path, capsys):
    common = ["validate", str(SHARED_DATA), "--backend", "mujoco", "--limit", "3", "--threads", "1", "--json"]
    assert main(common + ["--out", str(tmp_path / "one.json")]) == 0
    capsys.readouterr()
    one = json.loads((tmp_path / "one.json").read_text())

    port = _free_port()
    procs = [_spawn(["-m", "diffrl_jax.cli.main", *common, "--out", str(tmp_path / "two.json"),
                     "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)],
                    tmp_path) for i in range(2)]
    outs = _wait(procs)
    two = json.loads((tmp_path / "two.json").read_text())
    assert json.loads(outs[0]) == two and outs[1].strip() == ""  # process 0 prints and writes
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["objects"] == one["objects"]
    assert sum(o["n"] for o in two["objects"].values()) == 9

    parts = [np.load(tmp_path / f"two.part-{i}-of-2.npz") for i in range(2)]
    done = [p["done"] for p in parts]
    assert done[0].sum() > 0 and done[1].sum() > 0 and not (done[0] & done[1]).any()
    merged = parallel.merge_rows([{k: p[k] for k in p.files if k not in ("jit_s", "run_s")} for p in parts])
    assert merged["success"][merged["done"]].tolist() == sum(
        (o["success"] for o in one["objects"].values()), [])


@needs_devices
def test_two_processes_train_as_one_program(tmp_path):
    """2 processes x 2 CPU devices run one training program; it equals 4 devices in one process."""
    port = _free_port()
    procs = [_spawn([str(TESTS / "_diffusion_step.py"), f"localhost:{port}", "2", str(i)], tmp_path)
             for i in range(2)]
    results = [json.loads(out.strip().splitlines()[-1]) for out in _wait(procs)]
    reference, loss = _diffusion_step.run(parallel.data_mesh())
    for r in results:
        assert r["devices"] == 4
        assert abs(r["loss"] - loss) < 1e-5
        _close([np.asarray(x) for x in r["params"]], jax.tree.leaves(reference))
