"""import_mesh and `diffrl data import-mesh`: CoACD pieces that `assets.mesh_object` reads back at the
input's size, and every bad mesh a one-line DataError (exit 2) that leaves nothing written."""

import re
import subprocess
import sys

import numpy as np
import pytest

from diffrl_jax.cli.main import main
from diffrl_jax.errors import ConfigError, DataError
from diffrl_jax.objects import assets
from diffrl_jax.objects.mesh_import import import_mesh

OFFSET = np.array([0.3, -0.2, 0.1])  # inputs away from the origin: the import centres them


def _extrusion_obj(polygon, triangles, height: float) -> str:
    """A closed OBJ: the counter-clockwise `polygon` [P, 2] (m) extruded by `height`, faces outward."""
    polygon = np.asarray(polygon, dtype=np.float64)
    n = len(polygon)
    vertices = np.concatenate([np.c_[polygon, np.zeros(n)], np.c_[polygon, np.full(n, height)]]) + OFFSET
    faces = [(a, c, b) for a, b, c in triangles] + [(a + n, b + n, c + n) for a, b, c in triangles]
    for i in range(n):
        j = (i + 1) % n
        faces += [(i, j, j + n), (i, j + n, i + n)]
    return ("".join(f"v {x:.17g} {y:.17g} {z:.17g}\n" for x, y, z in vertices)
            + "".join(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in faces))


# An L of 8 x 8 cm, 3 cm thick (concave: CoACD cuts it), and an 8 cm cube (convex: one piece).
L_SHAPE = _extrusion_obj(0.04 * np.array([[0, 0], [2, 0], [2, 1], [1, 1], [1, 2], [0, 2]]),
                         [(0, 1, 2), (0, 2, 3), (0, 3, 5), (3, 4, 5)], 0.03)
CUBE = _extrusion_obj([[0, 0], [0.08, 0], [0.08, 0.08], [0, 0.08]], [(0, 1, 2), (0, 2, 3)], 0.08)
TETRA_FACES = "f 1 2 3\nf 1 4 2\nf 1 3 4\nf 2 4 3\n"
BAD_MESHES = {  # file name: (contents, what the message says)
    "empty.obj": ("", "empty mesh"),
    "nan.obj": ("v 0 0 0\nv 0.1 0 0\nv 0 nan 0\nv 0 0 0.1\n" + TETRA_FACES, "vertex 3 .* non-finite"),
    "flat.obj": ("v 0 0 0\nv 0.1 0 0\nv 0 0.1 0\nv 0.1 0.1 0\nf 1 2 3\nf 2 4 3\n", "degenerate .* one plane"),
    "line.obj": ("v 0 0 0\nv 0.1 0 0\nv 0.2 0 0\nv 0.3 0 0\nf 1 2 3\nf 2 3 4\n", "degenerate .* one line"),
    "repeated.obj": ("v 0 0 0\nv 0.1 0 0\nv 0 0.1 0\nv 0 0 0\n" + TETRA_FACES, "3 distinct vertices"),
    "range.obj": ("v 0 0 0\nv 0.1 0 0\nv 0 0.1 0\nv 0 0 0.1\nf 1 2 3\nf 1 2 9\n",
                  "triangle 2 .* refers to vertex 9 .* has 4 vertices"),
    "words.obj": ("v 0 0 zero\n", "not a readable OBJ file"),
    "missing.obj": (None, "mesh file not found"),
}


def _write(directory, name: str, text: str | None):
    path = directory / name
    if text is not None:
        path.write_text(text)
    return path


