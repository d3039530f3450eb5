"""Conditional diffusion over canonical grasps `[31]`, conditioned on an object's shape.

- `schedule`: the noise schedule as data; pure add_noise / DDPM / DDIM steps.
- `model`: the Denoiser (MLP-ResNet, sinusoidal time embedding, FiLM) and
  the kwargs that rebuild it from a checkpoint's config.
- `config`: DiffusionConfig, the whole model and training configuration.
- `train`: normaliser, TrainState, a jitted block of AdamW steps, host loop.
- `sampler`: DDPM / DDIM(K) samplers as one `lax.scan`, optional
  classifier-free guidance, grasp post-processing.
- `metrics`: diversity and coverage of grasp sets.
- `pipeline`: checkpoints of trained models and sampling grasps for an object.
"""
