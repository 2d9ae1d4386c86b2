"""Project-wide checks: the README's commands are accepted by the CLI's parser and name real
Makefile targets, algorithms, env families and presets; the project's modules import no cycle; the
docs and code say nothing about how the project was built; ``vmil --version`` is setup.py's version."""
from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from vmil.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vmil", "world_model", "imitation", "configs")
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]


# ---------------------------------------------------------------------------------------------
# README commands


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)


def _commands(path: Path, program: str) -> list[list[str]]:
    """Each line of the file's fenced code blocks that runs ``program`` (after an optional ``$ ``
    prompt, shell comments dropped), split as the shell would."""
    out = []
    for block in _code_blocks(path.read_text()):
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ")
            if not line.startswith(program + " ") and line != program:
                continue
            out.append(shlex.split(line, comments=True))
    return out


def _parse(argv: list[str]):
    """What ``vmil.cli.main`` does before running a command: parse, letting ``key=value``
    overrides sit between flags. Raises ``UsageError`` (or SystemExit for --help) when refused."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        assert isinstance(getattr(args, "overrides", None), list) and all(
            "=" in tok and not tok.startswith("-") for tok in extra), f"unrecognized arguments: {extra}"
    assert args.command is not None, "no subcommand"
    return args


def _readme_vmil_commands() -> list[list[str]]:
    return [argv for path in DOCS if path.exists() for argv in _commands(path, "vmil")]


def test_readme_stays_short():
    """A newcomer reads it in ten minutes; results and history belong in docs/."""
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= 250, f"README.md has {lines} lines (at most 250): move details into docs/"


def test_readme_names_vmil_commands():
    commands = _commands(ROOT / "README.md", "vmil")
    named = {argv[1] for argv in commands}
    for sub in ("demos", "train", "eval", "compare"):  # the walk-through: demos -> train -> eval -> compare
        assert sub in named, f"the README shows no `vmil {sub}` command"


@pytest.mark.parametrize("argv", _readme_vmil_commands(), ids=lambda a: " ".join(a)[:80])
def test_documented_vmil_commands_parse(argv):
    from vmil.envs import FAMILIES
    from vmil.registry import ALGOS

    if "--help" in argv or "--version" in argv:
        assert main(argv[1:]) == 0
        return
    args = _parse(argv[1:])
    if getattr(args, "algo", None):
        assert args.algo in ALGOS, f"unknown algorithm {args.algo!r} (valid: {sorted(ALGOS)})"
    envs = getattr(args, "env", None) or []
    for env in [envs] if isinstance(envs, str) else envs:
        if not env.isupper():  # ID / ENV are placeholders
            assert env.split(":")[0] in FAMILIES, f"unknown env family in {env!r}"
    preset = getattr(args, "preset", None)
    if preset and not preset.isupper():
        assert (ROOT / "configs" / "size" / f"{preset}.yaml").is_file(), f"unknown preset {preset!r}"


def test_a_wrong_readme_command_would_fail():
    """The parse check above refuses what the CLI refuses."""
    from vmil.cli import UsageError

    with pytest.raises((UsageError, AssertionError)):
        _parse(["train", "--algo", "vmil", "--no-such-flag", "1"])
    with pytest.raises(UsageError):
        _parse(["no-such-command"])


def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.M))


def test_documented_make_commands_are_makefile_targets():
    targets = _make_targets()
    for path in DOCS:
        for argv in _commands(path, "make") if path.exists() else []:
            goals = [tok for tok in argv[1:] if "=" not in tok and not tok.startswith("-")]
            for goal in goals or ["demo"]:  # plain `make` runs the first target
                assert goal in targets, f"{path.name}: `{' '.join(argv)}`: no target {goal!r} in the Makefile"
    readme = {tok for argv in _commands(ROOT / "README.md", "make") for tok in argv[1:2]}
    assert {"demo", "test"} <= readme, "the README's two set-up commands are `make demo` and `make test`"


# ---------------------------------------------------------------------------------------------
# Import cycles


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports, at module level or inside functions alike (a lazy
    import is still a dependency)."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in mods.items():
        edges = set()
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges.update(resolve(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    edges.add(sub if sub in mods else resolve(base))
        edges.discard(None)
        edges.discard(mod)
        graph[mod] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    assert "vmil.runner" in graph and "vmil.evaluate" in graph["vmil.runner"]  # the graph sees imports
    found = cycles(graph)
    assert not found, "import cycles among the project's modules: " + "; ".join(" <-> ".join(c) for c in found)


# ---------------------------------------------------------------------------------------------
# Words about how the project was built


def test_no_build_history_words():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    pattern = r"\bstop [0-9]+|this" + " stop|previous" + " stop"  # split so this file does not match itself
    res = subprocess.run(["git", "grep", "-n", "-i", "-E", pattern], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 1, f"words about how the project was built:\n{res.stdout}{res.stderr}"


# ---------------------------------------------------------------------------------------------
# Version


def test_version_is_setup_pys(capsys, monkeypatch):
    import runpy

    import setuptools

    import vmil

    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    assert captured.get("version") == vmil.__version__, "setup.py's version is not vmil.__version__"
    assert re.fullmatch(r"\d+\.\d+\.\d+", vmil.__version__)
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"vmil {vmil.__version__}"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {vmil.__version__}" in changelog, "CHANGELOG.md has no section for the current version"
