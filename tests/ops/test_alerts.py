"""ops/prometheus/alerts.yml: loaded by the Prometheus that docker compose runs, well-formed, and every metric an
alert reads is one the worker or the trainer really exports, with the labels it matches on."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.ops.test_grafana import exported_by_worker_and_trainer

REPO = Path(__file__).parents[2]
RULES = REPO / "ops" / "prometheus" / "alerts.yml"
# A metric in a PromQL expression: genrec_*, Faust's faust_*, the process collectors' process_*.
_METRIC = re.compile(r"\b((?:genrec|faust|process)_[a-z_]+)\b(\{[^}]*\})?")
_MATCHER = re.compile(r'(\w+)\s*(?:=~|!~|!=|=)\s*"')
# Labels Prometheus adds to every scraped series.
_TARGET_LABELS = {"job", "instance"}
# The alerts the issue asks for (issue 20 item 5), by name.
REQUIRED = {"GenrecConsumerLagGrowing", "GenrecDeadLettersRising", "GenrecNoModelSwap", "GenrecLatencyP99OverTarget"}


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def metrics_in(expr: str) -> dict[str, set[str]]:
    """{metric name: label names matched on} for every genrec/faust/process metric in a PromQL expression."""
    out: dict[str, set[str]] = {}
    for name, selector in _METRIC.findall(expr):
        out.setdefault(name, set()).update(_MATCHER.findall(selector or ""))
    return out


def test_prometheus_loads_the_rules_docker_compose_mounts() -> None:
    config = yaml.safe_load((REPO / "ops" / "prometheus.yml").read_text())
    compose = yaml.safe_load((REPO / "docker-compose.kafka.yml").read_text())
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1)[::-1] for v in compose["services"]["prometheus"]["volumes"]
                  if v.startswith("./"))
    (rule_file,) = config["rule_files"]
    folder, name = rule_file.rsplit("/", 1)
    assert REPO / mounts[folder] / name == RULES


def test_every_alert_is_well_formed() -> None:
    found = rules()
    names = [r["alert"] for r in found]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED
    for r in found:
        assert r["labels"]["severity"] in {"warning", "critical"}, r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        expr = r["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), r["alert"]
        assert re.fullmatch(r"\d+[smh]", r.get("for", "0s")), r["alert"]


def test_every_alert_reads_metrics_the_worker_exports_with_their_labels() -> None:
    exported = exported_by_worker_and_trainer()
    labels = _label_names()
    for r in rules():
        used = metrics_in(r["expr"])
        assert used, f"{r['alert']} reads no genrec metric"
        missing = set(used) - exported
        assert not missing, f"{r['alert']} reads metrics nobody exports: {sorted(missing)}"
        for name, matched in used.items():
            unknown = matched - _TARGET_LABELS - labels.get(family(name), set())
            assert not unknown, f"{r['alert']}: {name} has no label {sorted(unknown)}"


def family(sample: str) -> str:
    return re.sub(r"_(total|bucket|sum|count)$", "", sample)


def _label_names() -> dict[str, set[str]]:
    """{family: label names} of the worker's and the trainer's metrics (declared ones, so also before a sample)."""
    from genrec.streams.metrics import WorkerMetrics
    from genrec.streams.trainer import TrainerMetrics
    from prometheus_client.metrics import MetricWrapperBase

    worker = WorkerMetrics()
    worker.add_lag_source(lambda: [("genrec.requests", 0, 3)])
    out: dict[str, set[str]] = {}
    for holder in (worker, TrainerMetrics()):
        for metric in vars(holder).values():
            if isinstance(metric, MetricWrapperBase):
                out[metric._name] = set(metric._labelnames)
    for fam in worker.registry.collect():  # collectors (the lag gauge) declare their labels on their samples
        for sample in fam.samples:
            out.setdefault(fam.name, set()).update(sample.labels)
    return out
