"""Every setting of every service comes from the same four sources, in the same order:
defaults < the TOML file (`--config`, the service's table) < the environment
(`ORBWEAVER_<SERVICE>_<NAME>` and the listed aliases) < the command-line flags. Durations are
seconds, sizes bytes, both also with units; a bad setting is a `ConfigError` naming the setting
and where its value came from; an unknown key is refused."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import pytest

from orbweaver import errors
from orbweaver._config import (
    env_name,
    flag_name,
    flag_values,
    parse_duration,
    settings_of,
)
from orbweaver.cli import build_parser
from orbweaver.scheduler.config import SchedulerConfig
from orbweaver.storage.config import StorageConfig
from orbweaver.worker.config import WorkerConfig

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
TASKS_DIR = Path(__file__).resolve().parent / "tasks"

SERVICES: dict[str, type[Any]] = {
    "storage": StorageConfig,
    "scheduler": SchedulerConfig,
    "worker": WorkerConfig,
}
# What a worker cannot start without, given as flags in every case below.
REQUIRED = {
    "worker": {"storage": "127.0.0.1:1", "scheduler": "127.0.0.1:2", "tasks_dir": str(TASKS_DIR)}
}
# A value other than the default (as TOML would hold it) for settings whose type alone does not
# give a valid one.
SAMPLES: dict[str, object] = {
    "db_url": "sqlite:///elsewhere.db",
    "listen": "127.0.0.1:6001",
    "storage": "127.0.0.1:6002",
    "scheduler": "127.0.0.1:6003",
    "policy": "job_round_robin",
    "metrics_host": "127.0.0.2",
    "advertised_host": "scheduler.internal",
    "advertise": "storage-a.internal:50051",
    "ip_address": "198.18.0.5",
    "operator_token": "operator-secret",
    "executor_env": ["AWS_*", "MY_SETTING"],
    "tasks_dir": str(TASKS_DIR.parent),
}


def _type(config_cls: type[Any], name: str) -> Any:
    tp = typing.get_type_hints(config_cls)[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 else tp


def sample(config_cls: type[Any], name: str) -> object:
    """A valid non-default TOML value of the setting."""
    if name in SAMPLES:
        return SAMPLES[name]
    default = next(f for f in dataclasses.fields(config_cls) if f.name == name).default
    tp = _type(config_cls, name)
    if tp is bool:
        return not default
    if tp is int:
        return 4321 if default in (None, dataclasses.MISSING) else int(default) + 3  # type: ignore[call-overload]
    if tp is float:
        return 7.5 if default is None else float(default) * 2 + 1  # type: ignore[arg-type]
    raise AssertionError(f"no sample for {config_cls.__name__}.{name}")


def as_toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(as_toml(v) for v in value) + "]"
    return repr(value)


def as_text(config_cls: type[Any], name: str, value: object) -> str:
    """How a user writes `value` in a variable or a flag: durations and sizes with a unit."""
    unit = next(f.meta.unit for f in settings_of(config_cls) if f.name == name)
    if unit == "seconds":
        return f"{float(value) * 1000:f}".rstrip("0").rstrip(".") + "ms"  # type: ignore[arg-type]
    if unit == "bytes" and int(value) % 1024 == 0:  # type: ignore[call-overload]
        return f"{int(value) // 1024}KiB"  # type: ignore[call-overload]
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def expected(config_cls: type[Any], name: str, value: object) -> object:
    tp = _type(config_cls, name)
    if tp is Path:
        return Path(str(value)).resolve()
    if isinstance(value, list):
        return tuple(value)
    return value


def load(service: str, tmp: Path, *, toml: str = "", env: dict[str, str] | None = None,
         argv: list[str] | None = None) -> Any:  # fmt: skip
    """Load `service`'s settings as `orbweaver SERVICE` does: the real parser, a TOML file."""
    config_cls = SERVICES[service]
    path = None
    if toml:
        path = tmp / f"{service}.toml"
        path.write_text(toml)
    given = " ".join([*(argv or []), toml, *(env or {})])
    required = []
    for f in settings_of(config_cls):
        value = REQUIRED.get(service, {}).get(f.name)
        sources = (flag_name(f), f"{f.name} =", env_name(service, f.name), *f.meta.env)
        if value is not None and not any(source in given for source in sources):
            required.append(f"{flag_name(f)}={value}")
    args = build_parser().parse_args([service, *required, *(argv or [])])
    flags = flag_values(args, config_cls)
    if service == "storage":
        flags["db_url"] = args.db
    return config_cls.load(path, env=env or {}, flags=flags)


