"""Settings: defaults → TOML file → BOXOFFICE_ORIGIN_* env → flags, and errors that name key and source."""

from __future__ import annotations

import argparse
import dataclasses
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ops.settings import GiB, KiB, MiB, SettingsError, add_arguments, load, parse_duration, parse_size, to_toml
from origin.settings import OriginSettings

FUZZ = settings(max_examples=300, deadline=None)


def parser() -> argparse.ArgumentParser:
    built = argparse.ArgumentParser(prog="origin")
    add_arguments(built, OriginSettings)
    return built


def load_origin(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> OriginSettings:
    args = None if argv is None else parser().parse_args(argv)
    return load(OriginSettings, "origin", args=args, environ={} if environ is None else environ)


def config(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "boxoffice.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_defaults_alone() -> None:
    assert load_origin() == OriginSettings()
    assert load_origin([]) == OriginSettings()


def test_each_layer_overrides_the_one_below(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        '[origin]\nport = 9001\nhost = "0.0.0.0"\nhold_ttl = "5m"\nlog_level = "debug"\n'
        '[edge]\nport = "not ours"\n',  # other services' tables are not read
    )
    environ = {
        "BOXOFFICE_CONFIG": str(path),
        "BOXOFFICE_ORIGIN_PORT": "9002",
        "BOXOFFICE_ORIGIN_MAX_BODY": "64KiB",
        "BOXOFFICE_ORIGIN_ACCESS_LOG": "off",
        "BOXOFFICE_EDGE_PORT": "not ours either",
    }
    from_file = load_origin(environ={"BOXOFFICE_CONFIG": str(path)})
    assert (from_file.port, from_file.host, from_file.hold_ttl, from_file.log_level) == (
        9001,
        "0.0.0.0",
        300.0,
        "debug",
    )

    from_env = load_origin(environ=environ)
    assert (from_env.port, from_env.host, from_env.max_body, from_env.access_log) == (9002, "0.0.0.0", 64 * KiB, False)

    from_flags = load_origin(["--port", "9003", "--access-log", "--hold-ttl", "90s"], environ)
    assert (from_flags.port, from_flags.access_log, from_flags.hold_ttl) == (9003, True, 90.0)
    assert (from_flags.host, from_flags.max_body, from_flags.log_level) == ("0.0.0.0", 64 * KiB, "debug")
    assert from_flags.db_pool_size == OriginSettings().db_pool_size


def test_config_flag_wins_over_config_env(tmp_path: Path) -> None:
    chosen = config(tmp_path, "[origin]\nport = 9100\n")
    ignored = tmp_path / "ignored.toml"
    ignored.write_text("[origin]\nport = 9200\n", encoding="utf-8")
    assert load_origin(["--config", str(chosen)], {"BOXOFFICE_CONFIG": str(ignored)}).port == 9100


def test_toml_types_are_accepted_where_they_fit(tmp_path: Path) -> None:
    path = config(tmp_path, "[origin]\nhold_ttl = 90\nitem_max_age = 0.5\nmax_body = 4096\nseed_demo = true\n")
    loaded = load_origin(["--config", str(path)])
    assert (loaded.hold_ttl, loaded.item_max_age, loaded.max_body, loaded.seed_demo) == (90.0, 0.5, 4096, True)


def test_a_file_without_the_section_leaves_defaults(tmp_path: Path) -> None:
    assert load_origin(["--config", str(config(tmp_path, "[edge]\nport = 1\n"))]) == OriginSettings()


def test_unknown_key_in_file_names_key_file_and_suggestion(tmp_path: Path) -> None:
    path = config(tmp_path, "[origin]\nprot = 9001\n")
    with pytest.raises(SettingsError) as caught:
        load_origin(["--config", str(path)])
    message = str(caught.value)
    assert "origin.prot" in message and str(path) in message and "did you mean 'port'" in message


def test_unknown_env_var_names_the_variable() -> None:
    with pytest.raises(
        SettingsError, match=r"BOXOFFICE_ORIGIN_HOLD_TTLS: unknown setting \(did you mean 'hold_ttl'\?\)"
    ):
        load_origin(environ={"BOXOFFICE_ORIGIN_HOLD_TTLS": "5m"})
    with pytest.raises(SettingsError, match=r"BOXOFFICE_ORIGIN_ZZZZZZZ: unknown setting$"):
        load_origin(environ={"BOXOFFICE_ORIGIN_ZZZZZZZ": "1"})


@pytest.mark.parametrize(
    ("variable", "value", "key", "complaint"),
    [
        ("BOXOFFICE_ORIGIN_HOLD_TTL", "soon", "origin.hold_ttl", "duration"),
        ("BOXOFFICE_ORIGIN_HOLD_TTL", "5 fortnights", "origin.hold_ttl", "duration"),
        ("BOXOFFICE_ORIGIN_MAX_BODY", "lots", "origin.max_body", "size"),
        ("BOXOFFICE_ORIGIN_MAX_BODY", "9" * 400, "origin.max_body", "too large"),
        ("BOXOFFICE_ORIGIN_PORT", "http", "origin.port", "integer"),
        ("BOXOFFICE_ORIGIN_PORT", "80.5", "origin.port", "integer"),
        ("BOXOFFICE_ORIGIN_SEED_DEMO", "maybe", "origin.seed_demo", "true or false"),
    ],
)
def test_bad_env_values_name_key_and_variable(variable: str, value: str, key: str, complaint: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_origin(environ={variable: value})
    message = str(caught.value)
    assert message.startswith(f"{key}: ") and complaint in message and f"(from {variable})" in message


@pytest.mark.parametrize(
    ("line", "key", "complaint"),
    [
        ("port = 1.5", "origin.port", "integer"),
        ("port = true", "origin.port", "integer"),
        ("port = [1]", "origin.port", "list"),
        ("host = 7", "origin.host", "string"),
        ('hold_ttl = "-5s"', "origin.hold_ttl", "duration"),
        ("hold_ttl = -5", "origin.hold_ttl", "non-negative"),
        ('max_body = "1 parsec"', "origin.max_body", "size"),
        ('access_log = "sometimes"', "origin.access_log", "true or false"),
    ],
)
def test_bad_file_values_name_key_and_file(tmp_path: Path, line: str, key: str, complaint: str) -> None:
    path = config(tmp_path, f"[origin]\n{line}\n")
    with pytest.raises(SettingsError) as caught:
        load_origin(["--config", str(path)])
    message = str(caught.value)
    assert message.startswith(f"{key}: ") and complaint in message and f"(from {path})" in message


@pytest.mark.parametrize(
    ("argv", "flag"),
    [(["--max-body", "1 parsec"], "--max-body"), (["--db-timeout", "5y"], "--db-timeout"), (["--port", "x"], "--port")],
)
def test_bad_flags_name_the_flag(argv: list[str], flag: str) -> None:
    with pytest.raises(SettingsError, match=f"\\(from {flag}\\)$"):
        load_origin(argv)


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("[origin\nport = 1\n", "not valid TOML"),
        ("origin = 5\n", "expected a [origin] table"),
        (b"[origin]\nhost = '\xff'\n", "not UTF-8"),
    ],
)
def test_broken_config_files(tmp_path: Path, content: str | bytes, complaint: str) -> None:
    path = config(tmp_path, content)
    with pytest.raises(SettingsError) as caught:
        load_origin(["--config", str(path)])
    assert complaint in str(caught.value)


def test_missing_config_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(SettingsError, match=f"cannot read config file {missing}"):
        load_origin(environ={"BOXOFFICE_CONFIG": str(missing)})


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"port": 0}, "origin.port"),
        ({"port": 65536}, "origin.port"),
        ({"node_id": "a-b"}, "origin.node_id"),
        ({"node_id": ""}, "origin.node_id"),
        ({"database": "mysql://db"}, "origin.database"),
        ({"max_qty_per_hold": 0}, "origin.max_qty_per_hold"),
        ({"max_qty_per_hold": 51}, "origin.max_qty_per_hold"),
        ({"hold_ttl": 0.0}, "origin.hold_ttl"),
        ({"hold_ttl": 3600.0, "max_hold_ttl": 60.0}, "origin.hold_ttl"),
        ({"log_level": "verbose"}, "origin.log_level"),
        ({"demo_venues": 0}, "origin.demo_venues"),
        ({"db_pool_size": 0}, "origin.db_pool_size"),
        ({"feed_retention_changes": 0}, "origin.feed_retention_changes"),
        ({"max_body": 255}, "origin.max_body"),
    ],
)
def test_validate_names_the_inconsistent_setting(changes: dict[str, object], key: str) -> None:
    with pytest.raises(SettingsError, match=f"^{key}:"):
        dataclasses.replace(OriginSettings(), **changes).validate()


