"""The generated object library: deterministic, within the simulated budget and the sane bounds,
household-sized, and read back by `assets.mesh_object` exactly as generated."""

import json

import numpy as np
import pytest
from scipy import spatial

from diffrl_jax import bounds
from diffrl_jax.cli.main import main
from diffrl_jax.data.dexgraspnet import mesh_path
from diffrl_jax.errors import DataError
from diffrl_jax.objects import assets, library


@pytest.fixture(scope="module")
def objects():
    return library.generate_library(200)


def _same(a: list[library.LibraryObject], b: list[library.LibraryObject]) -> bool:
    return len(a) == len(b) and all(
        x.code == y.code and x.family == y.family and x.scale == y.scale and x.mass_kg == y.mass_kg
        and x.density == y.density and len(x.pieces) == len(y.pieces)
        and all(np.array_equal(p, q) for p, q in zip(x.pieces, y.pieces))
        for x, y in zip(a, b))


def test_the_library_is_deterministic_and_prefix_stable(objects):
    assert _same(library.generate_library(200), objects)
    assert _same(library.generate_library(10), objects[:10])
    assert _same(library.generate_library(10, seed=0), objects[:10])
    other = library.generate_library(10, seed=1)
    assert not any(np.array_equal(p.pieces[0], q.pieces[0]) for p, q in zip(other, objects))


def test_every_object_fits_the_simulated_budget_and_the_bounds(objects):
    assert len({obj.code for obj in objects}) == len(objects)
    for obj in objects:
        assert obj.code.startswith("gen-" + obj.family.replace("_", "-") + "-"), obj.code
        assert 1 <= len(obj.pieces) <= library.MAX_PIECES, obj.code
        points = np.concatenate(obj.pieces)
        radius = np.linalg.norm(points - (points.min(0) + points.max(0)) / 2, axis=1).max()
        assert radius == pytest.approx(1.0), obj.code  # normalised like DexGraspNet's meshes
        for piece in obj.pieces:
            assert 4 <= len(piece) <= assets.DEFAULT_MAX_HULL_VERTICES, obj.code
            hull = spatial.ConvexHull(piece)
            assert len(hull.vertices) == len(piece), obj.code  # every stored point is a hull vertex
            assert hull.volume > 0, obj.code
        size = np.ptp(points, axis=0) * obj.scale
        bounds.check(obj.scale, "scale", obj.code, DataError)
        bounds.check(float(size.max()), "extent_m", obj.code, DataError)
        bounds.check(obj.mass_kg, "mass_kg", obj.code, DataError)
        bounds.check(obj.density, "density_kg_m3", obj.code, DataError)
        bounds.check(len(points), "object_vertices", obj.code, DataError)
        # Household objects a hand can hold: 5-25 cm, at least 1 cm thick, 30-600 g.
        assert 0.05 <= size.max() <= 0.25 and size.min() >= library.MIN_SIDE_M * (1 - 1e-9), (obj.code, size)
        assert library.MASS_KG[0] <= obj.mass_kg <= library.MASS_KG[1], obj.code
        assert obj.asset().volume() * obj.density == pytest.approx(obj.mass_kg), obj.code


def test_every_family_appears_in_every_eight(objects):
    for start in (0, 8, 96):
        assert {obj.family for obj in objects[start:start + 8]} == set(library.FAMILIES)
    pieces = {family: [len(obj.pieces) for obj in objects if obj.family == family] for family in library.FAMILIES}
    assert min(pieces["mug"]) >= 4 and min(pieces["rimmed"]) >= 2 and min(pieces["composite"]) >= 2
    assert max(pieces["composite"]) == 4 and max(pieces["rimmed"]) == 3
    assert all(n == [1] * len(n) for f, n in pieces.items() if f not in ("mug", "rimmed", "composite"))


def test_written_meshes_read_back_as_generated(objects, tmp_path):
    chosen = objects[:16]
    manifest_path = library.write_library(chosen, tmp_path)
    assert manifest_path == tmp_path / library.MANIFEST
    manifest = library.load_library_manifest(tmp_path)
    assert list(manifest) == [obj.code for obj in chosen]
    for obj in chosen:
        entry = manifest[obj.code]
        assert (entry["family"], entry["n_pieces"]) == (obj.family, len(obj.pieces))
        assert (entry["scale"], entry["mass_kg"], entry["density"]) == (obj.scale, obj.mass_kg, obj.density)
        loaded = assets.mesh_object(mesh_path(tmp_path, obj.code), entry["scale"], density=entry["density"])
        assert loaded.name == obj.code and len(loaded.pieces) == len(obj.pieces)
        for piece, expected in zip(loaded.pieces, obj.pieces):
            np.testing.assert_allclose(np.sort(piece.vertices, axis=0), np.sort(expected * obj.scale, axis=0),
                                       atol=1e-9)
        assert loaded.volume() * entry["density"] == pytest.approx(obj.mass_kg, rel=1e-6)


def test_a_bad_manifest_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="library manifest not found"):
        library.load_library_manifest(tmp_path)
    (tmp_path / library.MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match="not a JSON file"):
        library.load_library_manifest(tmp_path)
    entry = {"family": "prism", "scale": 0.1, "mass_kg": 0.2, "density": 500.0, "n_pieces": 1}
    (tmp_path / library.MANIFEST).write_text(json.dumps({"a": {**entry, "scale": 1e9}}))
    with pytest.raises(DataError, match="scale of 'a' is 1e.09, outside"):
        library.load_library_manifest(tmp_path)
    (tmp_path / library.MANIFEST).write_text(json.dumps({"a": {"family": "prism"}}))
    with pytest.raises(DataError, match="entry 'a' must have exactly the keys"):
        library.load_library_manifest(tmp_path)


def test_cli_writes_the_library(tmp_path, capsys):
    out = tmp_path / "lib"
    assert main(["data", "library", str(out), "--n", "9", "--seed", "2"]) == 0
    assert "wrote 9 object(s)" in capsys.readouterr().out
    manifest = library.load_library_manifest(out)
    assert list(manifest) == [obj.code for obj in library.generate_library(9, seed=2)]
    assert all(mesh_path(out, code).is_file() for code in manifest)
    (tmp_path / "file").write_text("")
    assert main(["data", "library", str(tmp_path / "file"), "--n", "1"]) == 2
    assert "is not a directory" in capsys.readouterr().err
