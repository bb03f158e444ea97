"""The installed names (pyproject.toml's package-dir): everything lives under `genrec.`, nothing at the top."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("schemas", "model", "streams", "ops")


def test_no_module_imports_a_folder_by_its_bare_name() -> None:
    """`import model` would load a second copy of a module beside `genrec.model` (two Prometheus registries, two
    classes of one name), and would not exist in an installed wheel."""
    bad = []
    for path in ROOT.glob("**/*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in (".venv", "build", ".cache", "runs") or "site-packages" in rel.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(rel))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            bad += [f"{rel}:{node.lineno} {n}" for n in names if n.split(".")[0] in FOLDERS]
    assert not bad, bad


@pytest.mark.slow
def test_the_wheel_installs_every_package_under_genrec(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("genrec-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"genrec"}
    for f in ("genrec/__init__.py", "genrec/client.py", "genrec/schemas/messages.py", "genrec/model/train.py",
              "genrec/streams/app.py", "genrec/ops/cli.py", "genrec/ops/grafana/dashboards/genrec.json",
              "genrec/ops/prometheus/alerts.yml", "genrec/ops/kafka/pom.xml", "genrec/schemas/json/Event.schema.json"):
        assert f in names, f
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "genrec = genrec.ops.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
