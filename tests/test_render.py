"""Offscreen rendering: grasp stills, lift videos (mp4 read back), atomic files, the GL backend.

Rendering tests need a headless OpenGL backend (EGL or OSMesa: `apt-get
install libosmesa6`); without one they skip and say why, unless
DIFFRL_REQUIRE_RENDER=1 (set by .ci/run once it has installed OSMesa) turns
the skip into a failure. The lift is `test_lift`'s: its protocol (0.008 s
steps, 400 per lift) and its known-good cylinder grasp on the upright
cylinder, so the jitted `initial_state` compile is shared with `test_lift`
through JAX's persistent cache. MuJoCo C only: no MJX program is compiled.
"""

import json
import os

import av
import numpy as np
import pytest

from diffrl_jax.workflows import evaluate as evaluate_workflow
from diffrl_jax.errors import DiffrlError
from diffrl_jax.evaluation import render
from diffrl_jax.evaluation.render import gl as render_gl
from diffrl_jax.objects import assets
from diffrl_jax.sim import bank, lift, lift_mujoco

from test_lift import CYLINDER_GRASP, EMPTY_OFFSET, PROTOCOL

SIZE = (160, 120)  # width, height
FPS = 10


@pytest.fixture(scope="module")
def backend():
    try:
        return render.gl_backend()
    except render.RenderError as e:
        if os.environ.get("DIFFRL_REQUIRE_RENDER") == "1":
            pytest.fail(f"DIFFRL_REQUIRE_RENDER=1 but no OpenGL backend renders: {e}")
        pytest.skip(f"no headless OpenGL backend to render with: {e}")


@pytest.fixture(scope="module")
def setup():
    template = lift.make_template(PROTOCOL, bank.ObjectBudget(pieces=2))
    prepared = lift.prepare_object(template, assets.builtin_object("cylinder"))
    yaw = 0.7
    # Standing upright on the table (the cylinder is 12 cm tall), as `lift.settle_object` leaves it.
    pose = np.array([0.01, -0.02, 0.06, np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])
    grasp = np.asarray(lift.grasp_to_world(CYLINDER_GRASP, pose))
    return dict(template=template, prepared=prepared, pose=pose, grasp=grasp)


def _moved_away(scene, qpos, what):
    """qpos with the hand or the object 10 m sideways (out of every camera's view)."""
    qpos = qpos.copy()
    if what == "hand":
        qpos[scene.hand_qpos[:3]] += 10.0  # the wrist's slide joints
    else:
        qpos[scene.object_qpos] += 10.0
    return qpos


def test_still_of_a_grasp_shows_hand_and_object(backend, setup):
    template, prepared = setup["template"], setup["prepared"]
    image = render.grasp_image(template, prepared, setup["pose"], setup["grasp"], width=SIZE[0], height=SIZE[1])
    assert image.shape == (SIZE[1], SIZE[0], 3) and image.dtype == np.uint8
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # shaded, not one flat colour

    # The same camera without the hand, and without the object: each leaves a hole of its own.
    scene = lift_mujoco.object_scene(template, prepared)
    qpos = render.grasp_qpos(scene, setup["grasp"], setup["pose"])
    data_camera = render.side_camera(setup["pose"][:3], setup["grasp"][:3], distance=0.45)
    full = render.render_grasp(scene, qpos, width=SIZE[0], height=SIZE[1], camera=data_camera)
    for what in ("hand", "object"):
        without = render.render_grasp(scene, _moved_away(scene, qpos, what), width=SIZE[0], height=SIZE[1],
                                      camera=data_camera)
        changed = np.abs(full.astype(int) - without.astype(int)).max(axis=-1) > 30
        assert 0.02 < changed.mean() < 0.9, (what, changed.mean())
    # The object is the built-in blue; the hand is not.
    blue = (full[..., 2].astype(int) - full[..., 0]) > 60
    assert blue.mean() > 0.01

    # The default camera of an MjModel (no Scene) looks at the model's centre.
    plain = render.render_grasp(scene.model, qpos, width=SIZE[0], height=SIZE[1])
    assert plain.shape == image.shape and plain.std() > 5


