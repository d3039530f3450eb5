"""diffrl_jax.checkpoint: bitwise round trip, steps, keep-last, user errors."""

import json
import shutil

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffrl_jax import checkpoint
from diffrl_jax.errors import DataError


@flax.struct.dataclass
class _State:
    params: dict
    key: jax.Array
    typed_key: jax.Array
    step: jax.Array


def _state(seed: int = 0) -> _State:
    rng = np.random.default_rng(seed)
    return _State(
        params={
            "dense": {"kernel": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)},
            "layers": [jnp.asarray(rng.integers(-5, 5, 6), jnp.int32), jnp.float32(np.pi)],
        },
        key=jax.random.PRNGKey(seed + 123),  # legacy uint32[2]
        typed_key=jax.random.split(jax.random.key(seed), 3),  # key<fry>[3]
        step=jnp.int32(seed),
    )


def _leaves_bitwise_equal(a, b) -> bool:
    def raw(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x)

    la, lb = jax.tree.leaves(jax.tree.map(raw, a)), jax.tree.leaves(jax.tree.map(raw, b))
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in zip(la, lb)
    )


def test_round_trip_bitwise_with_config(tmp_path):
    state = _state(1)
    config = {"hidden": [32, 32], "lr": 3e-4, "name": "ppo"}
    path = checkpoint.save(tmp_path, 7, state, config)
    assert path == tmp_path.resolve() / "7"

    restored, restored_config = checkpoint.restore(tmp_path, _state(2))  # concrete target, other values
    assert type(restored) is _State
    assert _leaves_bitwise_equal(restored, state)
    assert restored.key.dtype == jnp.uint32
    assert jax.random.key_impl(restored.typed_key) == jax.random.key_impl(state.typed_key)
    assert restored_config == config
    assert checkpoint.load_config(tmp_path) == config

    abstract = jax.eval_shape(lambda: _state(0))
    restored, _ = checkpoint.restore(tmp_path, abstract)
    assert _leaves_bitwise_equal(restored, state)


def test_latest_step_and_keep_last(tmp_path):
    assert checkpoint.latest_step(tmp_path / "absent") is None
    assert checkpoint.latest_step(tmp_path) is None
    for step in (0, 5, 10, 15):
        checkpoint.save(tmp_path, step, _state(step), {"step": step}, keep=3)
    assert checkpoint.latest_step(tmp_path) == 15
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["10", "15", "5"]
    restored, config = checkpoint.restore(tmp_path, _state(0), step=5)
    assert config == {"step": 5}
    assert _leaves_bitwise_equal(restored, _state(5))
    assert checkpoint.load_config(tmp_path, step=10) == {"step": 10}
    with pytest.raises(DataError, match="step 0 not found"):
        checkpoint.restore(tmp_path, _state(0), step=0)
    with pytest.raises(DataError, match="already exists"):
        checkpoint.save(tmp_path, 15, _state(0), {})


def test_bad_directory_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        checkpoint.restore(tmp_path / "nope", _state())
    with pytest.raises(DataError, match="does not exist"):
        checkpoint.load_config(tmp_path / "nope")
    with pytest.raises(DataError, match="no checkpoint"):
        checkpoint.restore(tmp_path, _state())


def test_mismatching_target_raises_data_error(tmp_path):
    checkpoint.save(tmp_path, 1, _state(), {})
    wrong_shape = _state().replace(params={**_state().params, "dense": {"kernel": jnp.zeros((3, 5))}})
    expected = r"dense/kernel: checkpoint has float32\[3, 4\], target expects float32\[3, 5\]"
    with pytest.raises(DataError, match=expected):
        checkpoint.restore(tmp_path, wrong_shape)
    with pytest.raises(DataError, match="step: checkpoint has int32"):
        checkpoint.restore(tmp_path, _state().replace(step=jnp.float32(0)))
    with pytest.raises(DataError, match="missing from the checkpoint"):
        checkpoint.restore(tmp_path, {"other": jnp.zeros(3)})


