"""`genrec schemas export DIR`: the JSON Schema of every message, for producers and consumers in other languages.

The copies committed under schemas/json/ are what this writes; tests/schemas/test_json_export.py fails when a
message changes and they were not exported again.
"""

from __future__ import annotations

from pathlib import Path

import typer

schemas_app = typer.Typer(no_args_is_help=True, help="JSON Schema of the messages on every genrec topic.")


def export_schemas(out: Path) -> tuple[list[str], list[str]]:
    """Write every message's schema into `out`; remove `*.schema.json` files of messages that no longer exist.

    Returns (written, removed) file names. Files are replaced atomically, so a reader never sees half a schema.
    """
    from genrec.schemas.messages import JSON_SCHEMA_SUFFIX, json_schema_files

    files = json_schema_files()
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
    removed = sorted(p.name for p in out.glob(f"*{JSON_SCHEMA_SUFFIX}") if p.name not in files)
    for name in removed:
        (out / name).unlink()
    return sorted(files), removed


def stale_schemas(out: Path) -> list[str]:
    """File names in `out` that differ from (or are missing, or are left over beside) the current schemas."""
    from genrec.schemas.messages import JSON_SCHEMA_SUFFIX, json_schema_files

    files = json_schema_files()
    stale = [name for name, text in files.items()
             if not (out / name).is_file() or (out / name).read_text(encoding="utf-8") != text]
    stale += [p.name for p in out.glob(f"*{JSON_SCHEMA_SUFFIX}") if p.name not in files]
    return sorted(stale)


@schemas_app.command("export")
def export(
    out: Path = typer.Argument(..., help="Folder to write <Message>.schema.json into (created if missing)."),
    check: bool = typer.Option(False, "--check", help="Write nothing; exit 1 if the folder's schemas are not "
                               "current (CI: `genrec schemas export schemas/json --check`)."),
) -> None:
    """Write the JSON Schema (draft 2020-12) of every message (Event, RecRequest, RecResult, DeadLetter, …)."""
    if check:
        stale = stale_schemas(out)
        if stale:
            typer.echo(f"genrec schemas export: not current in {out}: {', '.join(stale)} "
                       f"(run `genrec schemas export {out}`)", err=True)
            raise typer.Exit(1)
        typer.echo(f"{out}: current")
        return
    written, removed = export_schemas(out)
    for name in written:
        typer.echo(str(out / name))
    for name in removed:
        typer.echo(f"removed {out / name} (no such message any more)")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.add_typer(schemas_app, name="schemas")
