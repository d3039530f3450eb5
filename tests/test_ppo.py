"""diffrl_jax.rl.ppo: GAE and loss numerics by hand, learning on toy tasks,
determinism, bitwise resume through diffrl_jax.checkpoint, seeds under vmap,
config errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from brax.training import networks as brax_networks
from brax.training.acme import running_statistics
from brax.training.agents.ppo import losses as brax_losses
from brax.training.agents.ppo import networks as brax_ppo_networks
from brax.training.distribution import NormalTanhDistribution

from _toy_envs import Bandit, PointMass
from diffrl_jax import checkpoint
from diffrl_jax.errors import ConfigError
from diffrl_jax.rl import ppo

SMALL = dict(policy_hidden_sizes=(32, 32), value_hidden_sizes=(32, 32))
# Tuned over seeds 0-5: the bandit reaches -0.002..-0.011 (deterministic policy),
# the point mass -0.98..-1.01; the thresholds below leave several times that margin.
BANDIT_CONFIG = ppo.PPOConfig(
    num_envs=128, unroll_length=1, episode_length=1, num_minibatches=4, num_epochs=4,
    num_iterations=60, learning_rate=3e-3, entropy_cost=1e-2, **SMALL,
)
POINT_MASS_CONFIG = ppo.PPOConfig(
    num_envs=32, unroll_length=10, episode_length=10, num_minibatches=4, num_epochs=4,
    num_iterations=80, learning_rate=1e-3, entropy_cost=1e-3, discount=0.9, **SMALL,
)


def _bitwise_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.asarray(x).tobytes() == np.asarray(y).tobytes()
        for x, y in zip(la, lb)
    )


def _train_state_parts(state):
    key = state.key
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)  # typed keys are compared through their data
    return (state.params, state.opt_state, state.normalizer_params, state.env_state,
            state.episode_step, state.episode_return, key,
            state.iteration, state.env_steps)


# ---------------------------------------------------------------------------
# GAE


def test_gae_by_hand_with_termination_and_truncation():
    discount, lam = 0.5, 0.5
    rewards = np.array([1.0, 2.0, 3.0, 4.0])
    values = np.array([0.5, 1.0, 1.5, 2.0])
    bootstrap = 3.0
    # Env 0: one episode running through. Env 1: terminated at t=1, truncated at t=3.
    termination = np.array([[0, 0], [0, 1], [0, 0], [0, 0]], np.float32)
    truncation = np.array([[0, 0], [0, 0], [0, 0], [0, 1]], np.float32)

    # Env 0: d_t = r_t + g V_{t+1} - V_t; A_t = d_t + g l A_{t+1}.
    d3 = 4 + 0.5 * 3.0 - 2.0  # 3.5
    d2 = 3 + 0.5 * 2.0 - 1.5  # 2.5
    d1 = 2 + 0.5 * 1.5 - 1.0  # 1.75
    d0 = 1 + 0.5 * 1.0 - 0.5  # 1.0
    a3 = d3
    a2 = d2 + 0.25 * a3
    a1 = d1 + 0.25 * a2
    a0 = d0 + 0.25 * a1
    env0 = [a0, a1, a2, a3]
    # Env 1: t=3 truncated -> no signal; t=2 bootstraps from V_3 but nothing beyond;
    # t=1 terminated -> no bootstrap, no carry; t=0 carries A_1.
    b3 = 0.0
    b2 = (3 + 0.5 * 2.0 - 1.5) + 0.25 * b3  # 2.5
    b1 = 2 + 0.0 - 1.0  # 1.0
    b0 = (1 + 0.5 * 1.0 - 0.5) + 0.25 * b1  # 1.25
    env1 = [b0, b1, b2, b3]
    expected_adv = np.stack([env0, env1], axis=1)

    vs, adv = ppo.compute_gae(
        truncation=jnp.asarray(truncation),
        termination=jnp.asarray(termination),
        rewards=jnp.asarray(np.stack([rewards, rewards], 1), jnp.float32),
        values=jnp.asarray(np.stack([values, values], 1), jnp.float32),
        bootstrap_value=jnp.array([bootstrap, bootstrap], jnp.float32),
        lambda_=lam,
        discount=discount,
    )
    np.testing.assert_allclose(adv, expected_adv, rtol=1e-6)
    np.testing.assert_allclose(vs, expected_adv + np.stack([values, values], 1), rtol=1e-6)


def test_gae_agrees_with_brax():
    rng = np.random.default_rng(0)
    T, B = 7, 5
    termination = (rng.random((T, B)) < 0.2).astype(np.float32)
    truncation = ((rng.random((T, B)) < 0.2) & (termination == 0)).astype(np.float32)
    args = dict(truncation=truncation, termination=termination,
                rewards=rng.standard_normal((T, B)).astype(np.float32),
                values=rng.standard_normal((T, B)).astype(np.float32),
                bootstrap_value=rng.standard_normal(B).astype(np.float32), discount=0.9)
    args = {k: jnp.asarray(v) for k, v in args.items()}
    ours_vs, ours_adv = ppo.compute_gae(lambda_=0.8, **args)
    brax_vs, _ = brax_losses.compute_gae(lambda_=0.8, **args)
    np.testing.assert_allclose(ours_vs, brax_vs, rtol=1e-5, atol=1e-6)
    # brax's advantage (r + g vs_{t+1} - V_t) is GAE only for lambda = 1.
    ours_vs, ours_adv = ppo.compute_gae(lambda_=1.0, **args)
    _, brax_adv = brax_losses.compute_gae(lambda_=1.0, **args)
    np.testing.assert_allclose(ours_adv, brax_adv, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Loss


def _direct_networks():
    """Policy logits = the observation; value = a scalar parameter."""
    policy = brax_networks.FeedForwardNetwork(init=None, apply=lambda norm, p, obs: obs * p["scale"])
    value = brax_networks.FeedForwardNetwork(
        init=None, apply=lambda norm, p, obs: jnp.full(obs.shape[:-1], p["v"])
    )
    return brax_ppo_networks.PPONetworks(policy, value, NormalTanhDistribution(event_size=1))


def _direct_batch(ratios, advantages, targets, mask=None):
    networks = _direct_networks()
    n = len(ratios)
    logits = jnp.tile(jnp.array([[0.2, 0.3]]), (n, 1))  # loc 0.2, softplus(0.3) + 1e-3 std
    raw_action = jnp.linspace(-0.5, 0.5, n)[:, None]
    new_log_prob = networks.parametric_action_distribution.log_prob(logits, raw_action)
    batch = ppo.Batch(
        obs=logits, raw_action=raw_action,
        log_prob=new_log_prob - jnp.log(jnp.asarray(ratios, jnp.float32)),  # so new/old = ratio
        advantage=jnp.asarray(advantages, jnp.float32),
        target_value=jnp.asarray(targets, jnp.float32),
        mask=jnp.ones(n) if mask is None else jnp.asarray(mask, jnp.float32),
    )
    params = ppo.PPONetworkParams(policy={"scale": jnp.float32(1.0)}, value={"v": jnp.float32(0.5)})
    return networks, params, batch


def test_loss_terms_by_hand():
    config = ppo.PPOConfig(clip_epsilon=0.2, value_cost=0.5, entropy_cost=0.1, normalize_advantage=False)
    ratios = [1.5, 1.5, 0.5, 0.5, 1.1]
    advantages = [2.0, -2.0, 2.0, -2.0, 3.0]
    targets = [0.5, 1.5, -0.5, 0.5, 2.5]
    networks, params, batch = _direct_batch(ratios, advantages, targets)
    key = jax.random.key(0)
    loss, metrics = ppo.ppo_loss(params, None, batch, key, networks=networks, config=config)

    # min(r A, clip(r, 0.8, 1.2) A) for each sample, written out:
    surrogates = [min(1.5 * 2, 1.2 * 2), min(1.5 * -2, 1.2 * -2), min(0.5 * 2, 0.8 * 2),
                  min(0.5 * -2, 0.8 * -2), min(1.1 * 3, 1.1 * 3)]
    assert surrogates == [2.4, -3.0, 1.0, -1.6, 1.1 * 3]
    policy_loss = -sum(surrogates) / 5
    # V = 0.5 everywhere against the targets above.
    squared_errors = [(0.5 - 0.5) ** 2, (0.5 - 1.5) ** 2, (0.5 + 0.5) ** 2,
                      (0.5 - 0.5) ** 2, (0.5 - 2.5) ** 2]
    value_loss = 0.5 * 0.5 * sum(squared_errors) / 5
    # Tanh-normal entropy, one-sample estimate at x = loc + std * eps:
    # 0.5 + 0.5 log(2 pi) + log std + log(1 - tanh(x)^2).
    std = math.log1p(math.exp(0.3)) + 1e-3
    eps = np.asarray(jax.random.normal(key, (5, 1)))[:, 0]
    x = 0.2 + std * eps
    entropy = np.mean(0.5 + 0.5 * np.log(2 * np.pi) + np.log(std) + np.log(1 - np.tanh(x) ** 2))

    np.testing.assert_allclose(metrics["policy_loss"], policy_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["value_loss"], value_loss, rtol=1e-6)
    np.testing.assert_allclose(metrics["entropy"], entropy, rtol=1e-4)
    np.testing.assert_allclose(metrics["entropy_loss"], -0.1 * entropy, rtol=1e-4)
    np.testing.assert_allclose(loss, policy_loss + value_loss - 0.1 * entropy, rtol=1e-5)
    assert float(metrics["clip_fraction"]) == pytest.approx(4 / 5)
    approx_kl = np.mean([(r - 1) - math.log(r) for r in ratios])
    np.testing.assert_allclose(metrics["approx_kl"], approx_kl, rtol=1e-4)


def test_loss_zero_advantage_masking_and_clipped_gradient():
    config = ppo.PPOConfig(normalize_advantage=False, entropy_cost=0.0, value_cost=1.0)
    networks, params, batch = _direct_batch([1.3, 0.7], [0.0, 0.0], [0.5, 0.5])
    _, metrics = ppo.ppo_loss(params, None, batch, jax.random.key(0), networks=networks, config=config)
    assert float(metrics["policy_loss"]) == 0.0
    assert float(metrics["value_loss"]) == 0.0

    # A masked (truncated) sample counts nowhere, also not in advantage normalisation.
    config = config.replace(normalize_advantage=True)
    networks, params, batch = _direct_batch(
        [1.0, 1.0, 1.0], [1.0, 3.0, 100.0], [0.5, 0.5, 99.0], mask=[1, 1, 0]
    )
    _, metrics = ppo.ppo_loss(params, None, batch, jax.random.key(0), networks=networks, config=config)
    # normalised advantages of [1, 3]: [-1, 1] -> mean surrogate 0.
    assert abs(float(metrics["policy_loss"])) < 1e-6
    assert float(metrics["value_loss"]) == 0.0

    # Ratio above 1 + eps with a positive advantage: clipped, no policy gradient.
    config = config.replace(normalize_advantage=False)
    # (ratio, advantage, gradient expected): clipped where the ratio has moved past
    # 1 +- eps in the direction the advantage rewards.
    cases = [(1.5, 1.0, False), (1.1, 1.0, True), (1.5, -1.0, True), (0.5, -1.0, False),
             (0.5, 1.0, True)]
    networks, params, batch = _direct_batch(*zip(*[(r, a, 0.5) for r, a, _ in cases]))

    def loss(p, b):
        return ppo.ppo_loss(p, None, b, jax.random.key(0), networks=networks, config=config)[0]

    per_sample_grad = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))
    one_sample_batches = jax.tree.map(lambda x: x[:, None], batch)
    grads = per_sample_grad(params, one_sample_batches).policy["scale"]
    for (ratio, advantage, has_gradient), grad in zip(cases, np.asarray(grads)):
        assert (grad != 0.0) == has_gradient, (ratio, advantage, grad)


# ---------------------------------------------------------------------------
# Learning


def _evaluate(env, config, state, key, num_envs=512, steps=1):
    """Mean undiscounted return of the deterministic policy over fresh episodes
    of at most `steps` steps (rewards after termination not counted)."""
    networks = ppo.make_networks(env.observation_size, env.action_size, config)
    policy = ppo.make_policy(networks, state.params, state.normalizer_params, deterministic=True)
    return _evaluate_policy(env, policy, key, num_envs, steps)


def _evaluate_policy(env, policy, key, num_envs, steps):
    env_state = jax.vmap(env.reset)(jax.random.split(key, num_envs))

    def step(carry, _):
        env_state, alive, total = carry
        env_state = jax.vmap(env.step)(env_state, policy(env_state.obs, key))
        total = total + alive * env_state.reward
        return (env_state, alive * (1 - env_state.done), total), None

    carry = (env_state, jnp.ones(num_envs), jnp.zeros(num_envs))
    (_, _, total), _ = jax.lax.scan(step, carry, None, steps)
    return float(jnp.mean(total))


def _uniform_policy(action_size):
    def policy(obs, key):
        return jax.random.uniform(key, obs.shape[:-1] + (action_size,), minval=-1.0, maxval=1.0)

    return policy


@pytest.fixture(scope="module")
def bandit_run():
    env = Bandit()
    train = jax.jit(ppo.make_train(BANDIT_CONFIG, env))
    state, metrics = train(jax.random.key(0))
    return env, train, state, metrics


def test_ppo_solves_contextual_bandit(bandit_run):
    env, _, state, metrics = bandit_run
    key = jax.random.key(123)
    # Uniform random actions: about -0.83 (see Bandit); optimum 0.
    baseline = _evaluate_policy(env, _uniform_policy(2), key, 4096, 1)
    assert -0.95 < baseline < -0.7
    trained = _evaluate(env, BANDIT_CONFIG, state, key)
    assert trained > -0.05, (baseline, trained)
    assert metrics["reward"].shape == (BANDIT_CONFIG.num_iterations,)
    assert set(metrics) >= {"reward", "episode_return", "total_loss", "policy_loss", "value_loss",
                            "entropy", "approx_kl", "clip_fraction", "grad_norm", "env/error"}
    assert int(state.iteration) == BANDIT_CONFIG.num_iterations
    assert int(state.env_steps) == BANDIT_CONFIG.num_iterations * BANDIT_CONFIG.batch_size
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in metrics.values())


def test_ppo_solves_point_mass_with_time_limit():
    env = PointMass()
    state, metrics = jax.jit(ppo.make_train(POINT_MASS_CONFIG, env))(jax.random.key(1))
    key = jax.random.key(7)
    # Random policy: about -6.7 over 10 steps; moving straight to the goal: about -1.
    baseline = _evaluate_policy(env, _uniform_policy(1), key, 4096, 10)
    assert baseline < -5.0
    trained = _evaluate(env, POINT_MASS_CONFIG, state, key, steps=10)
    assert trained > -1.6, (baseline, trained)
    # Episodes end both by reaching the goal (termination) and by the time limit (truncation).
    assert float(metrics["truncated_fraction"][0]) > 0
    assert float(metrics["episode_length"][-1]) < 6


def test_feature_constant_in_the_first_batch_does_not_blow_up_the_update():
    """With unroll_length 1 of a 5-step episode the first batch holds only
    first steps, where PointMass's progress feature t / horizon is 0: the
    normaliser's std for it is the 1e-6 floor. The next rollout's t = 0.1
    normalised is 1e5 unless `observation_clip` bounds it; unclipped, that
    iteration's entropy fell to about -700 and its value loss rose to 4e7."""
    config = ppo.PPOConfig(num_envs=16, unroll_length=1, episode_length=5, num_minibatches=2,
                           num_iterations=4, learning_rate=3e-4, init_action_std=0.1, **SMALL)
    assert config.observation_clip == 5.0
    _, metrics = jax.jit(ppo.make_train(config, PointMass()))(jax.random.key(0))
    entropy, value_loss = np.asarray(metrics["entropy"]), np.asarray(metrics["value_loss"])
    # A tanh-normal of pre-tanh std 0.1 in one dimension: entropy about -0.9.
    assert entropy.min() > -2.0, entropy
    assert value_loss.max() < 10.0, value_loss


