"""Settings: env prefix, flag precedence, validation, secrets never dumped."""

from __future__ import annotations

import pytest
from genrec.streams.settings import StreamSettings
from pydantic import ValidationError


def test_defaults_follow_the_design(monkeypatch):
    for k in list(__import__("os").environ):
        if k.startswith("GENREC_"):
            monkeypatch.delenv(k)
    s = StreamSettings()
    assert (s.events_topic, s.requests_topic, s.results_topic, s.deadletter_topic, s.models_topic) == (
        "genrec.events",
        "genrec.requests",
        "genrec.results",
        "genrec.deadletter",
        "genrec.models",
    )
    assert s.bootstrap == "127.0.0.1:9092"
    assert s.history_len == 200
    # One-record changelog batches on the embedded broker (the default until the worker detects its broker).
    assert s.broker_kind == "auto" and s.producer_profile.changelog_max_batch_size == 64
    assert s.fetch_max_wait_ms <= 50


def test_env_then_flags(monkeypatch):
    monkeypatch.setenv("GENREC_BOOTSTRAP", "10.0.0.1:9093")
    monkeypatch.setenv("GENREC_MAX_BATCH", "32")
    monkeypatch.setenv("GENREC_RESULTS_TOPIC", "custom.results")
    s = StreamSettings.from_flags(max_batch=8, max_wait_ms=None, web_port=7000)
    assert s.bootstrap == "10.0.0.1:9093"
    assert s.results_topic == "custom.results"
    assert s.max_batch == 8  # a flag given beats the env
    assert s.max_wait_ms == 10.0  # a flag not given (None) leaves the default
    assert s.web_port == 7000
    assert s.broker_url == "kafka://10.0.0.1:9093"


def test_multiple_bootstrap_servers():
    s = StreamSettings(bootstrap="a:1, b:2")
    assert s.bootstrap_servers == ["a:1", "b:2"]
    assert s.broker_url == "kafka://a:1;kafka://b:2"


@pytest.mark.parametrize(
    "bad",
    [
        {"max_batch": 0},
        {"max_wait_ms": -1},
        {"history_len": 0},
        {"partitions": 0},
        {"heartbeat_interval_s": 10, "session_timeout_s": 5},
        {"session_timeout_s": 50, "request_timeout_s": 40},
        {"security_protocol": "SASL_PLAINTEXT"},  # no credentials
        {"security_protocol": "BOGUS"},
    ],
)
def test_invalid(bad):
    with pytest.raises(ValidationError):
        StreamSettings(**bad)


def test_sasl_password_never_leaks(monkeypatch):
    monkeypatch.setenv("GENREC_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("GENREC_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("GENREC_SASL_USERNAME", "svc")
    monkeypatch.setenv("GENREC_SASL_PASSWORD", "hunter2-secret")
    s = StreamSettings()
    assert "hunter2-secret" not in repr(s)
    assert "hunter2-secret" not in str(s.safe_dump())
    kw = s.aiokafka_security()
    assert kw["sasl_plain_password"] == "hunter2-secret"
    assert kw["sasl_mechanism"] == "SCRAM-SHA-256" and kw["security_protocol"] == "SASL_PLAINTEXT"


# ---- the state folder (issue 19 item 7) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "files",
    [["u.data", "u.item"], ["ml-100k/u.data"], ["amazon-beauty/Beauty_5core_timestamped.tsv.gz"],
     ["interactions.csv"], ["ml-1m/ratings.dat"]],
    ids=["ml-100k folder", "shared data folder", "amazon", "csv dump", "ml-1m ratings"],
)
def test_a_data_set_folder_is_refused_as_the_state_folder(tmp_path, files):
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("1\t2\t3\t874965758\n")
    with pytest.raises(ValidationError) as exc:
        StreamSettings(state_dir=tmp_path)
    msg = exc.value.errors()[0]["msg"]
    assert "data-set files" in msg and "--state-dir" in msg
    assert any(f.split("/")[-1] in msg for f in files)


def test_the_real_shared_data_folder_is_refused(data_dir):
    with pytest.raises(ValidationError, match="looks like a data set folder"):
        StreamSettings(state_dir=data_dir)


def test_missing_empty_and_used_state_folders_are_accepted(tmp_path):
    assert StreamSettings(state_dir=tmp_path / "absent").state_dir == tmp_path / "absent"
    assert StreamSettings(state_dir=tmp_path).state_dir == tmp_path
    # What Faust and RocksDB leave in a state folder (and the stream benchmark's result file).
    tables = tmp_path / "genrec-data" / "v1" / "tables" / "user_history-0.db"
    tables.mkdir(parents=True)
    for name in ("000012.log", "000011.sst", "CURRENT", "LOG", "MANIFEST-000005", "OPTIONS-000007"):
        (tables / name).write_bytes(b"x")
    (tmp_path / "result.json").write_text("{}")
    assert StreamSettings(state_dir=tmp_path).state_dir == tmp_path


def test_state_dir_comes_from_its_own_env_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("GENREC_STATE_DIR", str(tmp_path / "s"))
    assert StreamSettings().state_dir == tmp_path / "s"
