"""One way to configure every service: defaults < TOML file < environment < command-line flags.

A service's settings are the fields of a frozen dataclass (`StorageConfig`, `SchedulerConfig`,
`WorkerConfig`), each declared with `setting(...)`: its help text, its unit, and where it can
come from. From that one declaration this module derives, for every field:

* the TOML key: the field name, in the service's table (`[storage] max_tasks = 10`);
* the environment variable: `ORBWEAVER_<SERVICE>_<NAME>` (`ORBWEAVER_STORAGE_MAX_TASKS`), plus
  the aliases the field lists (`ORBWEAVER_DB` for the storage's `db_url`);
* the flag: `--name-with-dashes` (`--max-tasks`), or the one the field names (`--db`); a secret
  setting has only a `--NAME-file PATH` flag, so that `ps` never shows it.

One unit convention: durations are seconds (a number, or a string with a unit: `250ms`, `30s`,
`5m`, `1h`, `7d`), sizes are bytes (a number, or `64MiB`, `1.5GB`, `512k`). Optional settings
take `none` (environment, flags) to unset them. Anything wrong (an unknown key, a value of the
wrong type, a value the service refuses) raises `ConfigError` naming the setting and where its
value came from.

The cluster token and TLS files (`Security`) are shared by every service and keep their own
sources: `token` / `[<service>.tls]` in the file, `ORBWEAVER_TOKEN` / `ORBWEAVER_TLS_*`, and
`--token` / `--token-file`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, Self, TypeVar

from orbweaver._rpc import Security, TlsConfig
from orbweaver._units import format_size, parse_size
from orbweaver.errors import ConfigError

__all__ = [
    "ConfigError",
    "Loadable",
    "Meta",
    "add_flags",
    "env_name",
    "flag_name",
    "flag_values",
    "load_config",
    "parse_duration",
    "setting",
    "settings_of",
]

C = TypeVar("C")
Unit = Literal["seconds", "bytes"]

_META_KEY: Final = "orbweaver_setting"
# Keys of a service's table that belong to `Security`, not to a field.
_SECURITY_KEYS: Final = frozenset({"token", "tls"})
_TLS_KEYS: Final = ("cert_file", "key_file", "ca_file")
_NONE_WORDS: Final = frozenset({"none", "null", "unset"})
_TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS: Final = frozenset({"0", "false", "no", "off"})
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION: Final = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*")


@dataclass(frozen=True, slots=True)
class Meta:
    """How one field is configured (what `setting()` records)."""

    help: str
    unit: Unit | None = None
    flag: str | None = None  # the flag, when not `--name-with-dashes`
    env: tuple[str, ...] = ()  # aliases read after `ORBWEAVER_<SERVICE>_<NAME>`
    secret: bool = False  # never on the command line: only a `--NAME-file PATH` flag
    metavar: str | None = None


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    unit: Unit | None = None,
    flag: str | None = None,
    env: tuple[str, ...] = (),
    secret: bool = False,
    metavar: str | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A config dataclass field with its help, unit and sources (see the module docstring)."""
    meta = {_META_KEY: Meta(help, unit, flag, env, secret, metavar)}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta, repr=not secret)
    return dataclasses.field(default=default, metadata=meta, repr=not secret)


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    type: Any
    meta: Meta
    required: bool


def settings_of(config_cls: type[Any]) -> list[_Field]:
    """The configurable fields of a config dataclass, in declaration order (`security` aside)."""
    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        meta = f.metadata.get(_META_KEY)
        if meta is None:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out.append(_Field(f.name, hints[f.name], meta, required))
    return out


def env_name(service: str, name: str) -> str:
    return f"ORBWEAVER_{service.upper()}_{name.upper()}"


def flag_name(f: _Field) -> str:
    if f.meta.secret:
        return f"--{f.name.replace('_', '-')}-file"
    return f.meta.flag or f"--{f.name.replace('_', '-')}"


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


