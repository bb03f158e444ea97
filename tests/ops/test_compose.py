"""docker-compose.kafka.yml, ops/Dockerfile and ops/prometheus.yml, checked without a Docker engine:
parsed, interpolated the way Compose does, and the genrec commands in them parsed by the real CLI."""

from __future__ import annotations

import base64
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from genrec.ops import cli_infra, cli_model

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.kafka.yml"
THREE_BROKERS_ENV = REPO / "ops" / "kafka-three-brokers.env"
KAFKA_NODES = ("kafka", "kafka-2", "kafka-3")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${VAR:-default}` substitution, applied to every string in the document."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    return value


def _load(env: dict[str, str] | None = None) -> dict[str, Any]:
    return _interpolate(yaml.safe_load(COMPOSE.read_text()), env or {})


def _env_file(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {k.strip(): v.strip() for k, v in (line.split("=", 1) for line in lines)}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _active(services: dict[str, Any], profiles: set[str]) -> set[str]:
    # A service without profiles always runs; one with profiles runs when one of them is enabled.
    return {
        name for name, svc in services.items() if not svc.get("profiles") or set(svc["profiles"]) & profiles
    }


def test_every_variable_has_a_default() -> None:
    # `docker compose up` must work without a .env file.
    raw = COMPOSE.read_text()
    missing = [m.group(0) for m in _VAR.finditer(raw) if m.group(2) is None]
    assert not missing, missing


def test_services_and_profiles(services: dict[str, Any]) -> None:
    assert {"kafka", "topics", "model-init", "worker", "trainer", "prometheus", "grafana-secret", "grafana"} <= _active(
        services, set()
    )
    assert not {"kafka-2", "kafka-3"} & _active(services, set())
    assert {"kafka-2", "kafka-3"} <= _active(services, {"three-brokers"})
    assert not any("zookeeper" in name for name in services)


def test_kafka_runs_kraft_with_one_consistent_quorum(services: dict[str, Any]) -> None:
    for name in KAFKA_NODES:
        svc = services[name]
        assert svc["image"].startswith("apache/kafka:3.")
        env = svc["environment"]
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        assert "CONTROLLER://:9093" in env["KAFKA_LISTENERS"]
        assert env["KAFKA_LOG_DIRS"] in svc["volumes"][0]
        assert svc["healthcheck"]["test"] and "19092" in " ".join(svc["healthcheck"]["test"])
    cluster_ids = {services[n]["environment"]["CLUSTER_ID"] for n in KAFKA_NODES}
    assert len(cluster_ids) == 1
    # kafka-storage format wants a base64url UUID: 22 characters, 16 bytes.
    (cluster_id,) = cluster_ids
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    assert sorted(services[n]["environment"]["KAFKA_NODE_ID"] for n in KAFKA_NODES) == [1, 2, 3]
    # One broker by default: the single node is the only voter.
    assert services["kafka"]["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"


def test_three_brokers_env_file_gives_every_node_the_same_three_voters() -> None:
    env = _env_file(THREE_BROKERS_ENV)
    assert env["COMPOSE_PROFILES"] == "three-brokers"
    services = _load(env)["services"]
    voters = {services[n]["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"] for n in KAFKA_NODES}
    assert len(voters) == 1
    parsed = {int(v.split("@")[0]): v.split("@")[1] for v in voters.pop().split(",")}
    assert parsed == {services[n]["environment"]["KAFKA_NODE_ID"]: f"{n}:9093" for n in KAFKA_NODES}
    assert services["kafka"]["environment"]["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
    bootstrap = services["worker"]["environment"]["GENREC_BOOTSTRAP"].split(",")
    assert sorted(bootstrap) == sorted(f"{n}:19092" for n in KAFKA_NODES)
    topics_cmd = services["topics"]["command"]
    assert topics_cmd[topics_cmd.index("--replication-factor") + 1] == "3"


def test_worker_scales_and_is_health_checked(services: dict[str, Any]) -> None:
    worker = services["worker"]
    # `--scale worker=N` fails on a fixed container name or host port.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["environment"]["GENREC_BOOTSTRAP"] == "kafka:19092"
    assert worker["command"][:1] == ["worker"]
    assert worker["command"][worker["command"].index("--role") + 1] == "infer"
    assert worker["command"][worker["command"].index("--bootstrap") + 1] == "kafka:19092"
    health = " ".join(worker["healthcheck"]["test"])
    assert "/health" in health and "6066" in health
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert any(v.startswith("models:/models") for v in worker["volumes"])
    assert (REPO / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()


def test_trainer_is_a_single_worker_role_with_the_writable_model_store(services: dict[str, Any]) -> None:
    trainer = services["trainer"]
    cmd = trainer["command"]
    assert cmd[0] == "worker" and cmd[cmd.index("--role") + 1] == "trainer"
    assert trainer["environment"]["GENREC_BOOTSTRAP"] == "kafka:19092"
    assert "models:/models" in trainer["volumes"]  # read-write, unlike the workers
    assert "/health" in " ".join(trainer["healthcheck"]["test"])


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for svc in compose["services"].values():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, source


def _cli() -> Any:
    app = typer.Typer()
    bench = typer.Typer()
    app.add_typer(bench, name="bench")
    cli_infra.register(app, bench)
    return typer.main.get_command(app)


def test_topic_provisioning_command_parses_with_the_real_cli(services: dict[str, Any]) -> None:
    topics = services["topics"]
    cmd = topics["command"]
    assert cmd[:2] == ["topics", "create"]
    assert cmd[cmd.index("--partitions") + 1] == "6"  # default when GENREC_PARTITIONS is unset
    assert topics["environment"]["GENREC_BOOTSTRAP"] == "kafka:19092"
    assert topics["restart"] == "no"
    create = _cli().commands["topics"].commands["create"]
    ctx = create.make_context("create", list(cmd[2:]))  # raises on an unknown flag or a bad value
    assert ctx.params["partitions"] == 6


def test_partitions_follow_the_environment() -> None:
    services = _load({"GENREC_PARTITIONS": "12"})["services"]
    cmd = services["topics"]["command"]
    assert cmd[cmd.index("--partitions") + 1] == "12"
    assert services["worker"]["environment"]["GENREC_PARTITIONS"] == "12"


def test_prometheus_scrapes_every_worker_replica(services: dict[str, Any]) -> None:
    mounts = services["prometheus"]["volumes"]
    source = next(v.split(":")[0] for v in mounts if v.split(":")[1] == "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load((REPO / source).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker_port = int(services["worker"]["environment"]["GENREC_WEB_PORT"])
    worker_job = jobs["genrec-worker"]
    assert worker_job["metrics_path"] == "/metrics"
    (sd,) = worker_job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["type"] == "A" and sd["port"] == worker_port
    assert str(worker_port) in services["worker"]["expose"]
    assert jobs["genrec-trainer"]["static_configs"][0]["targets"] == [f"trainer:{worker_port}"]


DOCKERFILE = REPO / "ops" / "Dockerfile"


def _stages() -> dict[str, tuple[str, list[str]]]:
    """Each build stage of ops/Dockerfile: name → (base, instructions without comments and blank lines)."""
    stages: dict[str, tuple[str, list[str]]] = {}
    current: list[str] = []
    for raw in DOCKERFILE.read_text().replace("\\\n", " ").splitlines():
        line = " ".join(raw.split())
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"FROM (\S+) AS (\S+)", line)
        if m:
            current = []
            stages[m.group(2)] = (m.group(1), current)
        else:
            current.append(line)
    return stages


def test_dockerfile_has_a_cpu_default_and_a_cuda_target_with_the_exact_torch() -> None:
    stages = _stages()
    assert list(stages)[-1] == "cpu"  # the last stage is what a plain `docker build` (and compose) builds
    assert stages["cpu"][0] == "torch-cpu" and stages["cuda"][0] == "torch-cuda"
    assert stages["torch-cpu"][0] == stages["torch-cuda"][0] == "base"
    assert stages["base"][0] == "python:3.11-slim"
    assert re.search(r"^ARG TORCH_VERSION=2\.13\.0$", DOCKERFILE.read_text(), re.M)
    cpu_torch = " ".join(stages["torch-cpu"][1])
    assert "--index-url https://download.pytorch.org/whl/cpu torch==${TORCH_VERSION}" in cpu_torch
    # PyPI's Linux torch is the CUDA build: the cuda stage installs it from there, at the same version.
    cuda_torch = " ".join(stages["torch-cuda"][1])
    assert "pip install torch==${TORCH_VERSION}" in cuda_torch and "/whl/cpu" not in cuda_torch
    # The two images differ only in their torch.
    assert stages["cpu"][1] == stages["cuda"][1]
    app = stages["cpu"][1]
    deps = next(line for line in app if re.search(r"pip install \"\.", line))
    assert '".${GENREC_EXTRAS:+[$GENREC_EXTRAS]}"' in deps  # extras are opt-in: the image is the core install
    assert app.index(deps) < app.index("RUN pip install --no-deps . && rm -rf build *.egg-info")
    assert 'ENTRYPOINT ["genrec"]' in app
    assert ".venv" in (REPO / ".dockerignore").read_text().split()


def test_compose_builds_the_cpu_target_by_default(services: dict[str, Any]) -> None:
    targets = {svc["build"]["target"] for svc in services.values() if "build" in svc}
    assert targets == {"cpu"}
    assert _load({"GENREC_IMAGE_TARGET": "cuda"})["services"]["worker"]["build"]["target"] in _stages()


def test_no_data_folder_is_needed_the_first_model_trains_on_generated_data(services: dict[str, Any]) -> None:
    assert "../shared" not in COMPOSE.read_text()
    init = services["model-init"]
    assert not [v for v in init["volumes"] if v.split(":")[1] == "/data"]
    script = init["command"][0]
    assert script.startswith("test -e /models/initial ||")
    train_args = shlex.split(script.split("genrec train", 1)[1].split("&&", 1)[0])
    app = typer.Typer()
    cli_model.register(app, typer.Typer())
    train = typer.main.get_command(app).commands["train"]
    ctx = train.make_context("train", train_args)  # an unknown flag or a bad value raises
    assert ctx.params["dataset"] == "synthetic"
    from genrec.model.data import load_dataset

    assert len(load_dataset("synthetic", None).item_ids) > 0  # what it trains on: no files
    for svc in ("worker", "trainer"):
        assert services[svc]["depends_on"]["model-init"]["condition"] == "service_completed_successfully"


def test_the_data_override_mounts_a_required_folder_read_only() -> None:
    override = yaml.safe_load((REPO / "ops" / "compose-data.yml").read_text())
    (volume,) = override["services"]["model-init"]["volumes"]
    assert volume.startswith("${GENREC_DATA_HOST_DIR:?") and volume.endswith(":/data:ro")


def test_every_published_port_is_bound_to_loopback(compose: dict[str, Any]) -> None:
    published = [p for svc in compose["services"].values() for p in svc.get("ports", [])]
    assert len(published) == 5  # three Kafka nodes, Prometheus, Grafana
    for port in published:
        assert str(port).startswith("127.0.0.1:"), port
    moved = _load({"GENREC_HOST_BIND": "10.0.0.5"})["services"]["grafana"]["ports"]
    assert moved == ["10.0.0.5:3000:3000"]


def test_grafana_has_no_anonymous_access_and_no_committed_password(services: dict[str, Any]) -> None:
    env = services["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"].startswith("/secrets/")
    assert any(v.startswith("grafana-secret:/secrets") for v in services["grafana"]["volumes"])
    assert services["grafana"]["depends_on"]["grafana-secret"]["condition"] == "service_completed_successfully"
    assert not re.search(r"GRAFANA_ADMIN_PASSWORD:-[^}]", COMPOSE.read_text())  # no default secret


def _grafana_secret(services: dict[str, Any], tmp_path: Path, *args: str, password: str = "") -> str:
    """Runs the grafana-secret program as the container would, with its volume at tmp_path."""
    entry = services["grafana-secret"]["entrypoint"]
    assert entry[:2] == ["python", "-c"]
    code = entry[2].replace("/secrets/", f"{tmp_path}/")
    env = {**os.environ, "GRAFANA_ADMIN_PASSWORD": password}
    argv = list(args) or services["grafana-secret"]["command"]
    done = subprocess.run([sys.executable, "-c", code, *entry[3:], *argv], env=env, capture_output=True,
                          text=True, check=True, timeout=30)
    return done.stdout.strip()


def test_grafana_password_is_generated_once_or_taken_from_the_environment(
    services: dict[str, Any], tmp_path: Path
) -> None:
    secret = tmp_path / "grafana-admin-password"
    _grafana_secret(services, tmp_path)
    first = secret.read_text()
    assert len(first) >= 20
    _grafana_secret(services, tmp_path)
    assert secret.read_text() == first  # kept across restarts
    assert _grafana_secret(services, tmp_path, "cat") == first
    _grafana_secret(services, tmp_path, password="chosen-by-the-operator")
    assert secret.read_text() == "chosen-by-the-operator"