def test_observation_clip_bounds_the_normalised_input():
    config = ppo.PPOConfig(observation_clip=5.0, init_action_std=0.1, **SMALL)
    networks = ppo.make_networks(2, 1, config)
    params = networks.policy_network.init(jax.random.key(0))
    # Feature 1 has been constant: std at the normaliser's floor.
    stats = running_statistics.update(running_statistics.init_state(jnp.zeros(2)), jnp.zeros((8, 2)))
    far = networks.policy_network.apply(stats, params, jnp.array([[0.0, 1e3]]))
    past_clip = networks.policy_network.apply(stats, params, jnp.array([[0.0, 1e-5]]))  # 10 std
    np.testing.assert_array_equal(np.asarray(far), np.asarray(past_clip))
    unclipped = ppo.make_networks(2, 1, config.replace(observation_clip=None))
    assert not np.array_equal(np.asarray(unclipped.policy_network.apply(stats, params, jnp.array([[0.0, 1e3]]))),
                              np.asarray(far))


# ---------------------------------------------------------------------------
# Determinism, resume, seeds


def test_same_key_same_params(bandit_run):
    env, train, state, _ = bandit_run
    again, _ = train(jax.random.key(0))
    assert _bitwise_equal(_train_state_parts(state), _train_state_parts(again))


