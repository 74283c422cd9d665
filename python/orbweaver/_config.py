"""Reading a component's settings from a TOML file: one `[component]` table whose keys are the
fields of the component's config dataclass (unknown keys are errors, never silently ignored)."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from orbweaver._rpc import Security, TlsConfig

_SECURITY_KEYS = frozenset({"token", "tls"})


def read_table(path: Path, table: str, config_cls: type[Any], base: Security) -> dict[str, Any]:
    """The `[table]` of `path` as constructor arguments for `config_cls`, including a `security`
    value that starts from `base` (the environment) and applies the file's `token` / `[tls]`."""
    with path.open("rb") as f:
        data = tomllib.load(f)
    raw = data.get(table, {})
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: [{table}] must be a table")
    known = {f.name for f in dataclasses.fields(config_cls)} - {"security"}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SECURITY_KEYS:
            continue
        if key not in known:
            raise ValueError(f"{path}: unknown {table} setting {key!r}")
        values[key] = value
    token = raw.get("token") or base.token
    tls = base.tls
    tls_table = raw.get("tls")
    if isinstance(tls_table, dict):
        tls = TlsConfig(
            *(
                Path(tls_table[k]) if tls_table.get(k) else None
                for k in ("cert_file", "key_file", "ca_file")
            )
        )
    values["security"] = Security(token=token, tls=tls)
    return values