def test_corrupt_checkpoint_raises_data_error(tmp_path):
    path = checkpoint.save(tmp_path, 1, _state(), {"a": 1})
    (path / "config" / "config.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot"):
        checkpoint.load_config(tmp_path)
    (path / "config" / "config.json").write_text(json.dumps({"a": 1}))
    for child in (path / "state").iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        elif child.name != "_METADATA":
            child.unlink()
    with pytest.raises(DataError, match="cannot"):
        checkpoint.restore(tmp_path, _state())


def _damage(step_dir, how: str) -> None:
    """Damage a complete step the way a disk fault or a careless copy would."""
    state = step_dir / "state"
    if how == "sharding":
        (state / "_sharding").write_text("overwritten{")
    elif how == "truncated":
        for data in (p for p in state.rglob("*") if p.is_file() and p.parent.name == "d"):  # array data
            data.write_bytes(data.read_bytes()[:16])
    elif how == "config":
        (step_dir / "config" / "config.json").write_text("{not json")


@pytest.mark.parametrize("how", ["sharding", "truncated", "config"])
def test_a_damaged_newest_step_is_moved_aside_and_the_previous_one_restored(tmp_path, how):
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, _state(step), {"step": step})
    _damage(tmp_path / "3", how)
    reports = []
    assert checkpoint.latest_intact_step(tmp_path, on_damaged=lambda *r: reports.append(r)) == 2
    [(step, reason, moved)] = reports
    assert step == 3 and reason and moved == tmp_path.resolve() / "3.damaged"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2", "3.damaged"]  # renamed, not deleted
    assert (moved / "state").is_dir()
    assert checkpoint.latest_step(tmp_path) == 2
    restored, config = checkpoint.restore(tmp_path, _state(0))
    assert config == {"step": 2} and _leaves_bitwise_equal(restored, _state(2))
    # A later save of the same step number is a fresh step beside the damaged one.
    checkpoint.save(tmp_path, 3, _state(3), {"step": 3})
    assert checkpoint.latest_intact_step(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2", "3", "3.damaged"]


def test_intact_steps_are_left_alone_and_skipping_does_not_move(tmp_path):
    assert checkpoint.latest_intact_step(tmp_path / "absent") is None
    assert checkpoint.latest_intact_step(tmp_path) is None
    for step in (1, 2):
        checkpoint.save(tmp_path, step, _state(step), {})
    assert checkpoint.latest_intact_step(tmp_path, on_damaged=pytest.fail) == 2
    _damage(tmp_path / "2", "sharding")
    reports = []
    assert checkpoint.latest_intact_step(tmp_path, move_aside=False, on_damaged=lambda *r: reports.append(r)) == 1
    assert reports[0][0] == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]


def test_no_intact_step_is_a_data_error(tmp_path):
    for step in (1, 2):
        checkpoint.save(tmp_path, step, _state(step), {})
        _damage(tmp_path / str(step), "sharding")
    with pytest.raises(DataError, match=r"no intact checkpoint in .*step 2: .*step 1: "):
        checkpoint.latest_intact_step(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.damaged", "2.damaged"]


def test_a_save_the_disk_refuses_is_an_output_error_and_leaves_no_step(tmp_path, monkeypatch):
    import errno

    import orbax.checkpoint as ocp

    from diffrl_jax.files import OutputError

    checkpoint.save(tmp_path, 1, _state(1), {"step": 1})

    async def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "config.json")

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "async_save", disk_full)
    with pytest.raises(OutputError, match="cannot write checkpoint .*2: No space left on device"):
        checkpoint.save(tmp_path, 2, _state(2), {"step": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]  # no orbax temporary directory left
    assert checkpoint.latest_intact_step(tmp_path) == 1
    assert _leaves_bitwise_equal(checkpoint.restore(tmp_path, _state(0))[0], _state(1))
