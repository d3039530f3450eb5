"""Experiment scripts: runs composed from the library (installed as `diffrl_jax.experiments`).

Each module is a script (`python experiments/NAME.py --help`) and an
importable module with a `main(argv)`; `diffrl pipeline` is `pipeline.main`.
"""