CASES = [
    (service, f.name) for service, config_cls in SERVICES.items() for f in settings_of(config_cls)
]


@pytest.mark.parametrize(("service", "name"), CASES, ids=[f"{s}.{n}" for s, n in CASES])
def test_every_setting_comes_from_file_environment_and_flag(
    service: str, name: str, tmp_path: Path
) -> None:
    config_cls = SERVICES[service]
    f = next(f for f in settings_of(config_cls) if f.name == name)
    value = sample(config_cls, name)
    want = expected(config_cls, name, value)
    default = load(service, tmp_path)
    assert getattr(default, name) != want, "the sample must differ from the default"

    from_file = load(service, tmp_path, toml=f"[{service}]\n{name} = {as_toml(value)}\n")
    assert getattr(from_file, name) == want

    text = as_text(config_cls, name, value)
    from_env = load(service, tmp_path, env={env_name(service, name): text})
    assert getattr(from_env, name) == want
    for alias in f.meta.env:
        assert getattr(load(service, tmp_path, env={alias: text}), name) == want

    if f.meta.secret:  # only a file flag: `ps` never shows the secret
        secret = tmp_path / "secret"
        secret.write_text(f"{text}\n")
        argv = [flag_name(f), str(secret)]
    elif _type(config_cls, name) is bool:
        argv = [flag_name(f) if value else f"--no-{flag_name(f)[2:]}"]
    else:
        argv = [f"{flag_name(f)}={text}"]
    assert getattr(load(service, tmp_path, argv=argv), name) == want


@pytest.mark.parametrize("service", SERVICES)
def test_later_sources_win(service: str, tmp_path: Path) -> None:
    name = {"storage": "max_wait", "scheduler": "dead_em_cutoff", "worker": "drain_timeout"}[
        service
    ]
    toml = f"[{service}]\n{name} = 11\n"
    env = {env_name(service, name): "12s"}
    flag = [f"--{name.replace('_', '-')}", "13s"]
    assert getattr(load(service, tmp_path, toml=toml), name) == 11.0
    assert getattr(load(service, tmp_path, toml=toml, env=env), name) == 12.0
    assert getattr(load(service, tmp_path, toml=toml, env=env, argv=flag), name) == 13.0
    assert getattr(load(service, tmp_path, toml=toml, argv=flag), name) == 13.0


def test_the_scheduler_takes_listen_from_its_file_when_no_flag_is_given(tmp_path: Path) -> None:
    config = load("scheduler", tmp_path, toml='[scheduler]\nlisten = "127.0.0.1:7777"\n')
    assert config.listen == "127.0.0.1:7777"
    config = load("scheduler", tmp_path, toml='[scheduler]\nlisten = "127.0.0.1:7777"\n',
                  argv=["--listen", "127.0.0.1:8888"])  # fmt: skip
    assert config.listen == "127.0.0.1:8888"


@pytest.mark.parametrize("service", SERVICES)
def test_unknown_keys_are_refused_with_a_suggestion(service: str, tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError) as info:
        load(service, tmp_path, toml=f"[{service}]\nmetrics_prot = 9100\n")
    message = str(info.value)
    assert message.startswith(f"{service}: unknown setting 'metrics_prot' in the file ")
    assert message.endswith("(did you mean 'metrics_port'?)")
    with pytest.raises(errors.ConfigError, match=r"unknown setting 'tls\.cert'"):
        load(service, tmp_path, toml=f'[{service}.tls]\ncert = "x.pem"\n')
    # A renamed setting of an earlier release is refused too, pointing at the new name.
    if service == "scheduler":
        with pytest.raises(errors.ConfigError, match=r"did you mean 'dead_em_cutoff'"):
            load(service, tmp_path, toml="[scheduler]\ndead_em_cutoff_s = 3\n")


