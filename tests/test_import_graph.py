"""The package's import graph: no circle between modules and no module importing another's
private names (read from the source with `ast`, imports inside functions included)."""

import ast
import pathlib

import diffrl_jax

ROOT = pathlib.Path(diffrl_jax.__file__).parent


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module of `name` (a module, or a name inside one), if it is the package's."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: pathlib.Path):
    """(imported module, names taken from it) for every import statement of `module`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name)
                if target:
                    yield target, ()
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:  # `from package import module`
                    yield sub, ()
                else:
                    target = _resolve(base)
                    if target:
                        yield target, (alias.name,)


def _graph() -> dict[str, set[str]]:
    graph = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, _ in _imports(module, path):
            # A package's __init__ re-exporting its own modules is not a dependency of theirs.
            if target != module and not target.startswith(module + "."):
                graph[module].add(target)
    return graph


def test_the_walker_sees_imports():
    graph = _graph()
    assert "diffrl_jax.sim.hold" in graph["diffrl_jax.sim.backends"]
    assert "diffrl_jax.errors" in graph["diffrl_jax.sim.validate"]


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if n.startswith(m + "."):  # a package importing its own module
                continue
            if state.get(n) == 1:
                cycle = path[path.index(n):] + [n]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_module_imports_a_private_name_of_another():
    found = []
    for module, path in MODULES.items():
        for target, names in _imports(module, path):
            if target == module:
                continue
            found += [f"{module}: from {target} import {n}" for n in names if n.startswith("_")]
    assert not found, "\n".join(found)
