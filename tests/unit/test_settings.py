"""Settings: one class reads every variable, says what a bad one should be, and documents
itself in README (and agrees with SECURITY.md's limits)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from infra.config import MiB, Settings, SettingsError, env_of, variables
from infra.config_docs import default_text, update_readme
from infra.queue import make_celery

ROOT = Path(__file__).resolve().parents[2]


def test_no_environment_means_the_defaults_with_sqlite_in_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.data_dir == tmp_path / ".robaudit"  # relative: from where it started
    assert settings.database_url == f"sqlite:///{tmp_path / '.robaudit' / 'robaudit.db'}"
    assert settings.redis_url is None
    assert settings.max_model_bytes == 1024 * MiB


def test_variables_are_read_in_their_units_and_empty_means_unset(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "ROBAUDIT_DATA_DIR": str(tmp_path),
            "ROBAUDIT_MAX_MODEL_MB": "3",
            "ROBAUDIT_MAX_JSON_KB": "2",
            "ROBAUDIT_HEARTBEAT_S": "0.5",
            "ROBAUDIT_TORCH_THREADS": "",
            "REDIS_URL": "",
            "ROBAUDIT_DEVICE": "cuda:1",
        }
    )
    assert settings.data_dir == tmp_path
    assert settings.max_model_bytes == 3 * MiB
    assert settings.max_json_bytes == 2048
    assert settings.heartbeat_s == 0.5
    assert settings.torch_threads is None
    assert settings.redis_url is None
    assert settings.device == "cuda:1"


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("ROBAUDIT_SHARD_SIZE", "many", "an integer ≥ 1"),
        ("ROBAUDIT_SHARD_SIZE", "0", "an integer ≥ 1"),
        ("ROBAUDIT_MAX_MODEL_MB", "0", "an integer ≥ 1"),  # in MB, not the field's bytes
        ("ROBAUDIT_MAX_MODEL_MB", "1.5", "an integer ≥ 1"),
        ("ROBAUDIT_HEARTBEAT_S", "-1", "a number > 0"),
        ("ROBAUDIT_DEVICE", "gpu", "`cpu`, `cuda` or `cuda:N`"),
        ("REDIS_URL", "localhost:6379", "`redis://`"),
        ("ROBAUDIT_RATE_LIMIT", "lots", "couldn't parse rate limit string"),
        ("ROBAUDIT_QUEUE", "a queue", "letters, digits"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_it_allows(
    variable: str, value: str, says: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})
    assert f"{variable}={value!r}: expected" in str(caught.value)
    assert says in str(caught.value)


def test_every_bad_value_is_reported_at_once() -> None:
    env = {"ROBAUDIT_SHARD_SIZE": "x", "ROBAUDIT_INTAKE_CPU_S": "0", "ROBAUDIT_QUEUE": "ok"}
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    lines = str(caught.value).splitlines()[1:]
    assert [line.split("=")[0].strip() for line in lines] == [
        "ROBAUDIT_SHARD_SIZE",
        "ROBAUDIT_INTAKE_CPU_S",
    ]


def test_explicit_settings_read_no_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROBAUDIT_SHARD_SIZE", "7")
    assert Settings(data_dir=tmp_path).shard_size == 512  # a test's settings are its own
    assert Settings.from_env().shard_size == 7


def test_overrides_are_validated_and_unknown_names_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="sqlite://")
    assert settings.with_overrides(max_model_bytes=1000).max_model_bytes == 1000
    assert settings.max_model_bytes == 1024 * MiB  # frozen: the original is unchanged
    with pytest.raises(ValidationError, match="max_model_byte"):
        settings.with_overrides(max_model_byte=1000)
    with pytest.raises(ValidationError, match="shard_size"):
        settings.with_overrides(shard_size=0)


def test_the_api_key_is_not_printed() -> None:
    settings = Settings.from_env({"ROBAUDIT_API_KEY": "k-secret"})
    assert "k-secret" not in repr(settings)
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "k-secret"


@pytest.mark.parametrize(
    ("variable", "value", "shown"),
    [
        ("ROBAUDIT_SECRET_KEY", "hunter2-but-too-short", "<hidden, 21 characters>"),
        (
            "DATABASE_URL",
            "postgresql//app:hunter2@db/robaudit",
            "'postgresql//app:***@db/robaudit'",
        ),
        ("REDIS_URL", "http://:hunter2@cache:6379/0", "'http://:***@cache:6379/0'"),
    ],
)
def test_a_bad_secret_is_named_but_never_echoed(variable: str, value: str, shown: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})
    assert f"{variable}={shown}: expected" in str(caught.value)
    assert "hunter2" not in str(caught.value)  # start-up errors reach logs and CI output


def test_every_setting_has_one_variable_and_a_description() -> None:
    fields = Settings.model_fields
    without = {name for name, field in fields.items() if env_of(field) is None}
    assert without == {"max_npz_member_bytes"}  # SECURITY.md says it has no variable
    assert len(variables()) == len(fields) - len(without)  # no variable named twice
    assert all(field.description for field in fields.values())


def test_readme_tables_are_the_generated_ones() -> None:
    readme = (ROOT / "README.md").read_text()
    assert update_readme(readme) == readme, "run: python -m infra.config_docs --update README.md"
    for name in variables():
        assert f"| `{name}` |" in readme


def test_security_md_limits_agree_with_the_settings() -> None:
    """SECURITY.md's table explains each limit in its own words; its variables and defaults
    must be the real ones, and every limit setting must be there."""
    text = (ROOT / "SECURITY.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \| ([^|]+) \|", text, re.M))
    known = variables()
    assert set(rows) <= set(known), set(rows) - set(known)
    for name, default in rows.items():
        assert default.strip().replace(",", "") == default_text(known[name]), name
    limits = {
        name for name, field in known.items() if getattr(env_of(field), "group", "") == "limits"
    }
    assert limits <= set(rows), limits - set(rows)


def test_the_embedded_broker_writes_only_under_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu's filesystem transport keeps exchange bindings in ./control unless told: a
    broadcast (ping, as `celery inspect` does) must not write in the working directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    settings = Settings(data_dir=tmp_path / "data")
    settings.ensure_dirs()
    app = make_celery(settings)
    assert app.control.ping(timeout=0.1) == []  # no worker here: nobody answers
    app.send_task("robaudit.inspect_model", args=["none"])
    assert list(cwd.iterdir()) == []
    assert list((settings.broker_dir / "control").glob("*.exchange"))
    assert list(settings.broker_dir.glob("*.msg"))
