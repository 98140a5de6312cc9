"""Settings: defaults, .env precedence, validation that names the variable, masked secrets."""
from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from musicrec.config import CommonSettings, OfflineSettings
from musicrec.service.settings import Settings, SettingsError, mask_url
from tests.fixtures_artifacts import REPO


def test_defaults_come_from_nothing_and_ignore_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9999")  # an explicit mapping is the whole environment
    s = Settings.from_env({}, env_file=None)
    assert s == Settings()
    assert (s.port, s.workers, s.session_len, s.session_ttl_s, s.event_buffer_size) == (8000, None, 20, 3600, 10_000)
    assert s.artifacts_dir == Path("artifacts") and s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.kafka_bootstrap_servers == "" and not s.kafka_enabled and s.kafka_topic == "music-events"
    assert (s.mode, s.log_level, s.redis_timeout_s) == ("offline", "INFO", 0.25)


def test_os_environ_is_read_when_no_mapping_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9999")
    assert Settings.from_env(env_file=None).port == 9999


def test_environment_overrides_the_env_file_and_a_missing_file_is_fine(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=9001\nWORKERS=3\nMODE=online\n# a comment\nKAFKA_TOPIC='from-file'\n"
                        "SPOTIPY_CLIENT_ID=id\nSPOTIPY_CLIENT_SECRET=secret\n")
    s = Settings.from_env({"PORT": "9002"}, env_file=env_file)
    assert (s.port, s.workers, s.mode, s.kafka_topic) == (9002, 3, "online", "from-file")
    assert Settings.from_env({}, env_file=tmp_path / "absent.env") == Settings()


def test_values_are_converted_and_normalised() -> None:
    s = Settings.from_env({"ARTIFACTS_DIR": "/srv/art", "REDIS_URL": "memory://", "LOG_LEVEL": "debug",
                           "MODE": "ONLINE", "REDIS_TIMEOUT_S": "0.5", "KAFKA_BOOTSTRAP_SERVERS": "a:9092,b:9093",
                           "RELOAD_POLL_S": "0", "FAISS_THREADS": "2", "ANSWER_CACHE_SIZE": "0",
                           "REDIS_CONNECTIONS": "2", "SPOTIPY_CLIENT_ID": "id", "SPOTIPY_CLIENT_SECRET": "secret",
                           "SPOTIFY_API_URL": "http://127.0.0.1:9/v1", "LOG_FORMAT": "JSON", "ACCESS_LOG": "yes"},
                          env_file=None)
    assert s.artifacts_dir == Path("/srv/art") and s.memory_sessions
    assert (s.log_level, s.mode, s.redis_timeout_s, s.reload_poll_s, s.faiss_threads) == ("DEBUG", "online", 0.5, 0.0, 2)
    assert (s.answer_cache_size, s.redis_connections) == (0, 2)
    assert s.kafka_enabled
    assert (s.spotify_api_url, s.log_format, s.access_log) == ("http://127.0.0.1:9/v1/", "json", True)
    assert s.spotify_config().api_url == "http://127.0.0.1:9/v1/"  # the online client is pointed where it says


def test_workers_default_to_one_per_usable_core_and_to_one_for_in_process_sessions() -> None:
    cores = len(os.sched_getaffinity(0))
    assert Settings.from_env({}, env_file=None).worker_count == cores
    assert Settings.from_env({"WORKERS": "auto"}, env_file=None).worker_count == cores
    assert Settings.from_env({"WORKERS": "3"}, env_file=None).worker_count == 3
    assert Settings.from_env({"REDIS_URL": "memory://"}, env_file=None).worker_count == 1
    assert Settings.from_env({"REDIS_URL": "memory://", "WORKERS": "1"}, env_file=None).worker_count == 1


def test_in_process_sessions_refuse_more_than_one_worker() -> None:
    with pytest.raises(SettingsError, match="WORKERS must be 1 or 'auto' with REDIS_URL=memory://"):
        Settings.from_env({"REDIS_URL": "memory://", "WORKERS": "2"}, env_file=None)


