"""A built-in example dataset: kinematic grasps on built-in objects, no files.

For a built-in object this writes a DexGraspNet-format directory (mesh in
normalised units + grasps at a scale), so every tool that reads DexGraspNet
data runs on a fresh machine without downloads. Grasps are made with geometry
alone (MuJoCo's C engine, `mj_geomDistance`): the palm faces the object from a
random direction at a small clearance, then each finger closes along a fixed
flexion path until it first touches the surface (bisection to 0.1 mm). It is
a seed dataset with fingertips on the surface, not a validated one: whether a
grasp holds is the simulator's question.
"""

from __future__ import annotations

import mujoco
import numpy as np
from scipy import spatial

from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.data import rotations
from diffrl_jax.data.dexgraspnet import GraspDataset
from diffrl_jax.errors import ConfigError
from diffrl_jax.hand import constants
from diffrl_jax.hand.poses import FINGER_CLOSE_MAX, FINGERS, JOINT_INDEX, PALM_CENTRE, finger_geoms
from diffrl_jax.objects import assets
from diffrl_jax.scene import Scene, build_scene
from diffrl_jax.sim.geometry import min_distance


def object_mesh_pieces(obj: assets.ObjectAsset, points: int = 48) -> list[np.ndarray]:
    """Vertices of each piece of `obj` as a convex point set (object frame, m)."""
    pieces = []
    golden = np.pi * (3.0 - np.sqrt(5.0))
    k = np.arange(points) + 0.5
    z = 1 - 2 * k / points
    unit_sphere = np.stack(
        [np.sqrt(1 - z**2) * np.cos(golden * k), np.sqrt(1 - z**2) * np.sin(golden * k), z], -1)
    for piece in obj.pieces:
        if isinstance(piece, assets.ConvexPiece):
            pieces.append(np.asarray(piece.vertices, dtype=np.float64))
            continue
        s = piece.size
        if piece.type == "box":
            local = np.array([[x, y, zz] for x in (-1, 1) for y in (-1, 1) for zz in (-1, 1)]) * s[:3]
        elif piece.type == "sphere":
            local = unit_sphere * s[0]
        elif piece.type == "capsule":
            local = unit_sphere * s[0] + np.where(unit_sphere[:, 2:] > 0, s[1], -s[1]) * [0, 0, 1]
        elif piece.type == "cylinder":
            local = assets.prism(s[0], s[1]).vertices
        else:
            raise ConfigError(f"cannot mesh primitive {piece.type!r}")
        rot = rotations.quat_to_matrix(np.asarray(piece.quat, dtype=np.float64))
        pieces.append(local @ rot.T + np.asarray(piece.pos))
    return pieces


def obj_text(pieces: list[np.ndarray]) -> str:
    """A CoACD-style OBJ: one `o convex_i` group per piece, hull faces included."""
    lines, offset = [], 1
    for i, verts in enumerate(pieces):
        hull = spatial.ConvexHull(verts)
        used = hull.vertices
        remap = {int(v): j for j, v in enumerate(used)}
        lines.append(f"o convex_{i}")
        lines += [f"v {x:.9g} {y:.9g} {z:.9g}" for x, y, z in verts[used]]
        lines += [f"f {' '.join(str(remap[int(v)] + offset) for v in face)}" for face in hull.simplices]
        offset += len(used)
    return "\n".join(lines) + "\n"


def _min_distance(model, data, geoms, object_geoms, fromto) -> float:
    # Distances past 5 cm only need to read as "far".
    return min_distance(model, data, geoms, object_geoms, 0.05, fromto)


