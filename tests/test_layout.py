"""The layout of the source tree: packages, module sizes and import boundaries."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"hw": "velcro.hw", "sw": "velcro.sw", "sim": "velcro.sim"}
MAX_LINES = 500


@pytest.fixture(scope="module")
def modules(repo_files) -> dict[str, Path]:
    """``velcro.<...>`` dotted name -> file, for every tracked Python file of hw/ sw/ sim/."""
    modules = {}
    for path in repo_files:
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SOURCES and rel.suffix == ".py":
            parts = [SOURCES[rel.parts[0]], *rel.with_suffix("").parts[1:]]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported(name: str, path: Path) -> set[str]:
    """The velcro modules (or names in them) that ``path`` imports, as absolute names."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found |= {f"{module}.{alias.name}" for alias in node.names} | {module}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {m for m in found if m.startswith("velcro.")}


def test_pyproject_lists_every_package_of_the_tree(modules):
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    assert listed == packages


def test_every_package_says_what_its_stage_takes_and_gives(modules):
    for name, path in modules.items():
        if path.name == "__init__.py":
            docstring = ast.get_docstring(ast.parse(path.read_text()))
            assert docstring and len(docstring) > 40, f"{name} has no docstring of its own"


def test_sw_keeps_at_most_ten_top_level_modules():
    top = [p.name for p in (ROOT / "sw").glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= 10, sorted(top)


def test_long_modules_say_why_they_are_one_idea(modules):
    for name, path in modules.items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "Why one module:" in docstring, f"{name}: {lines} lines"


def test_hw_imports_nothing_from_sw(modules):
    for name, path in modules.items():
        if name.startswith("velcro.hw"):
            assert not {m for m in imported(name, path) if m.startswith("velcro.sw")}, name


def test_no_library_module_imports_the_command_line(modules):
    cli = ("velcro.sw.cli", "velcro.sw.commands")
    for name, path in modules.items():
        if name.startswith(cli):
            continue
        wrong = {m for m in imported(name, path) if m.startswith(cli)}
        assert not wrong, f"{name} imports {sorted(wrong)}"
    for name, path in modules.items():
        if name.startswith("velcro.sw.commands"):
            assert not {m for m in imported(name, path) if m.startswith("velcro.sw.cli")}, name


def loaded_by(names: list[str]) -> set[str]:
    """Top-level names of every module loaded by importing ``names`` in a fresh Python."""
    code = (f"import sys\nfor m in {names!r}: __import__(m)\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("prefix, forbidden", [
    # The specification and the file format: NumPy and the standard library only.
    (("velcro.sw.golden", "velcro.sw.export.package", "velcro.sw.export.bits",
      "velcro.sw.files"), {"torch", "amaranth", "cocotb", "faiss"}),
    # The report reads JSON and draws; it needs neither torch nor faiss.
    (("velcro.sw.report", "velcro.sw.commands.report"), {"torch", "faiss"}),
    # Ray loads when --ray or --workers is used, not with the cluster package.
    (("velcro.sw.cluster", "velcro.sw.commands"), {"ray"}),
])
def test_import_boundaries(modules, prefix, forbidden):
    names = sorted(n for n in modules if n.startswith(prefix))
    assert names
    assert not loaded_by(names) & forbidden


def test_the_command_line_starts_without_torch_or_faiss():
    """Building the parser (``velcro --help``, every start) loads no heavy native library:
    they load once a command needs them, with Ctrl-C held back while they initialise."""
    code = ("import sys\nfrom velcro.sw import cli\ncli.build_parser()\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert not set(out.stdout.split()) & {"torch", "faiss", "amaranth", "cocotb", "ray"}


def test_no_file_cites_documents_outside_the_repository(repo_files):
    outside = re.compile(r"\b(?:DESIGN|STYLE)" + r"\.md\b")
    for path in repo_files:
        if path.suffix in (".py", ".md", ".toml", ".txt", ".cfg") or path.name == "Makefile":
            text = path.read_text(errors="replace")
            assert not outside.search(text), path.relative_to(ROOT)
