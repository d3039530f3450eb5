"""Grasp synthesis in JAX: DexGraspNet's energy and annealed optimiser on the project's hand.

`hand_model` (the hand's differentiable geometry), `object_sdf` (an object's
signed distance from its convex pieces), `energy` (the terms), `optimize`
(initial poses and the jitted optimisation); `workflows.synthesize` runs it
on a mesh directory and writes a DexGraspNet-format dataset.
"""