def test_a_bad_value_names_the_setting_and_its_source(tmp_path: Path) -> None:
    var = "ORBWEAVER_SCHEDULER_DEAD_EM_CUTOFF"
    with pytest.raises(errors.ConfigError) as info:
        load("scheduler", tmp_path, env={var: "soon"})
    assert str(info.value).startswith(
        f"scheduler: dead_em_cutoff from ${var}: cannot read 'soon' as a duration"
    )
    with pytest.raises(errors.ConfigError) as info:
        load("storage", tmp_path, toml='[storage]\nmax_tasks = "many"\n')
    path = tmp_path / "storage.toml"
    assert str(info.value) == (
        f"storage: max_tasks from [storage] max_tasks in {path}: expected an integer, got 'many'"
    )
    with pytest.raises(errors.ConfigError) as info:
        load("worker", tmp_path, env={"ORBWEAVER_WORKER_EXECUTOR_CGROUPS": "maybe"})
    assert str(info.value) == (
        "worker: executor_cgroups from $ORBWEAVER_WORKER_EXECUTOR_CGROUPS: expected true or "
        "false, got 'maybe'"
    )
    # Values the service refuses: the message says where the value came from.
    with pytest.raises(errors.ConfigError) as info:
        load("storage", tmp_path, argv=["--max-tasks", "0"])
    assert str(info.value) == "storage config: max_tasks must be > 0 (max_tasks from --max-tasks)"
    with pytest.raises(errors.ConfigError) as info:
        load("worker", tmp_path, toml="[worker]\nprocesses = 0\n")
    assert str(info.value) == (
        "worker: processes must be at least 1, got 0 (processes from [worker] processes in "
        f"{tmp_path / 'worker.toml'})"
    )


def test_the_worker_names_every_way_to_give_a_missing_setting(tmp_path: Path) -> None:
    args = build_parser().parse_args(["worker", "--storage", "a:1", "--scheduler", "b:2"])
    with pytest.raises(errors.ConfigError) as info:
        WorkerConfig.load(None, env={}, flags=flag_values(args, WorkerConfig))
    assert str(info.value) == (
        "worker: tasks_dir is not set (give --tasks-dir, $ORBWEAVER_WORKER_TASKS_DIR, "
        "$ORBWEAVER_TASKS_DIR or tasks_dir in the [worker] table of --config)"
    )


def test_token_sources_follow_the_same_order(tmp_path: Path) -> None:
    toml = '[storage]\ntoken = "from-file"\n'
    assert load("storage", tmp_path, toml=toml).security.token == "from-file"
    env = {"ORBWEAVER_TOKEN": "from-env"}
    assert load("storage", tmp_path, toml=toml, env=env).security.token == "from-env"
    config = StorageConfig.load(None, env=env, token="from-flag")
    assert config.security.token == "from-flag"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(0, 0.0), (2, 2.0), (1.5, 1.5), ("30", 30.0), ("250ms", 0.25), ("30s", 30.0),
     ("5m", 300.0), ("1.5h", 5400.0), ("7d", 604800.0), (" 10 s ", 10.0)],
)  # fmt: skip
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-1", "5 fortnights", True, [1], "nan", "1e999"])
def test_bad_durations_name_the_setting(text: object) -> None:
    with pytest.raises(ValueError, match=r"^poll_wait"):
        parse_duration(text, "poll_wait")


@pytest.mark.parametrize("service", SERVICES)
def test_every_setting_is_documented(service: str) -> None:
    text = DOCS.read_text()
    start = text.index(f"## {service.capitalize()} (`orbweaver {service}`")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end >= 0 else None]
    documented = set(re.findall(r"`([a-z_]+)`", section))
    missing = [f.name for f in settings_of(SERVICES[service]) if f.name not in documented]
    assert missing == [], f"docs/configuration.md does not describe {service} {missing}"
