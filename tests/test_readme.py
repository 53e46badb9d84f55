"""The README describes the tree that is there, and its Python example runs."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.M | re.S)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def architecture_folders() -> list[str]:
    """The folders of the README's architecture tree, as paths from the root."""
    tree = re.search(r"```\n(.*?)```", section("Architecture"), re.S).group(1)
    folders, stack = [], []
    for line in tree.splitlines():
        match = re.match(r"( *)(\S+)/\s", line + " ")
        if not match:
            continue
        depth = len(match.group(1)) // 2
        stack[depth:] = [match.group(2)]
        folders.append("/".join(stack))
    return folders


def test_architecture_tree_names_every_source_folder_and_only_existing_ones(repo_files):
    named = architecture_folders()
    assert len(named) == len(set(named))
    for folder in named:
        assert (ROOT / folder).is_dir(), f"README names {folder}/, which does not exist"
    holding = {str(p.relative_to(ROOT).parent) for p in repo_files
               if p.relative_to(ROOT).parts[0] in ("hw", "sw", "sim")}
    missing = sorted(holding - set(named))
    assert not missing, f"source folders missing from the README's tree: {missing}"
    assert {"tests", "bitstreams"} <= set(named)


def test_python_api_example_runs_and_reports_its_figures():
    code = re.search(r"```python\n(.*?)```", section("Python API"), re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    match = re.fullmatch(r"C = (0\.\d+), accuracy (0\.\d+|1\.0+)\n", out.stdout)
    assert match, out.stdout
    assert float(match.group(1)) > 0.05 and float(match.group(2)) > 0.9
