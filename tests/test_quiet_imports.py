"""Importing any module of the package prints nothing to stdout.

`--json` output is read by programs, so stray prints corrupt it. MuJoCo's MJX
prints "Failed to import warp" when the optional Warp backend is missing, and
brax imports MJX; `scene.import_mjx` and `diffrl_jax.rl` keep that quiet.
"""

import subprocess
import sys

SCRIPT = """
import importlib, pkgutil
import diffrl_jax
names = [m.name for m in pkgutil.walk_packages(diffrl_jax.__path__, "diffrl_jax.")]
for name in names:
    importlib.import_module(name)
import sys
print(len(names), file=sys.stderr)
"""


def test_every_module_imports_without_printing():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == ""
    assert int(proc.stderr.strip().splitlines()[-1]) > 30  # the walk found the package's modules