def test_load_validates() -> None:
    with pytest.raises(SettingsError, match=r"^origin\.port: 70000 is not a TCP port$"):
        load_origin(environ={"BOXOFFICE_ORIGIN_PORT": "70000"})
    OriginSettings().validate()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("10s", 10.0), ("5m", 300.0), ("2h", 7200.0), ("1.5", 1.5), (" 3 S ", 3.0), (7, 7.0)],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [("512KiB", 512 * KiB), ("64MiB", 64 * MiB), ("1GiB", GiB), ("2kb", 2000), ("100", 100), ("1.5KiB", 1536), (9, 9)],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


quantities = (
    st.from_regex(r"\A\s?[0-9]{1,500}(\.[0-9]{1,3})?\s?[a-zA-Z]{0,4}\s?\Z")
    # more digits than a float holds (about 309)
    | st.tuples(st.integers(min_value=300, max_value=400), st.sampled_from(["", "GiB", "h"])).map(
        lambda digits_unit: "7" * digits_unit[0] + digits_unit[1]
    )
)


@FUZZ
@given(st.text() | quantities)
def test_parse_duration_raises_only_value_error(text: str) -> None:
    try:
        value = parse_duration(text)
    except ValueError:
        return
    assert value >= 0


@FUZZ
@given(st.text() | quantities)
def test_parse_size_raises_only_value_error(text: str) -> None:
    try:
        value = parse_size(text)
    except ValueError:
        return
    assert isinstance(value, int) and value >= 0


