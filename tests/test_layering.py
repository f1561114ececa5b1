"""The data walks one way and the imports follow it: shards at the bottom, preprocess and training on
top of it and never importing each other, pipeline on top, and nothing importing pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("shards", "preprocess", "training", "pipeline", "cluster")
ALLOWED = {
    "shards": set(),
    "preprocess": {"shards"},
    "training": {"shards"},
    "cluster": {"shards", "preprocess", "training"},
    "pipeline": {"shards", "preprocess", "training", "cluster"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(OURS)


@pytest.mark.parametrize("package", OURS)
def test_imports_follow_the_data(package):
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"{package}/ has no Python files"
    for f in files:
        bad = imported_packages(f) - ALLOWED[package] - {package}
        assert not bad, f"{f.relative_to(REPO)} imports {sorted(bad)}; {package}/ may use {sorted(ALLOWED[package])}"


def test_the_checker_sees_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import os\nfrom training.models import get_model\nimport preprocess.decode as d\n")
    assert imported_packages(f) == {"training", "preprocess"}


def test_packages_are_not_shadowed_by_output_folders_in_the_working_directory(tmp_path):
    """Ray puts the driver's working directory first on its workers' sys.path, and users run `e3d` from the
    folder where `--out shards` wrote `shards/manifest/...`: those folders must not shadow our packages."""
    import subprocess
    import sys

    for d in ("shards/manifest", "shards/shards", "training/models", "preprocess", "pipeline"):
        (tmp_path / d).mkdir(parents=True)
    code = ("import shards.manifest, training.loop, preprocess.run, pipeline.cli\n"
            "from shards.manifest import read_dataset_info\n"
            "print(shards.__file__, training.loop.__file__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert all(Path(p).is_relative_to(REPO) for p in proc.stdout.split()), proc.stdout