def kinematic_grasps(scene: Scene, n: int, seed: int = 0, clearance: float = 0.005,
                     max_tries: int | None = None) -> np.ndarray:
    """`n` object-frame grasps [n, 31] with fingers closed onto the object.

    Keeps a candidate when the thumb and at least two fingers touch (within
    0.5 mm) and no hand geom penetrates the object by more than 1 mm.
    """
    if n < 1:
        raise ConfigError(f"number of grasps must be positive, got {n}")
    model, data = scene.model, mujoco.MjData(scene.model)
    rng = np.random.default_rng(seed)
    fromto = np.zeros(6)
    fingers = finger_geoms(scene)
    palm_geoms = [g for g in scene.hand_geoms if model.geom(g).name.startswith("robot0:C_palm")]
    out: list[np.ndarray] = []
    tries = 0
    max_tries = max_tries or 50 * n
    while len(out) < n:
        tries += 1
        if tries > max_tries:
            raise ConfigError(f"found only {len(out)} of {n} grasps in {max_tries} tries")
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        z = np.cross(d, rng.normal(size=3))
        z /= np.linalg.norm(z)
        rot = np.stack([np.cross(d, z), d, z], axis=-1)  # palm's +y (its back) along d
        joints = np.zeros(constants.NUM_JOINTS)
        for names, open_pose, _ in FINGERS.values():
            joints[[JOINT_INDEX[m] for m in names]] = open_pose

        # The palm's rotation is fixed per candidate: its wrist hinge angles once.
        wrist_angles = grasp_lib.wrist_qpos(grasp_lib.make_grasps(np.zeros(3), rot, joints))[3:]

        def palm_position(h):
            return d * h - rot @ PALM_CENTRE

        def place(h):
            data.qpos[scene.hand_qpos[:3]] = palm_position(h)
            data.qpos[scene.hand_qpos[3:6]] = wrist_angles
            data.qpos[scene.hand_qpos[6:]] = joints
            mujoco.mj_kinematics(model, data)

        # Slide the open hand in along -d until the palm is `clearance` away.
        lo, hi = 0.0, 0.4
        place(hi)
        if _min_distance(model, data, scene.hand_geoms, scene.object_geoms, fromto) < clearance:
            continue
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            place(mid)
            if _min_distance(model, data, palm_geoms, scene.object_geoms, fromto) < clearance:
                lo = mid
            else:
                hi = mid
        place(hi)
        if _min_distance(model, data, scene.hand_geoms, scene.object_geoms, fromto) < 0:
            continue  # an open finger already inside the object
        touching = {}
        for finger, (names, open_pose, direction) in FINGERS.items():
            idx = [JOINT_INDEX[m] for m in names]

            def gap(s):
                joints[idx] = np.asarray(open_pose) + s * np.asarray(direction)
                place(hi)
                return _min_distance(model, data, fingers[finger], scene.object_geoms, fromto)

            if gap(FINGER_CLOSE_MAX) > 0:
                touching[finger] = False
                gap(0.0)  # leave a finger that reaches nothing open
                continue
            a, b = 0.0, FINGER_CLOSE_MAX
            while b - a > 1e-3:
                mid = 0.5 * (a + b)
                a, b = (mid, b) if gap(mid) > 0 else (a, mid)
            touching[finger] = gap(b) > -5e-4
        place(hi)
        penetration = -_min_distance(model, data, scene.hand_geoms, scene.object_geoms, fromto)
        if touching["th"] and sum(touching.values()) >= 3 and penetration < 1e-3:
            out.append(grasp_lib.make_grasps(palm_position(hi), rot, joints.copy()))
    return np.stack(out)


def example_dataset(name: str, n: int, seed: int = 0) -> tuple[GraspDataset, str]:
    """Grasps on built-in object `name` and its OBJ text in normalised units.

    As in DexGraspNet, the mesh is centred and divided by 1.03 x its largest
    vertex radius; that factor is the grasps' `scale`.
    """
    obj = assets.builtin_object(name)
    pieces = object_mesh_pieces(obj)
    scale = 1.03 * max(np.linalg.norm(p, axis=1).max() for p in pieces)
    mesh_obj = assets.ObjectAsset(
        name, tuple(assets.ConvexPiece(p) for p in pieces), mass=obj.mass)
    grasps = kinematic_grasps(build_scene(mesh_obj), n, seed=seed)
    dataset = GraspDataset(
        grasps=grasps,
        scales=np.full(len(grasps), scale),
        object_index=np.zeros(len(grasps), dtype=np.int32),
        object_codes=(f"builtin-{name}",),
    )
    return dataset, obj_text([p / scale for p in pieces])