@FUZZ
@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from([("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0), ("", 1.0)]),
    st.sampled_from(["", " "]),
)
def test_parse_duration_units(number: int, unit: tuple[str, float], space: str) -> None:
    suffix, scale = unit
    assert parse_duration(f"{number}{space}{suffix}") == pytest.approx(number * scale)
    assert parse_duration(f"{number}{suffix.upper()}") == pytest.approx(number * scale)


@FUZZ
@given(st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=20))
def test_env_vars_of_other_services_are_ignored(name: str) -> None:
    assert load_origin(environ={f"BOXOFFICE_EDGE_{name.upper()}": "x", "PATH": "/bin"}) == OriginSettings()


@dataclasses.dataclass(frozen=True)
class _PercentHelp:
    share: float = dataclasses.field(default=0.05, metadata={"help": "fall to 5 % of the peak"})
    events: tuple[str, ...] = dataclasses.field(default=("a", "b"), metadata={"help": "a list"})


def test_help_text_with_a_percent_sign_prints() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, _PercentHelp)
    assert "fall to 5 % of the peak" in parser.format_help()


def test_to_toml_prints_tuples_as_arrays_that_load_back(tmp_path: Path) -> None:
    text = to_toml(dataclasses.replace(OriginSettings(), events=("evt-000001", "evt-000002")), "origin")
    assert 'events = ["evt-000001", "evt-000002"]' in text
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    loaded = load(OriginSettings, "origin", args=argparse.Namespace(config=str(path)), environ={})
    assert loaded.events == ("evt-000001", "evt-000002")