@pytest.mark.parametrize(("name", "value"), [
    ("PORT", "0"), ("PORT", "65536"), ("PORT", "http"), ("WORKERS", "0"), ("SESSION_LEN", "0"),
    ("SESSION_LEN", "1001"), ("SESSION_TTL_S", "0"), ("SESSION_TTL_S", "1.5"), ("EVENT_BUFFER_SIZE", "-1"),
    ("REDIS_TIMEOUT_S", "0"), ("REDIS_TIMEOUT_S", "nan"), ("MODE", "batch"), ("LOG_LEVEL", "LOUD"),
    ("REDIS_URL", "http://cache:6379"), ("KAFKA_BOOTSTRAP_SERVERS", "broker-without-port"),
    ("KAFKA_TOPIC", "has space"), ("HOST", ""), ("RELOAD_POLL_S", "-1"),
    ("ANSWER_CACHE_SIZE", "-1"), ("ANSWER_CACHE_SIZE", "many"), ("REDIS_CONNECTIONS", "0"),
    ("REDIS_CONNECTIONS", "65"), ("REDIS_URL", "redis://cache:port/0"), ("REDIS_URL", "redis://cache/zero"),
    ("REDIS_URL", "redis://cache/0?ssl_cert_reqs=none"),
    ("LOG_FORMAT", "xml"), ("ACCESS_LOG", "sometimes"), ("SPOTIFY_API_URL", "ftp://x"), ("ARTIFACTS_DIR", ""),
    ("MEMORY_SESSION_LIMIT", "0"), ("MAX_HEADER_BYTES", "100"), ("MAX_HEADER_BYTES", "16k"), ("REQUEST_TIMEOUT_S", "0"),
    ("REQUEST_TIMEOUT_S", "inf"),
], ids=lambda v: v or "empty")
def test_a_bad_value_is_refused_naming_the_variable_and_the_value(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value}, env_file=None)
    assert name in str(info.value) and repr(value) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"PORT": "0", "MODE": "x", "WORKERS": "none"}, env_file=None)
    assert all(name in str(info.value) for name in ("PORT", "MODE", "WORKERS"))


def test_secrets_are_masked_in_repr_and_in_the_logged_dict() -> None:
    s = Settings.from_env({"ADMIN_TOKEN": "tok-123", "SPOTIPY_CLIENT_ID": "public-id",
                           "SPOTIPY_CLIENT_SECRET": "shh-456", "REDIS_URL": "redis://app:pw-789@cache:6379/2",
                           "KAFKA_BOOTSTRAP_SERVERS": "k1:9092"}, env_file=None)
    assert s.admin_token == "tok-123" and s.redis_url == "redis://app:pw-789@cache:6379/2"  # real values kept
    for shown in (repr(s), str(s), str(s.masked())):
        assert "tok-123" not in shown and "shh-456" not in shown and "pw-789" not in shown
    masked = s.masked()
    assert masked["redis_url"] == "redis://app:***@cache:6379/2" and masked["admin_token"] == "***"
    assert masked["spotipy_client_id"] == "public-id" and masked["kafka_bootstrap_servers"] == "k1:9092"
    assert masked["artifacts_dir"] == "artifacts" and Settings().masked()["admin_token"] == ""


def test_a_bad_redis_url_is_reported_without_its_password() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"REDIS_URL": "http://u:hunter2@cache"}, env_file=None)
    assert "hunter2" not in str(info.value) and "REDIS_URL" in str(info.value)


@pytest.mark.parametrize(("url", "masked"), [
    ("redis://:secret@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://user:secret@h", "redis://user:***@h"),
    ("redis://secret@h", "redis://***@h"),
    ("rediss://h:6380", "rediss://h:6380"),
    ("user:secret@broker:9092", "user:***@broker:9092"),
    ("memory://", "memory://"),
])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@given(st.integers(1, 65535), st.integers(1, 1000))
def test_any_valid_port_and_session_length_round_trip(port: int, length: int) -> None:
    s = Settings.from_env({"PORT": str(port), "SESSION_LEN": f" {length} "}, env_file=None)
    assert (s.port, s.session_len) == (port, length)


