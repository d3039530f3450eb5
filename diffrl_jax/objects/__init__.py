"""Graspable objects: built-in primitives and DexGraspNet convex meshes."""

from diffrl_jax.objects.assets import (
    BUILTIN_OBJECTS,
    ConvexPiece,
    ObjectAsset,
    Primitive,
    builtin_object,
    cap_hull,
    mesh_object,
    read_obj_pieces,
)
