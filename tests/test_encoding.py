"""The basis-point-set shape encoding: determinism, geometry, cost, any mesh."""

import time

import numpy as np
import pytest

from diffrl_jax.data import dexgraspnet
from diffrl_jax.objects import assets, encoding
from tests._paths import SHARED_DATA, requires_shared_data


def _cube(half: float = 0.5):
    corners = np.array([[x, y, z] for x in (-half, half) for y in (-half, half) for z in (-half, half)])
    return encoding.convex_surface([corners])


def test_basis_is_deterministic_and_inside_the_ball():
    basis = encoding.bps_basis(64, radius=0.2, seed=3)
    assert basis.shape == (64, 3)
    np.testing.assert_array_equal(basis, encoding.bps_basis(64, radius=0.2, seed=3))
    assert np.linalg.norm(basis, axis=1).max() <= 0.2
    assert not np.array_equal(basis, encoding.bps_basis(64, radius=0.2, seed=4))


def test_surface_points_lie_on_the_mesh_and_follow_area():
    vertices, faces = _cube(0.5)
    points = encoding.surface_points(vertices, faces, 3000, seed=1)
    np.testing.assert_array_equal(points, encoding.surface_points(vertices, faces, 3000, seed=1))
    # On a cube's surface: the largest |coordinate| is the half-size; each face gets ~1/6.
    np.testing.assert_allclose(np.abs(points).max(axis=1), 0.5, atol=1e-12)
    axis = np.argmax(np.abs(points), axis=1)
    face_of_point = 2 * axis + (points[np.arange(3000), axis] > 0)
    fractions = np.bincount(face_of_point, minlength=6) / 3000
    np.testing.assert_allclose(fractions, 1 / 6, atol=0.03)  # binomial std 0.0068


def test_encoding_of_a_sphere_is_the_distance_to_its_surface():
    sphere = assets.builtin_object("sphere")  # radius 0.035 m
    code = encoding.encode_object(sphere)
    basis = encoding.bps_basis()
    assert code.shape == (encoding.encoding_dim(),) and code.dtype == np.float32
    expected = np.abs(np.linalg.norm(basis, axis=1) - 0.035)
    # The meshed sphere (48 hull points) and 2048 samples: about a few mm off at most.
    np.testing.assert_allclose(code[:-1], expected, atol=4e-3)
    assert code[-1] == pytest.approx(0.035, abs=1e-3)


def test_scaling_the_mesh_scales_its_radius_feature():
    vertices, faces = _cube(0.5)
    small, large = (encoding.encode_mesh(vertices, faces, s) for s in (0.05, 0.1))
    assert large[-1] == pytest.approx(2 * small[-1], rel=1e-5)
    assert not np.allclose(small[:-1], large[:-1])


@requires_shared_data
def test_dexgraspnet_meshes_encode_quickly_and_differ():
    codes = sorted(p.stem for p in (SHARED_DATA / "grasps").glob("*.npy"))
    encoded = []
    for code in codes:
        path = dexgraspnet.mesh_path(SHARED_DATA, code)
        encoding.encode_object(path, 0.1)  # warm caches
        start = time.perf_counter()
        encoded.append(encoding.encode_object(path, 0.1))
        assert time.perf_counter() - start < 0.2  # < 50 ms unloaded; slack for a busy CI box
    encoded = np.stack(encoded)
    assert np.isfinite(encoded).all()
    for i in range(len(codes)):
        for j in range(i):
            assert np.abs(encoded[i] - encoded[j]).max() > 0.01