def test_resume_through_checkpoint_is_bitwise(tmp_path):
    # Multi-step env: the env state and the episode counters must survive too.
    config = POINT_MASS_CONFIG.replace(num_envs=16, unroll_length=3, num_iterations=6)
    env = PointMass()
    iteration = jax.jit(ppo.make_iteration(config, env))
    # Restored arrays are committed to their device, and jit keys its cache on that:
    # commit the fresh state too, so both paths share one compiled program (a
    # process that only resumes compiles once either way).
    start = jax.device_put(ppo.init(config, env, jax.random.key(3)), jax.devices()[0])

    straight = start
    for _ in range(config.num_iterations):
        straight, _ = iteration(straight)
    assert iteration._cache_size() == 1  # weak types stripped: outputs feed back without retracing

    resumed = start
    for _ in range(2):
        resumed, _ = iteration(resumed)
    checkpoint.save(tmp_path, 2, resumed, {"ppo": config.to_json()})
    abstract = jax.eval_shape(lambda: ppo.init(config, env, jax.random.key(0)))
    resumed, saved = checkpoint.restore(tmp_path, abstract)
    assert ppo.PPOConfig.from_json(saved["ppo"]) == config
    for _ in range(config.num_iterations - 2):
        resumed, _ = iteration(resumed)
    assert _bitwise_equal(_train_state_parts(straight), _train_state_parts(resumed))
    assert iteration._cache_size() == 1

    # A scanned block runs the same iterations (equal up to XLA's fusion choices).
    block_state, block_metrics = jax.jit(ppo.make_block(config, env, config.num_iterations))(start)
    assert block_metrics["reward"].shape == (config.num_iterations,)
    block_leaves = jax.tree.leaves(_train_state_parts(block_state))
    for a, b in zip(block_leaves, jax.tree.leaves(_train_state_parts(straight)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_vmapped_train_over_seeds():
    config = BANDIT_CONFIG.replace(num_envs=16, num_iterations=3)
    train = jax.jit(jax.vmap(ppo.make_train(config, Bandit())))
    state, metrics = train(jax.random.split(jax.random.key(0), 2))
    assert metrics["reward"].shape == (2, 3)
    kernel = state.params.policy["params"]["hidden_0"]["kernel"]
    assert kernel.shape[0] == 2
    assert not np.array_equal(kernel[0], kernel[1])
    assert not np.array_equal(metrics["reward"][:, -1][0], metrics["reward"][:, -1][1])


# ---------------------------------------------------------------------------
# Config and networks


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_envs=0), "num_envs must be an integer >= 1"),
        (dict(num_envs=2.5), "num_envs"),
        (dict(num_envs=10, num_minibatches=4), "divisible by num_minibatches"),
        (dict(discount=1.5), "discount"),
        (dict(clip_epsilon=0.0), "clip_epsilon"),
        (dict(learning_rate=float("nan")), "learning_rate"),
        (dict(entropy_cost=-1.0), "entropy_cost"),
        (dict(policy_hidden_sizes=(32, 0)), "policy_hidden_sizes"),
        (dict(normalize_advantage=1), "normalize_advantage"),
        (dict(observation_clip=0.0), "observation_clip"),
        (dict(observation_clip=float("inf")), "observation_clip"),
        (dict(bogus=1), "unknown PPO config field"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        ppo.PPOConfig().replace(**overrides)


def test_config_json_round_trip():
    config = ppo.PPOConfig(policy_hidden_sizes=(8, 4), value_hidden_sizes=(16,))
    restored = ppo.PPOConfig.from_json(config.to_json())
    assert restored == config and restored.policy_hidden_sizes == (8, 4)
    with pytest.raises(ConfigError, match="unknown"):
        ppo.PPOConfig.from_json({"num_env": 3})
    with pytest.raises(ConfigError):
        ppo.PPOConfig(num_envs=-1)


def test_networks_rebuild_from_kwargs():
    kwargs = ppo.network_kwargs(3, 2, ppo.PPOConfig(**SMALL))
    networks = ppo.networks_from_kwargs(kwargs)
    params = networks.policy_network.init(jax.random.key(0))
    normalizer = running_statistics.init_state(jnp.zeros(3))
    params = ppo.PPONetworkParams(policy=params, value=None)
    policy = ppo.make_policy(networks, params, normalizer, deterministic=False)
    action = policy(jnp.ones((5, 3)), jax.random.key(1))
    assert action.shape == (5, 2) and bool(jnp.all(jnp.abs(action) <= 1))
    with pytest.raises(ConfigError, match="keys"):
        ppo.networks_from_kwargs({**kwargs, "extra": 1})
    with pytest.raises(ConfigError, match="observation_clip"):
        ppo.networks_from_kwargs({**kwargs, "observation_clip": -1.0})
    # Kwargs stored before the clip existed rebuild the unclipped networks.
    old = {k: v for k, v in kwargs.items() if k != "observation_clip"}
    far = jnp.full((1, 3), 1e8)
    stats = running_statistics.update(normalizer, jnp.zeros((4, 3)))
    np.testing.assert_array_equal(
        np.asarray(ppo.networks_from_kwargs(old).policy_network.apply(stats, params.policy, far)),
        np.asarray(ppo.networks_from_kwargs({**kwargs, "observation_clip": None})
                   .policy_network.apply(stats, params.policy, far)))


def test_residual_policy_head_starts_at_zero_action_with_the_configured_std():
    """`init_action_std`: the mean action starts ~0 (change nothing) with that pre-tanh std."""
    import numpy as np
    from brax.training.acme import running_statistics

    config = ppo.PPOConfig(init_action_std=0.1, policy_hidden_sizes=(16,), value_hidden_sizes=(16,))
    networks = ppo.make_networks(5, 3, config)
    params = networks.policy_network.init(jax.random.PRNGKey(0))
    obs = jax.random.normal(jax.random.PRNGKey(1), (64, 5))
    logits = networks.policy_network.apply(running_statistics.init_state(jnp.zeros(5)), params, obs)
    dist = networks.parametric_action_distribution.create_dist(logits)
    assert float(jnp.abs(dist.loc).max()) < 0.05  # tanh(0.05) ~ 5% of a bound
    np.testing.assert_allclose(np.asarray(dist.scale), 0.1, rtol=1e-5)
    rebuilt = ppo.networks_from_kwargs(ppo.network_kwargs(5, 3, config))
    np.testing.assert_array_equal(
        np.asarray(rebuilt.policy_network.apply(running_statistics.init_state(jnp.zeros(5)), params, obs)),
        np.asarray(logits))
    with pytest.raises(ConfigError, match="init_action_std"):
        ppo.PPOConfig(init_action_std=0.0)