def parse_duration(value: object, what: str = "duration") -> float:
    """Seconds from a number or a string such as ``"250ms"``, ``"30s"``, ``"5m"``, ``"1h"``,
    ``"7d"`` (a bare number is seconds). Raises `ValueError` naming `what` and the value."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be seconds or a duration like '30s', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.fullmatch(value)
        if m is None:
            raise ValueError(
                f"{what}: cannot read {value!r} as a duration (seconds, or a number with a "
                "unit: ms, s, m, h, d)"
            )
        seconds = float(m[1]) * _DURATION_UNITS[m[2] or "s"]
    else:
        raise ValueError(f"{what} must be seconds or a duration like '30s', got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return seconds


def _optional_inner(tp: Any) -> tuple[Any, bool]:
    """`(T, True)` for `T | None`, else `(tp, False)`."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(f: _Field, value: object, from_text: bool, what: str) -> object:
    """`value` (from a TOML file, or text from the environment or a flag) as the field's type;
    `ValueError` starting with `what`, saying what was expected."""
    tp, optional = _optional_inner(f.type)
    if optional and (
        value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS)
    ):
        return None
    if f.meta.unit == "seconds":
        return parse_duration(value, what)
    if f.meta.unit == "bytes":
        return parse_size(value, what)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE_WORDS | _FALSE_WORDS:
                return word in _TRUE_WORDS
        raise ValueError(f"{what}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_text and isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                pass
        raise ValueError(f"{what}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if from_text and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{what}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{what}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, str) and value:
            return Path(value)
        raise ValueError(f"{what}: expected a path, got {value!r}")
    if typing.get_origin(tp) is tuple:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValueError(f"{what}: expected a list of names, got {value!r}")
    raise TypeError(f"setting {f.name} has a type this loader cannot read: {tp!r}")


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


def _read_file(path: Path, service: str) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(
            f"{service}: cannot read the config file {path}: {exc.strerror}"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{service}: the config file {path} is not valid TOML: {exc}") from None
    raw = data.get(service, {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{service}: [{service}] in {path} must be a table")
    return raw


def _unknown(service: str, key: str, where: str, known: Iterable[str]) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{service}: unknown setting {key!r} in {where}{hint}")


def _file_security(raw: Mapping[str, Any], base: Security, where: str, service: str) -> Security:
    token = base.token
    if "token" in raw:
        if not isinstance(raw["token"], str):
            raise ConfigError(f"{service}: token from {where} must be a string")
        token = raw["token"] or None
    tls = base.tls
    table = raw.get("tls")
    if table is not None:
        if not isinstance(table, dict):
            raise ConfigError(f"{service}: [{service}.tls] in {where} must be a table")
        for key in table:
            if key not in _TLS_KEYS:
                raise _unknown(service, f"tls.{key}", where, (f"tls.{k}" for k in _TLS_KEYS))
        tls = TlsConfig(*(Path(table[k]) if table.get(k) else None for k in _TLS_KEYS))
    return Security(token=token, tls=tls)


def _env_security(env: Mapping[str, str], base: Security) -> Security:
    from_env = Security.from_env(dict(env))
    return Security(token=from_env.token or base.token, tls=from_env.tls or base.tls)


def load_config(
    config_cls: type[C],
    service: str,
    *,
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
    token: str | None = None,
) -> C:
    """Build `config_cls` from its defaults, the `[service]` table of `path`, the environment
    `env` and the `flags` (field name -> value; text is parsed, other values are taken as they
    are; None means not given). `token` is the cluster token of `--token` / `--token-file`."""
    environ: Mapping[str, str] = os.environ if env is None else env
    fields = {f.name: f for f in settings_of(config_cls)}
    values: dict[str, object] = {}
    sources: dict[str, str] = {}

    def put(f: _Field, value: object, source: str, from_text: bool) -> None:
        try:
            values[f.name] = _coerce(f, value, from_text, f"{f.name} from {source}")
        except ValueError as exc:
            raise ConfigError(f"{service}: {exc}") from None
        sources[f.name] = source

    sec = Security()
    if path is not None:
        raw = _read_file(path, service)
        where = f"the file {path}"
        for key, value in raw.items():
            if key in _SECURITY_KEYS:
                continue
            if key not in fields:
                raise _unknown(service, key, where, fields)
            put(fields[key], value, f"[{service}] {key} in {path}", from_text=False)
        sec = _file_security(raw, sec, where, service)
    sec = _env_security(environ, sec)
    for f in fields.values():
        for name in (env_name(service, f.name), *f.meta.env):
            text = environ.get(name)
            if text:
                put(f, text, f"${name}", from_text=True)
                break
    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in fields:
            raise _unknown(service, name, "the flags", fields)
        f = fields[name]
        put(f, value, flag_name(f), from_text=isinstance(value, str))

    missing = [f for f in fields.values() if f.required and f.name not in values]
    if missing:
        f = missing[0]
        variables = ", ".join(f"${v}" for v in (env_name(service, f.name), *f.meta.env))
        raise ConfigError(
            f"{service}: {f.name} is not set (give {flag_name(f)}, {variables} or {f.name} in "
            f"the [{service}] table of --config)"
        )
    if "security" in getattr(config_cls, "__dataclass_fields__", {}):
        values["security"] = Security(token=token, tls=sec.tls) if token else sec
    try:
        return config_cls(**values)
    except ValueError as exc:
        # The service refused a value: say where the ones the message names came from.
        message = str(exc)
        named = [n for n in sources if re.search(rf"\b{re.escape(n)}\b", message)]
        origin = "; ".join(f"{n} from {sources[n]}" for n in named)
        raise ConfigError(f"{message} ({origin})" if origin else message) from None


class Loadable:
    """Gives a service's config dataclass its `load()`; the subclass names its `SERVICE` (its
    TOML table and the middle of its variables' names)."""

    __slots__ = ()
    SERVICE: ClassVar[str]

    @classmethod
    def load(
        cls,
        path: Path | None = None,
        env: Mapping[str, str] | None = None,
        token: str | None = None,
        flags: Mapping[str, object] | None = None,
        **overrides: object,
    ) -> Self:
        """Defaults < the service's table in the TOML file `path` < the environment `env`
        (default: this process's) < `flags` and `overrides` (field name -> value, None: not
        given); `token`: the cluster token of `--token` / `--token-file`."""
        merged = {**(flags or {}), **overrides}
        return load_config(cls, cls.SERVICE, path=path, env=env, flags=merged, token=token)


# ---------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------


def add_flags(
    parser: argparse.ArgumentParser, config_cls: type[Any], service: str, skip: Iterable[str] = ()
) -> None:
    """One flag per setting of `config_cls` (except `skip`), each absent from the parsed
    namespace unless given, so that lower sources are not overridden by a flag's default."""
    group = parser.add_argument_group(
        f"{service} settings",
        f"each also ${env_name(service, 'NAME')} or NAME in the [{service}] table of --config",
    )
    skipped = set(skip)
    for f in settings_of(config_cls):
        if f.name in skipped:
            continue
        tp, _ = _optional_inner(f.type)
        name = flag_name(f)
        help_ = f.meta.help.replace("%", "%%")
        if f.meta.unit == "seconds":
            help_ += "; seconds, or e.g. 500ms, 5m"
        elif f.meta.unit == "bytes":
            help_ += "; bytes, or e.g. 64MiB"
        shown = _shown_default(config_cls, f)
        if shown is not None and "default" not in help_:
            help_ += f" (default: {shown})"
        dest = f"setting_{f.name}"
        if f.meta.secret:
            group.add_argument(
                name, dest=dest, metavar="PATH", default=argparse.SUPPRESS,
                help=f"read {f.name} from this file: {help_}",
            )  # fmt: skip
        elif tp is bool:
            group.add_argument(
                name, dest=dest, action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS, help=help_,
            )  # fmt: skip
        elif typing.get_origin(tp) is tuple:
            group.add_argument(
                name, dest=dest, action="append", metavar=f.meta.metavar or "NAME[,NAME...]",
                default=argparse.SUPPRESS, help=help_ + "; repeatable",
            )  # fmt: skip
        else:
            metavar = f.meta.metavar or (
                "DURATION" if f.meta.unit == "seconds" else "SIZE" if f.meta.unit == "bytes"
                else "N" if tp is int else "HOST" if f.name.endswith("host") else "VALUE"
            )  # fmt: skip
            group.add_argument(
                name, dest=dest, metavar=metavar, default=argparse.SUPPRESS, help=help_
            )


def _shown_default(config_cls: type[Any], f: _Field) -> str | None:
    field = next(x for x in dataclasses.fields(config_cls) if x.name == f.name)
    value = field.default
    if value is dataclasses.MISSING or value is None or value in ("", ()):
        return None
    if f.meta.unit == "seconds":
        return f"{value:g} s"
    if f.meta.unit == "bytes":
        return format_size(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def flag_values(args: argparse.Namespace, config_cls: type[Any]) -> dict[str, object]:
    """The settings given as flags (field name -> text), secret ones read from their files."""
    out: dict[str, object] = {}
    for f in settings_of(config_cls):
        dest = f"setting_{f.name}"
        if not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if f.meta.secret:
            value = read_secret_file(value, f"the {f.name} file")
        elif isinstance(value, list):
            value = ",".join(value)
        out[f.name] = value
    return out


def read_secret_file(path: str, what: str) -> str:
    """A secret kept in a file (its text, surrounding whitespace removed); `what` names the file
    in errors ("the token file")."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise ConfigError(f"cannot read {what} {path!r}: {reason}") from None
    if not text:
        raise ConfigError(f"{what} {path!r} is empty")
    return text