def test_frame_steps():
    steps = render.frame_steps(400, 0.008, 10)  # 3.2 s at 10 fps
    assert len(steps) == 33 and steps[0] == 0 and steps[-1] == 400
    assert np.all(np.diff(steps) > 0)
    np.testing.assert_array_equal(render.frame_steps(800, 0.004, 30)[:4], [0, 8, 17, 25])
    assert len(render.frame_steps(800, 0.004, 30)) == 97
    with pytest.raises(ValueError, match="fps"):
        render.frame_steps(10, 0.01, 0)


def test_lift_video_is_the_evaluated_execution(backend, setup, tmp_path):
    template, prepared, pose, grasp = setup["template"], setup["prepared"], setup["pose"], setup["grasp"]
    # The states rendered are those `lift_mujoco` judges: the same rise of the object, to the bit.
    result = lift_mujoco.lift_mujoco(template, prepared, pose[None], grasp[None])
    assert result.success[0]
    model, states = render.lift_states(template, prepared, pose, grasp)
    assert states.shape[0] == PROTOCOL.total_steps + 1
    import mujoco

    data = mujoco.MjData(model)
    com = []
    for row in (states[PROTOCOL.lift_start], states[-1]):
        mujoco.mj_setState(model, data, row, mujoco.mjtState.mjSTATE_FULLPHYSICS.value)
        mujoco.mj_kinematics(model, data)
        com.append(data.xipos[template.scene.object_body].copy())
    assert com[1][2] - com[0][2] == result.lift_height[0]

    frames = render.lift_frames(template, prepared, pose, grasp, fps=FPS, width=SIZE[0], height=SIZE[1])
    n = int(PROTOCOL.total_steps * PROTOCOL.physics.timestep * FPS) + 1
    assert frames.shape == (n, SIZE[1], SIZE[0], 3) and frames.dtype == np.uint8
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).max(axis=-1).mean() > 5  # things moved

    path = tmp_path / "lift.mp4"
    render.write_mp4(frames, path, FPS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lift.mp4"]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == FPS
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(decoded) == n
    assert decoded[0].shape == (SIZE[1], SIZE[0], 3)
    for k in (0, n // 2, n - 1):  # lossy, but the same pictures
        assert np.abs(decoded[k].astype(float) - frames[k]).mean() < 6


def test_write_mp4_leaves_no_file_when_encoding_fails(tmp_path):
    good = np.zeros((4, 32, 48, 3), np.uint8)
    path = tmp_path / "video.mp4"

    def broken():
        yield from good
        yield np.zeros((16, 16, 3), np.uint8)  # a frame of another size, part way

    with pytest.raises(ValueError, match="every frame"):
        render.write_mp4(broken(), path)
    assert list(tmp_path.iterdir()) == []

    def failing():
        yield from good
        raise RuntimeError("renderer died")

    with pytest.raises(RuntimeError, match="renderer died"):
        render.write_mp4(failing(), path)
    assert list(tmp_path.iterdir()) == []

    # An existing video is replaced only by a whole new one.
    render.write_mp4(good, path, fps=5)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        render.write_mp4(broken(), path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["video.mp4"]

    with pytest.raises(ValueError, match="even"):
        render.write_mp4(np.zeros((2, 31, 48, 3), np.uint8), path)
    with pytest.raises(ValueError, match="uint8"):
        render.write_mp4(np.zeros((2, 32, 48, 3), np.float32), path)
    with pytest.raises(DiffrlError, match="does not exist"):
        render.write_mp4(good, tmp_path / "missing" / "video.mp4")


def test_write_png_and_tile(tmp_path):
    images = np.stack([np.full((8, 10, 3), v, np.uint8) for v in (10, 100, 200)])
    sheet = render.tile(images, columns=2, gap=2)
    assert sheet.shape == (8 * 2 + 2, 10 * 2 + 2, 3)
    assert sheet[0, 0, 0] == 10 and sheet[0, 12, 0] == 100 and sheet[10, 0, 0] == 200
    assert sheet[10, 12, 0] == 255  # the empty cell
    path = tmp_path / "sheet.png"
    render.write_png(sheet, path)
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(path)), sheet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet.png"]


def test_no_backend_says_what_to_install(monkeypatch):
    # gl_backend looks up probe_backend in its home module, render.gl: patch it there.
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    reasons = {"egl": "EGLError: no display", "osmesa": "cannot load libOSMesa.so"}
    monkeypatch.setattr(render_gl, "probe_backend", lambda name, timeout_s=0: reasons[name])
    render_gl._choose.cache_clear()
    try:
        with pytest.raises(render.RenderError) as info:
            render.gl_backend()
        message = str(info.value)
        assert isinstance(info.value, DiffrlError)
        for part in ("egl: EGLError: no display", "osmesa: cannot load libOSMesa.so",
                     "apt-get install libosmesa6", "MUJOCO_GL=osmesa", "libegl1"):
            assert part in message, (part, message)

        monkeypatch.setenv("MUJOCO_GL", "osmesa")  # the user's choice is the only one tried
        with pytest.raises(render.RenderError, match="MUJOCO_GL=osmesa cannot render"):
            render.gl_backend()
        monkeypatch.setenv("MUJOCO_GL", "off")
        with pytest.raises(render.RenderError, match="turns MuJoCo's rendering off"):
            render.gl_backend()

        monkeypatch.setattr(render_gl, "probe_backend", lambda name, timeout_s=0: None if name == "osmesa" else "no")
        monkeypatch.delenv("MUJOCO_GL")
        assert render.gl_backend() == "osmesa"  # egl first, then osmesa
    finally:
        render_gl._choose.cache_clear()


def test_probe_reports_the_error_line():
    """A real child process: MuJoCo refuses an unknown MUJOCO_GL, and the probe says so in one line."""
    reason = render.probe_backend("nonsense")
    assert reason is not None and "invalid value for environment variable MUJOCO_GL" in reason
    assert "\n" not in reason


def test_select_poses():
    records = [{"pose": i, "success": s, "clear_candidates": c}
               for i, (s, c) in enumerate([(False, 0.0), (True, 0.5), (False, 0.2), (True, 1.0), (True, 1.0),
                                           (False, 0.1)])]
    assert evaluate_workflow.select_poses(records, 2) == [(1, "success"), (2, "failure"), (3, "success"),
                                                     (5, "failure")]
    assert evaluate_workflow.select_poses(records, 0) == []
    assert evaluate_workflow.select_poses(records, 9) == [(0, "failure"), (1, "success"), (2, "failure"),
                                                     (3, "success"), (4, "success"), (5, "failure")]
    assert evaluate_workflow.file_stem("a/b c", 3) == "a_b_c-pose3"


@pytest.fixture
def fake_evaluation(setup, monkeypatch):
    """`diffrl evaluate` with its model and pose sampling replaced by two known lifts of the cylinder.

    The real shell runs: argument parsing, the lift template (test_lift's
    protocol, from --set), media, summary.json last. Cheap: no training, no MJX.
    """
    from types import SimpleNamespace

    from diffrl_jax.diffusion import pipeline
    from diffrl_jax.evaluation import pose_sampling
    from diffrl_jax.evaluation.stats import rate

    pose, grasp = setup["pose"], setup["grasp"]
    empty = grasp.copy()
    empty[:3] += EMPTY_OFFSET

    def evaluate_object(template, prepared, sample_fn, config, backend, nthread=None, score_fn=None):
        records = [{"pose": k, "object_pose": pose.tolist(), "grasp": g.tolist(), "success": s,
                    "clear_candidates": 1.0} for k, (g, s) in enumerate([(grasp, True), (empty, False)])]
        one = rate(1, 2)
        modes = {mode: {"success": one["rate"], "ci95": [one["ci_low"], one["ci_high"]], "successes": 1,
                        "n_poses": 2, "no_clear_candidate": 0, "physics_steps_choosing": 0,
                        "physics_steps_lifting": 0} for mode in config.modes}
        return {"summary": {**one, "no_clear_candidate": 0, "pose_sampling": modes, "timings_s": {}},
                "records": records}

    monkeypatch.setattr(pipeline, "load_trained", lambda path: SimpleNamespace(dataset={}, step=0,
                                                                              model=SimpleNamespace(pose_dim=0)))
    monkeypatch.setattr(pipeline, "resolve_object",
                        lambda trained, name, scale=None: SimpleNamespace(code="builtin-cylinder", scale=1.0,
                                                                          seen=False))
    monkeypatch.setattr(evaluate_workflow, "object_asset", lambda spec: assets.builtin_object("cylinder"))
    monkeypatch.setattr(pose_sampling, "evaluate_object", evaluate_object)
    monkeypatch.setattr(evaluate_workflow, "VIDEO_SIZE", SIZE)
    monkeypatch.setattr(evaluate_workflow, "STILL_SIZE", SIZE)
    monkeypatch.setattr(evaluate_workflow, "VIDEO_FPS", FPS)
    sets = [x for item in ("orientation=upright", "timestep=0.008", "settle_s=0.5") for x in ("--set", item)]
    return lambda out, *extra: ["evaluate", "ckpt", "--objects", "builtin:cylinder", "--poses", "2",
                                "--backend", "mujoco", "--budget-pieces", "2", *sets, "--out", str(out), *extra]


def test_cli_evaluate_videos(backend, fake_evaluation, tmp_path, capsys):
    from diffrl_jax.cli.main import main

    out = tmp_path / "eval"
    assert main(fake_evaluation(out, "--videos", "1", "--json")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(capsys.readouterr().out) == summary
    assert summary["videos"] == ["videos/builtin-cylinder-pose0-success.mp4",
                                 "videos/builtin-cylinder-pose1-failure.mp4"]
    assert summary["grasp_images"] == ["grasps/builtin-cylinder-pose0.png", "grasps/builtin-cylinder-pose1.png"]
    assert summary["render"]["backend"] == backend
    for rel in summary["videos"]:
        with av.open(str(out / rel)) as container:
            assert sum(1 for _ in container.decode(video=0)) == int(PROTOCOL.total_steps * PROTOCOL.physics.timestep * FPS) + 1

    out0 = tmp_path / "eval0"
    assert main(fake_evaluation(out0, "--videos", "0")) == 0
    assert json.loads((out0 / "summary.json").read_text())["videos"] == "skipped: --videos 0"
    assert sorted(p.name for p in out0.iterdir()) == ["poses.jsonl", "summary.json"]
    with pytest.raises(SystemExit) as exit_:
        main(fake_evaluation(tmp_path / "bad", "--videos", "-1"))
    assert exit_.value.code == 2 and "must be an integer >= 0" in capsys.readouterr().err


def test_cli_evaluate_without_gl_keeps_the_evaluation(fake_evaluation, tmp_path, capsys, monkeypatch):
    from diffrl_jax.cli.main import main

    def no_gl():
        raise render.RenderError("no headless OpenGL backend (egl: nope; osmesa: nope); apt-get install libosmesa6")

    monkeypatch.setattr(render, "gl_backend", no_gl)
    out = tmp_path / "eval"
    assert main(fake_evaluation(out)) == 0
    err = capsys.readouterr().err
    assert "warning: no videos or grasp images" in err and "libosmesa6" in err and "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["videos"].startswith("skipped: no headless OpenGL backend")
    assert summary["objects"]["builtin-cylinder"]["successes"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["poses.jsonl", "summary.json"]

    # A failure part way (after the check passed) is caught too: the evaluation is still written.
    calls = []

    def lift_frames(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise render.RenderError("the GL context was lost")
        return np.zeros((2, SIZE[1], SIZE[0], 3), np.uint8)

    monkeypatch.setattr(render, "gl_backend", lambda: "osmesa")
    monkeypatch.setattr(render, "video_codec", lambda: "libx264")
    monkeypatch.setattr(render, "lift_frames", lift_frames)
    monkeypatch.setattr(render, "grasp_image", lambda *a, **k: np.zeros((SIZE[1], SIZE[0], 3), np.uint8))
    out = tmp_path / "eval2"
    assert main(fake_evaluation(out, "--videos", "1")) == 0
    assert "videos and grasp images stopped: the GL context was lost" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["videos"] == "skipped: the GL context was lost"
    assert summary["videos_written"] == ["videos/builtin-cylinder-pose0-success.mp4"]
    assert (out / summary["videos_written"][0]).is_file()
