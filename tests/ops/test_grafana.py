"""The Grafana dashboard reads only metrics the worker and the trainer really export, from the jobs that
ops/prometheus.yml scrapes, and docker compose provisions it where the provider looks."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).parents[2]
DASHBOARD = REPO / "ops" / "grafana" / "dashboards" / "genrec.json"
_METRIC = re.compile(r"\bgenrec_[a-z_]+")
# Faust's sensors and the process collectors: exported too, and documented as families (README), not one by one.
_OTHER_METRIC = re.compile(r"\b(?:faust|process)_[a-z_]+")
_JOB = re.compile(r'job="\$(\w+)"')


def _exported(registry: Any) -> set[str]:
    """Every sample name a registry can expose (counters as _total, histograms as _bucket/_sum/_count)."""
    names: set[str] = set()
    for fam in registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(fam.type, ("",))
        names |= {fam.name + s for s in suffixes}
    return names


def _exprs(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def exported_by_worker_and_trainer() -> set[str]:
    """Every sample name the worker's and the trainer's /metrics can serve, Faust's sensors included."""
    import os

    import faust
    from genrec.streams.metrics import WorkerMetrics, install_faust_sensors
    from genrec.streams.trainer import TrainerMetrics

    worker = WorkerMetrics()
    worker.add_lag_source(lambda: [("genrec.requests", 0, 3)])
    worker.add_inference_process(os.getpid)  # any live process: the child's families appear once it runs
    install_faust_sensors(faust.App("genrec-metric-names", broker="kafka://127.0.0.1:1", web_enabled=False),
                          worker.registry)
    return _exported(worker.registry) | _exported(TrainerMetrics().registry)


def test_every_dashboard_metric_is_exported() -> None:
    exported = exported_by_worker_and_trainer()
    exprs = _exprs(json.loads(DASHBOARD.read_text()))
    used = {m for e in exprs for m in _METRIC.findall(e)}
    assert used, "the dashboard queries nothing"
    assert not used - exported, f"dashboard metrics nobody exports: {sorted(used - exported)}"
    other = {m for e in exprs for m in _OTHER_METRIC.findall(e)}
    assert not other - exported, f"dashboard metrics nobody exports: {sorted(other - exported)}"
    # Every exported metric the runbook tells operators about has a panel.
    def base(name: str) -> str:
        return re.sub(r"_(total|bucket|sum|count)$", "", name)

    exported_base = {base(m) for m in exported}
    documented = {base(m) for m in _METRIC.findall((REPO / "README.md").read_text())} & exported_base
    assert not documented - {base(m) for m in used}, sorted(documented - {base(m) for m in used})


def test_panels_use_the_datasource_variable_and_scraped_jobs() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    scraped = {j["job_name"] for j in yaml.safe_load((REPO / "ops" / "prometheus.yml").read_text())["scrape_configs"]}
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            (job_var,) = set(_JOB.findall(t["expr"])) or {None}
            assert job_var in variables, (p["title"], t["expr"])
            assert variables[job_var]["query"] in scraped, (p["title"], variables[job_var]["query"])


def test_compose_provisions_the_dashboard() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.kafka.yml").read_text())
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in compose["services"]["grafana"]["volumes"])
    provider = yaml.safe_load((REPO / "ops/grafana/provisioning/dashboards/genrec.yml").read_text())
    (prov,) = provider["providers"]
    assert mounts["./ops/grafana/dashboards"] == prov["options"]["path"]
    assert mounts["./ops/grafana/provisioning"] == "/etc/grafana/provisioning"
    ds = yaml.safe_load((REPO / "ops/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
