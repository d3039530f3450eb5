"""Workflows: the library's host-side runs (refine, and the pipeline that chains the stages).

Each is a function over typed configs that owns its output files and takes
its progress as callbacks (brax's `progress_fn` habit); `diffrl_jax.cli` and
`experiments/` are thin shells that parse arguments, draw bars and print.
Not jittable: these are the loops around the compiled programs.
"""
