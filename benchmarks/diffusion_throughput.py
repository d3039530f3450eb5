"""Diffusion grasp model: sampling and training throughput, diversity and coverage.

Prints, on the local JAX device:
- DDPM (all steps) and DDIM-K grasps/s against batch size (one object's
  condition shared by the batch; run time best of --repeats, JIT apart);
- training steps/s (one compiled block of `block_steps` steps, JIT apart);
- with --checkpoint and the shared data: per (object, scale) group of the
  training set, --n samples (DDIM-K) against the dataset's grasps of that
  group: diversity (mean pairwise wrist translation / rotation / joint RMS)
  and coverage / precision at the thresholds of `diffusion.metrics`, beside
  the dataset's own diversity and a half-against-half coverage baseline
  (the dataset: the grasps the model was trained on, after its `success`
  and `--min-robustness` filters).

Throughput does not depend on the weights, so without --checkpoint a freshly
initialised model of the default config (or --set FIELD=VALUE) is timed.

    python benchmarks/diffusion_throughput.py --batch 1024 4096 16384
    python benchmarks/diffusion_throughput.py --checkpoint /tmp/diff_ckpt --n 1000
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

from diffrl_jax import runtime

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dexgraspnet"


def _timed(fn, *args, repeats: int):
    """(JIT + first run seconds, best run seconds) of a jitted fn."""
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return first - best, best


def bench_sampling(trained, cond, batches, methods, repeats):
    import jax

    from diffrl_jax.diffusion import pipeline

    for method, steps in methods:
        for batch in batches:
            sample = pipeline.grasp_sampler(trained, batch, method, steps)
            jit_s, run_s = _timed(sample, trained.params, trained.normaliser, cond, jax.random.key(0),
                                  repeats=repeats)
            name = "ddpm" if method == "ddpm" else f"ddim-{steps}"
            print(f"sample {name:>8} batch {batch:>6}: {batch / run_s:>9.0f} grasps/s "
                  f"({run_s * 1e3:.1f} ms per call, jit {jit_s:.1f} s)", flush=True)


def bench_training(config, model, batch, repeats):
    import dataclasses

    from diffrl_jax.diffusion.train import TrainData, fit_normaliser, init_train_state, make_train_block

    config = dataclasses.replace(config, batch_size=batch)
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(4096, model.data_dim))
    data = TrainData.create(samples, rng.uniform(0, 0.1, (16, model.cond_dim)), np.arange(4096) % 16,
                            fit_normaliser(samples))
    block = make_train_block(config, model)
    state = init_train_state(config, model)
    jit_s, run_s = _timed(lambda s: block(s, data), state, repeats=repeats)
    print(f"train batch {batch}: {config.block_steps / run_s:.1f} steps/s "
          f"({batch * config.block_steps / run_s:.0f} samples/s, jit {jit_s:.1f} s)", flush=True)


def quality(trained, n, steps, seed):
    from diffrl_jax.data.dexgraspnet import load_dexgraspnet
    from diffrl_jax.diffusion import metrics, pipeline
    from diffrl_jax.diffusion.train import training_mask

    root = trained.dataset.get("root") or SHARED
    dataset = load_dexgraspnet(root)
    # Against the grasps the model was trained on (the same label filters).
    dataset = dataset.take(training_mask(dataset, bool(trained.dataset.get("only_success")),
                                         trained.dataset.get("min_robustness")))
    rows, rng = [], np.random.default_rng(seed)
    for k, code in enumerate(dataset.object_codes):
        for scale in np.unique(np.round(dataset.scales[dataset.object_index == k], 6)):
            mask = (dataset.object_index == k) & (np.abs(dataset.scales - scale) < 1e-6)
            reference = dataset.grasps[mask]
            if len(reference) < 4:
                continue
            spec = pipeline.resolve_object(trained, code, float(scale))
            samples = pipeline.sample_grasps(trained, spec.cond, n, steps=steps, seed=seed)
            half = rng.permutation(len(reference))
            a, b = reference[half[: len(half) // 2]], reference[half[len(half) // 2:]]
            rows.append({
                "object": code, "scale": float(scale), "n_dataset": len(reference),
                "samples": {**metrics.diversity(samples), **metrics.coverage(samples, reference)},
                "dataset": metrics.diversity(reference),
                "half_vs_half": metrics.coverage(a, b),
            })
    weights = np.array([r["n_dataset"] for r in rows], float)
    mean = lambda path: float(np.average([_get(r, path) for r in rows], weights=weights))  # noqa: E731
    print(f"\nquality, DDIM-{steps}, {n} samples per (object, scale) group vs the dataset's grasps "
          f"(weighted by group size; thresholds {rows[0]['samples']['thresholds']}):")
    print(f"{'':>22} {'transl. m':>9} {'rot. rad':>8} {'joints rad':>10} {'coverage':>8} {'precision':>9}")
    print(f"{'samples':>22} {mean('samples.translation_m'):>9.4f} {mean('samples.rotation_rad'):>8.3f} "
          f"{mean('samples.joints_rms_rad'):>10.3f} {mean('samples.coverage'):>8.3f} "
          f"{mean('samples.precision'):>9.3f}")
    print(f"{'dataset':>22} {mean('dataset.translation_m'):>9.4f} {mean('dataset.rotation_rad'):>8.3f} "
          f"{mean('dataset.joints_rms_rad'):>10.3f}")
    print(f"{'dataset half vs half':>22} {'':>9} {'':>8} {'':>10} {mean('half_vs_half.coverage'):>8.3f} "
          f"{mean('half_vs_half.precision'):>9.3f}")
    return rows


def _get(row, path):
    for part in path.split("."):
        row = row[part]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a directory written by diffrl train")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE",
                        help="DiffusionConfig override for the untrained model (no --checkpoint)")
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--ddpm-batch", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--ddim-steps", type=int, default=10)
    parser.add_argument("--train-batch", type=int, nargs="+", default=[256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=1000, help="samples per group for quality")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="write the quality rows here")
    args = parser.parse_args()
    runtime.configure()
    import jax

    from diffrl_jax.diffusion import pipeline
    from diffrl_jax.diffusion.config import DiffusionConfig
    from diffrl_jax.diffusion.model import make_denoiser, model_kwargs
    from diffrl_jax.diffusion.train import fit_normaliser, init_train_state
    from diffrl_jax.objects import assets, encoding

    if args.checkpoint:
        trained = pipeline.load_trained(args.checkpoint)
    else:
        overrides = dict(item.split("=", 1) for item in args.set or ())
        config = DiffusionConfig().with_overrides(overrides)
        model = make_denoiser(**model_kwargs(config, 31, config.encoding_points + 1))
        trained = pipeline.TrainedModel(
            config=config, model=model, params=init_train_state(config, model).ema_params,
            normaliser=fit_normaliser(np.random.default_rng(0).normal(size=(100, 31))),
            dataset={}, step=0, directory=pathlib.Path("."))
    config, model = trained.config, trained.model
    n_params = sum(x.size for x in jax.tree.leaves(trained.params))
    print(f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), "
          f"{runtime.usable_cpus()} usable CPUs; jax {jax.__version__}")
    print(f"model: {model_kwargs(config, model.data_dim, model.cond_dim)}, {n_params} parameters, "
          f"prediction {config.prediction}")
    basis = encoding.bps_basis(config.encoding_points, config.encoding_radius)
    cond = encoding.encode_object(assets.builtin_object("bottle"), basis=basis,
                                  num_samples=config.encoding_samples)
    methods = [("ddim", args.ddim_steps), ("ddpm", None)]
    bench_sampling(trained, cond, args.batch, methods[:1], args.repeats)
    bench_sampling(trained, cond, args.ddpm_batch, methods[1:], args.repeats)
    for batch in args.train_batch:
        bench_training(config, model, batch, args.repeats)
    if args.checkpoint and (trained.dataset.get("root") or SHARED.is_dir()):
        rows = quality(trained, args.n, args.ddim_steps, args.seed)
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(rows, indent=2, default=float))


if __name__ == "__main__":
    main()