def test_online_mode_without_spotify_credentials_is_refused_naming_what_is_missing() -> None:
    with pytest.raises(SettingsError, match="MODE=online needs SPOTIPY_CLIENT_ID and SPOTIPY_CLIENT_SECRET"):
        Settings.from_env({"MODE": "online"}, env_file=None)
    with pytest.raises(SettingsError, match="MODE=online needs SPOTIPY_CLIENT_SECRET ") as info:
        Settings.from_env({"MODE": "online", "SPOTIPY_CLIENT_ID": "id"}, env_file=None)
    assert "SPOTIPY_CLIENT_ID " not in str(info.value)
    assert Settings.from_env({"MODE": "online", "SPOTIPY_CLIENT_ID": "i", "SPOTIPY_CLIENT_SECRET": "s"},
                             env_file=None).mode == "online"


def test_the_indexer_reads_the_same_variables_with_the_same_defaults() -> None:
    env = {"ARTIFACTS_DIR": "/srv/a", "KAFKA_BOOTSTRAP_SERVERS": "k:9092", "KAFKA_TOPIC": "t", "LOG_LEVEL": "debug"}
    offline, service = OfflineSettings.from_env(env, env_file=None), Settings.from_env(env, env_file=None)
    for f in fields(CommonSettings):
        assert getattr(offline, f.name) == getattr(service, f.name), f.name
    assert all(getattr(OfflineSettings(), f.name) == getattr(Settings(), f.name) for f in fields(CommonSettings))
    with pytest.raises(SettingsError, match="KAFKA_TOPIC"):
        OfflineSettings.from_env({"KAFKA_TOPIC": "a b"}, env_file=None)


def test_the_build_index_type_has_one_default() -> None:
    from musicrec.index.faiss_index import DEFAULT_INDEX_TYPE
    from musicrec.indexer.cli import parser
    from musicrec.indexer.pipeline import BuildOptions

    assert BuildOptions().index_type == DEFAULT_INDEX_TYPE == parser().parse_args(["build"]).index_type == "ivf"


def test_every_setting_is_documented_in_help_env_example_and_readme() -> None:
    """Every variable a Settings field reads has a --help line, a line in .env.example and a README row."""
    from musicrec.service.settings import SERVICE_HELP

    names = {f.name.upper() for f in fields(Settings)}
    assert set(SERVICE_HELP) == names
    example = (REPO / ".env.example").read_text()
    listed = {line.lstrip("# ").split("=", 1)[0] for line in example.splitlines() if "=" in line}
    assert names <= listed, names - listed
    readme = (REPO / "README.md").read_text()
    assert [n for n in sorted(names) if f"`{n}`" not in readme] == []
    # The example's values are the defaults: copying it changes nothing.
    env = {k: v for k, v in (line.split("=", 1) for line in example.splitlines() if "=" in line and not line.startswith("#"))}
    assert Settings.from_env(env, env_file=None) == Settings()


def test_request_limits_have_sane_defaults_and_are_read() -> None:
    assert (Settings().max_header_bytes, Settings().request_timeout_s) == (16 * 1024, 10.0)
    s = Settings.from_env({"MAX_HEADER_BYTES": "32768", "REQUEST_TIMEOUT_S": "2.5"}, env_file=None)
    assert (s.max_header_bytes, s.request_timeout_s) == (32768, 2.5)


def test_max_in_flight_is_independent_of_the_redis_connections() -> None:
    """The pipelined client never makes a request wait for a connection, so no bound ties the two any more."""
    assert Settings.from_env({}, env_file=None).max_in_flight == 32
    assert Settings.from_env({"MAX_IN_FLIGHT": "0"}, env_file=None).max_in_flight == 0
    s = Settings.from_env({"MAX_IN_FLIGHT": "500"}, env_file=None)
    assert (s.max_in_flight, s.redis_connections) == (500, 1)


def test_the_pool_size_setting_is_refused_by_name_not_silently_ignored() -> None:
    with pytest.raises(SettingsError, match="REDIS_MAX_CONNECTIONS is no longer read.*REDIS_CONNECTIONS"):
        Settings.from_env({"REDIS_MAX_CONNECTIONS": "64"}, env_file=None)