def test_an_l_shape_round_trips_at_its_own_size(tmp_path):
    mesh = _write(tmp_path, "L shape.obj", L_SHAPE)
    imported = import_mesh(mesh, tmp_path / "out")
    assert imported.code == "L-shape"
    assert imported.path == tmp_path / "out" / "meshdata" / "L-shape" / "coacd" / "decomposed.obj"
    assert 2 <= len(imported.pieces) <= 8  # concave: more than one piece
    assert all(4 <= len(p) <= assets.DEFAULT_MAX_HULL_VERTICES for p in imported.pieces)
    assert np.linalg.norm(np.concatenate(imported.pieces), axis=1).max() == pytest.approx(1.0)

    loaded = assets.mesh_object(imported.path, imported.scale)
    assert len(loaded.pieces) == len(imported.pieces)
    points = loaded.surface_points()
    np.testing.assert_allclose(np.ptp(points, axis=0), [0.08, 0.08, 0.03], atol=2e-4)
    np.testing.assert_allclose(imported.size_m, [0.08, 0.08, 0.03], atol=2e-4)
    np.testing.assert_allclose((points.min(0) + points.max(0)) / 2, 0.0, atol=1e-9)  # centred
    assert loaded.volume() == pytest.approx(0.75 * 0.08 * 0.08 * 0.03, rel=0.02)

    again = import_mesh(mesh, tmp_path / "out")  # the same seed, the same pieces; replaces the first
    assert all(np.array_equal(a, b) for a, b in zip(again.pieces, imported.pieces))
    assert len(import_mesh(mesh, tmp_path / "out", code="one", max_pieces=1).pieces) == 1


def test_a_given_scale_sets_the_size(tmp_path):
    mesh = _write(tmp_path, "cube.obj", CUBE)
    radius = 0.04 * np.sqrt(3)  # the cube's corners about its centre
    assert import_mesh(mesh, tmp_path / "out").scale == pytest.approx(radius)
    imported = import_mesh(mesh, tmp_path / "out", code="small", scale=0.05)
    assert len(imported.pieces) == 1 and len(imported.pieces[0]) == 8
    loaded = assets.mesh_object(imported.path, 0.05)
    np.testing.assert_allclose(np.ptp(loaded.surface_points(), axis=0), 0.08 * 0.05 / radius, atol=1e-6)
    with pytest.raises(ConfigError, match="object scale is 1e.09, outside"):
        import_mesh(mesh, tmp_path / "out", scale=1e9)


def test_stl_and_ply_are_read_through_trimesh(tmp_path):
    trimesh = pytest.importorskip("trimesh")
    vertices, faces = [], []
    for line in CUBE.splitlines():
        kind, *values = line.split()
        (vertices if kind == "v" else faces).append([float(v) if kind == "v" else int(v) - 1 for v in values])
    for suffix in (".stl", ".ply"):
        trimesh.Trimesh(vertices, faces, process=False).export(tmp_path / f"cube{suffix}")
        imported = import_mesh(tmp_path / f"cube{suffix}", tmp_path / "out")
        np.testing.assert_allclose(imported.size_m, 0.08, atol=1e-6)
    with pytest.raises(DataError, match="unsupported mesh format '.step'"):
        import_mesh(_write(tmp_path, "cube.step", "solid"), tmp_path / "out")


@pytest.mark.parametrize("name", BAD_MESHES)
def test_a_bad_mesh_is_a_data_error_and_writes_nothing(tmp_path, name):
    text, problem = BAD_MESHES[name]
    with pytest.raises(DataError, match=problem) as error:
        import_mesh(_write(tmp_path, name, text), tmp_path / "out")
    assert str(tmp_path / name) in str(error.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", BAD_MESHES)
def test_the_cli_exits_2_on_a_bad_mesh(tmp_path, capsys, name):
    text, problem = BAD_MESHES[name]
    mesh = _write(tmp_path, name, text)
    assert main(["data", "import-mesh", str(mesh), "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert str(mesh) in lines[0] and re.search(problem, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()


def test_the_cli_prints_what_it_wrote_and_a_bad_mesh_gives_no_traceback(tmp_path, capsys):
    mesh = _write(tmp_path, "cube.obj", CUBE)
    assert main(["data", "import-mesh", str(mesh), "--out", str(tmp_path / "out"), "--code", "box8"]) == 0
    out = capsys.readouterr().out
    assert "meshdata/box8/coacd/decomposed.obj: 1 convex piece(s), 8 hull vertices, scale 0.069282" in out
    assert "(8.0 x 8.0 x 8.0 cm)" in out

    nan = _write(tmp_path, "nan.obj", BAD_MESHES["nan.obj"][0])
    proc = subprocess.run([sys.executable, "-m", "diffrl_jax.cli.main", "data", "import-mesh", str(nan),
                           "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "nan.obj: vertex 3" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "bad").exists()
