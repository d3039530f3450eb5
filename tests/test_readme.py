"""README.md for users: its synopsis is the parser's, its library example runs as
written, it stays short, and no page names an internal issue number."""

import argparse
import pathlib
import re

import numpy as np
import pytest

from diffrl_jax.cli import main as cli_main
from diffrl_jax.cli import synopsis

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, ROOT / "benchmarks" / "RESULTS.md", *sorted((ROOT / "docs").glob("*.md"))]
MAIN_JOB = ("python3 -m venv .venv && . .venv/bin/activate && pip install -e . && "
            "diffrl pipeline --preset quick --out runs/quick")
TESTS = ('python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && '
         "python -m pytest -q")
# "issue 4", "issues 3 and 4", "issue-4", "#7": numbers a user cannot look up.
ISSUE_NUMBER = re.compile(r"\bissues?[ -]#?\d|(?<![\w&/])#\d")


def _readme() -> str:
    return README.read_text()


def _parser_commands(parser, prefix=()):
    """(command words, option strings) of every leaf command of `parser`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parser_commands(sub, (*prefix, name))
            return
    yield prefix, [s for a in parser._actions if not isinstance(a, argparse._HelpAction)
                   for s in a.option_strings if s.startswith("--")]


def test_readme_is_short_and_keeps_the_two_commands():
    text = _readme()
    assert len(text.splitlines()) <= 250
    blocks = re.findall(r"```bash\n(.*?)\n```", text, re.S)
    assert MAIN_JOB in blocks and TESTS in blocks


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_issue_numbers(page):
    hits = [line for line in page.read_text().splitlines() if ISSUE_NUMBER.search(line)]
    assert not hits, f"{page.name} names issue numbers: {hits[:3]}"


def test_issue_pattern_catches_what_it_should():
    for bad in ("issue 4", "(issues 3 and 4)", "the issue-4 note", "see #7", "issue #5"):
        assert ISSUE_NUMBER.search(bad), bad
    for fine in ("tissue 4", "docs/hold-test.md#cpu-note", "mug 8/16", "&#8217;"):
        assert not ISSUE_NUMBER.search(fine), fine


def test_readme_synopsis_is_the_generated_one():
    assert synopsis.readme_block(_readme()) == synopsis.synopsis(), \
        "README's synopsis is stale: run `python -m diffrl_jax.cli.synopsis --update README.md`"


def test_readme_synopsis_and_parser_name_the_same_commands_and_flags():
    """Independent of the generator: every parser command and flag is in the README block, and
    every command and flag of the block is in the parser."""
    block = synopsis.readme_block(_readme())
    entries = {}
    for line in block.splitlines():
        if line.startswith("diffrl "):
            words = tuple(w for w in line.split()[1:] if re.fullmatch(r"[a-z][a-z-]*", w))
            current = entries.setdefault(words, set())
        if line.startswith(("diffrl ", " ")):
            current.update(re.findall(r"--[a-z][a-z0-9-]*", line))
    parser = cli_main.build_parser()
    commands = dict(_parser_commands(parser))
    top = {s for a in parser._actions if not isinstance(a, argparse._HelpAction)
           for s in a.option_strings if s.startswith("--")}
    assert {(): top} | {k: set(v) for k, v in commands.items()} == \
        {(k[:2] if k[:1] == ("data",) else k[:1]): v for k, v in entries.items()}


def test_synopsis_renders_optional_repeatable_and_exclusive_options():
    parser = argparse.ArgumentParser(prog="tool")
    sub = parser.add_subparsers().add_parser("run", help="run it")
    sub.add_argument("src")
    sub.add_argument("--out", required=True)
    sub.add_argument("--mode", choices=("a", "b"))
    sub.add_argument("--set", action="append", metavar="FIELD=VALUE")
    group = sub.add_mutually_exclusive_group()
    group.add_argument("--fast", action="store_true")
    group.add_argument("--slow", action="store_true")
    assert synopsis.synopsis(parser) == ("tool COMMAND ...\n\n# run it\n"
                                         "tool run SRC --out OUT [--mode a|b] [--set FIELD=VALUE]... "
                                         "[--fast | --slow]\n")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text())
    for link in links:
        assert (page.parent / link).is_file(), f"{page.name} links to a missing {link}"


def test_readme_links_the_docs_and_its_figure():
    text = _readme()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in text, page.name
    assert "(benchmarks/RESULTS.md)" in text
    assert "](docs/success_by_stage.png)" in text
    figure = ROOT / "docs" / "success_by_stage.png"
    assert 0 < figure.stat().st_size < 200_000


@pytest.fixture()
def quick_run(tmp_path, monkeypatch):
    """A stand-in for the main job's runs/quick: a few built-in grasps and a tiny model."""
    run = tmp_path / "runs" / "quick"
    tiny = ["width=32", "depth=1", "time_dim=16", "block_steps=10", "warmup_steps=2",
            "checkpoint_every=10", "encoding_points=16", "encoding_samples=256"]
    assert cli_main.main(["data", "example", str(run / "raw"), "--objects", "box", "--n", "8"]) == 0
    assert cli_main.main(["train", str(run / "raw"), "--out", str(run / "train"), "--steps", "10",
                          "--batch", "8", *[x for s in tiny for x in ("--set", s)]]) == 0
    monkeypatch.chdir(tmp_path)
    return run


def test_readme_library_example_runs_as_written(quick_run, capsys):
    blocks = re.findall(r"```python\n(.*?)```", _readme(), re.S)
    assert len(blocks) == 1
    namespace = {"__name__": "readme_example"}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    reward = np.asarray(namespace["metrics"]["reward"])
    assert reward.shape == (2, 2) and np.isfinite(reward).all()  # [seeds, iterations]
    grasps = namespace["grasps"]
    assert grasps.shape == (16, 31) and np.isfinite(grasps).all()
    assert "sampled (16, 31) grasps for builtin-box" in capsys.readouterr().out
