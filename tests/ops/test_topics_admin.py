"""Topic provisioning: create/describe round trip on the real broker, idempotence, CLI."""

from __future__ import annotations

import json
import uuid

import pytest
import typer
from genrec.ops import cli_infra
from genrec.ops.kafka_clients import KafkaSecurity, make_admin
from genrec.ops.topics import TopicNames, TopicSpec, create_topics, default_specs, describe_topics
from typer.testing import CliRunner

from tests.conftest import both_brokers

PLAIN = KafkaSecurity()


def _unique_names() -> TopicNames:
    # The session broker is shared: never touch the default names other tests may rely on.
    tag = uuid.uuid4().hex[:8]
    return TopicNames(*(f"{name}.{tag}" for name in TopicNames().all()))


def _app() -> typer.Typer:
    app = typer.Typer()
    bench_app = typer.Typer()
    app.add_typer(bench_app, name="bench")
    cli_infra.register(app, bench_app)
    return app


def test_default_specs_follow_the_design() -> None:
    names = TopicNames()
    specs = {s.name: s for s in default_specs(partitions=6)}
    assert list(specs) == list(names.all())
    assert [specs[n].partitions for n in names.all()] == [6, 6, 6, 6, 1]
    assert [n for n, s in specs.items() if s.compacted] == ["genrec.models"]
    assert all("min.insync.replicas" not in s.configs for s in specs.values())

    changelog = "app-user_history-changelog"
    replicated = default_specs(partitions=6, replication_factor=3, extra_compacted=[changelog])
    assert {s.replication_factor for s in replicated} == {3}
    assert all(s.configs["min.insync.replicas"] == "2" for s in replicated)
    assert [s.name for s in replicated if s.compacted] == ["genrec.models", changelog]
    # The models topic stays compacted: retention would delete the version being served.
    no_compact = default_specs(compact_changelogs=False, extra_compacted=[changelog])
    assert [s.name for s in no_compact if s.compacted] == ["genrec.models"]


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="named twice"):
        default_specs(TopicNames(results="genrec.events"))
    with pytest.raises(ValueError, match="partitions"):
        TopicSpec("t", 0)


@pytest.mark.integration
@both_brokers
async def test_create_then_describe_round_trip(any_bootstrap: str) -> None:
    names = _unique_names()
    specs = default_specs(names, partitions=3)
    first = await create_topics(any_bootstrap, specs, security=PLAIN)
    assert [(r.name, r.status, r.partitions) for r in first] == [
        (s.name, "created", s.partitions) for s in specs
    ]

    infos = {i.name: i for i in await describe_topics(any_bootstrap, names.all(), security=PLAIN)}
    for name in (names.events, names.requests, names.results, names.deadletter):
        assert infos[name].exists and infos[name].partitions == 3
        assert infos[name].replication_factor == 1
        assert len(infos[name].leaders) == 3
        assert infos[name].configs.get("cleanup.policy", "delete") == "delete"
    assert infos[names.models].partitions == 1
    assert infos[names.models].configs["cleanup.policy"] == "compact"

    again = await create_topics(any_bootstrap, specs, security=PLAIN)
    assert {r.status for r in again} == {"exists"}

    # Another partition count is reported, never applied: user state lives by partition.
    other = await create_topics(any_bootstrap, default_specs(names, partitions=5), security=PLAIN)
    assert {r.name: r.status for r in other}[names.events] == "exists-different"
    described = await describe_topics(any_bootstrap, [names.events], security=PLAIN)
    assert described[0].partitions == 3


@pytest.mark.integration
@both_brokers
async def test_describing_a_missing_topic_does_not_create_it(any_bootstrap: str) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    (info,) = await describe_topics(any_bootstrap, [missing], security=PLAIN)
    assert not info.exists
    admin = make_admin(any_bootstrap, security=PLAIN)
    await admin.start()
    try:
        assert missing not in await admin.list_topics()
    finally:
        await admin.close()


@pytest.mark.integration
@both_brokers
def test_cli_create_and_describe(any_bootstrap: str) -> None:
    names = _unique_names()
    flags = [
        "--bootstrap", any_bootstrap,
        "--events-topic", names.events,
        "--requests-topic", names.requests,
        "--results-topic", names.results,
        "--deadletter-topic", names.deadletter,
        "--models-topic", names.models,
    ]  # fmt: skip
    runner = CliRunner()
    app = _app()
    created = runner.invoke(app, ["topics", "create", *flags, "--partitions", "2", "--json"])
    assert created.exit_code == 0, created.output
    rows = {row["name"]: row for row in json.loads(created.stdout)["topics"]}
    assert {row["status"] for row in rows.values()} == {"created"}
    assert rows[names.models]["compacted"] and not rows[names.events]["compacted"]

    again = runner.invoke(app, ["topics", "create", *flags, "--partitions", "4", "--strict"])
    assert again.exit_code == 3, again.output

    described = runner.invoke(app, ["topics", "describe", *flags, "--json"])
    assert described.exit_code == 0, described.output
    topics = {t["name"]: t for t in json.loads(described.stdout)["topics"]}
    assert topics[names.events]["partitions"] == 2
    assert topics[names.models]["configs"]["cleanup.policy"] == "compact"

    missing = runner.invoke(app, ["topics", "describe", "--bootstrap", any_bootstrap, f"nope-{uuid.uuid4().hex}"])
    assert missing.exit_code == 1


def test_cli_reports_an_unreachable_cluster_without_a_traceback() -> None:
    from genrec.ops.broker import free_port

    result = CliRunner().invoke(
        _app(), ["topics", "create", "--bootstrap", f"127.0.0.1:{free_port()}", "--wait", "0.5"]
    )
    assert result.exit_code == 1
    assert "no Kafka broker answered" in result.output


@pytest.mark.integration
@both_brokers
def test_cli_app_id_pre_creates_the_history_changelog_compacted(any_bootstrap: str) -> None:
    names = _unique_names()
    app_id = f"scale-{uuid.uuid4().hex[:8]}"
    flags = [
        "--bootstrap", any_bootstrap,
        "--events-topic", names.events,
        "--requests-topic", names.requests,
        "--results-topic", names.results,
        "--deadletter-topic", names.deadletter,
        "--models-topic", names.models,
    ]  # fmt: skip
    runner = CliRunner()
    created = runner.invoke(_app(), ["topics", "create", *flags, "--partitions", "3", "--app-id", app_id, "--json"])
    assert created.exit_code == 0, created.output
    changelog = f"{app_id}-user_history-changelog"
    rows = {row["name"]: row for row in json.loads(created.stdout)["topics"]}
    assert rows[changelog]["status"] == "created" and rows[changelog]["compacted"]
    described = runner.invoke(_app(), ["topics", "describe", changelog, "--bootstrap", any_bootstrap, "--json"])
    (info,) = json.loads(described.stdout)["topics"]
    # Co-partitioned with the data topics: the same count, or Faust's table would not line up with them.
    assert info["partitions"] == 3 and info["configs"]["cleanup.policy"] == "compact"
