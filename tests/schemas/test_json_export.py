"""The JSON Schemas committed under schemas/json/ are the messages' current ones, `genrec schemas export` writes
and checks them, and every example payload in the README decodes with its message."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer
from genrec.ops import cli_schemas
from genrec.schemas.messages import ALL_MESSAGES, JSON_SCHEMA_DIALECT, decode, json_schema_files
from typer.testing import CliRunner

REPO = Path(__file__).parents[2]
COMMITTED = REPO / "schemas" / "json"
_EXAMPLE = re.compile(r"^\*\*(\w+)\*\*[^\n]*\n```json\n(.*?)\n```", re.MULTILINE | re.DOTALL)


def _app() -> typer.Typer:
    app, bench_app = typer.Typer(), typer.Typer()
    cli_schemas.register(app, bench_app)
    return app


def test_the_committed_schemas_are_current() -> None:
    stale = cli_schemas.stale_schemas(COMMITTED)
    assert not stale, f"schemas/json is not current ({stale}): run `genrec schemas export schemas/json`"
    assert {p.name for p in COMMITTED.iterdir()} == set(json_schema_files())


def test_one_schema_per_message_with_its_dialect() -> None:
    for name, model in ALL_MESSAGES.items():
        schema = json.loads((COMMITTED / f"{name}.schema.json").read_text(encoding="utf-8"))
        assert schema["$schema"] == JSON_SCHEMA_DIALECT
        assert schema["title"] == model.__name__
        assert set(schema["properties"]) == set(model.model_fields)


def test_export_writes_checks_and_removes_what_is_stale(tmp_path: Path) -> None:
    app, runner, out = _app(), CliRunner(), tmp_path / "json"
    assert runner.invoke(app, ["schemas", "export", str(out), "--check"]).exit_code == 1  # nothing there yet
    written = runner.invoke(app, ["schemas", "export", str(out)])
    assert written.exit_code == 0, written.output
    assert sorted(p.name for p in out.iterdir()) == sorted(json_schema_files())
    assert runner.invoke(app, ["schemas", "export", str(out), "--check"]).exit_code == 0

    (out / "Event.schema.json").write_text("{}\n")
    (out / "Gone.schema.json").write_text("{}\n")  # a message that was renamed or removed
    checked = runner.invoke(app, ["schemas", "export", str(out), "--check"])
    assert checked.exit_code == 1 and "Event.schema.json" in checked.output and "Gone.schema.json" in checked.output
    again = runner.invoke(app, ["schemas", "export", str(out)])
    assert again.exit_code == 0 and "removed" in again.output
    assert cli_schemas.stale_schemas(out) == []


def test_every_readme_example_payload_decodes_with_its_message() -> None:
    examples = _EXAMPLE.findall((REPO / "README.md").read_text(encoding="utf-8"))
    assert {name for name, _ in examples} == set(ALL_MESSAGES), "one example payload per message at least"
    for name, text in examples:
        model = ALL_MESSAGES[name]
        payload = json.loads(text)
        assert set(payload) <= set(model.model_fields), (name, set(payload) - set(model.model_fields))
        decode(model, text.encode("utf-8"))  # raises on a wrong example
