"""`genrec worker` names its state folder --state-dir; the old names are refused, not reinterpreted (issue 19)."""

from __future__ import annotations

from pathlib import Path

import pytest
from genrec.ops.cli import _register, app
from typer.testing import CliRunner

_register()


@pytest.mark.parametrize("flag", ["--data-dir", "--datadir"])
def test_old_state_folder_flags_are_refused_with_a_pointer_to_state_dir(tmp_path: Path, flag: str) -> None:
    r = CliRunner().invoke(app, ["worker", "--bootstrap", "127.0.0.1:1", flag, str(tmp_path)])
    assert r.exit_code == 2
    assert "--state-dir" in r.output and "data set folder" in r.output


def test_the_old_env_variable_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENREC_DATADIR", str(tmp_path))
    r = CliRunner().invoke(app, ["worker", "--bootstrap", "127.0.0.1:1"])
    assert r.exit_code == 2 and "GENREC_STATE_DIR" in r.output


def test_a_data_set_folder_given_as_state_dir_is_refused_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "u.data").write_text("1\t2\t3\t874965758\n")
    r = CliRunner().invoke(app, ["worker", "--bootstrap", "127.0.0.1:1", "--state-dir", str(tmp_path)])
    assert r.exit_code == 2
    assert "looks like a data set folder" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml-100k"]  # nothing written into it
