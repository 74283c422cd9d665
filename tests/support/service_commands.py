"""The command line of each service of a cluster, in one place. The multi-host test cluster
(:mod:`support.multihost`) runs these, and ``tests/deploy`` checks that ``deploy/compose.yaml``
and the systemd units in ``deploy/systemd/`` run them too: the same flags in the same order, the
same secrets in the same environment variables. ``{name}`` stands for a value each deployment
gives its own (an address, a path, a count); nothing else may differ.

Secrets never appear here: every service reads them from its environment (``ps`` shows command
lines to every local user).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_PLACEHOLDER = re.compile(r"^\{([a-z_]+)\}$")


@dataclass(frozen=True)
class ServiceCommand:
    """`orbweaver ARGS...` with placeholders, and the environment variables that carry its
    secrets."""

    args: tuple[str, ...]
    secrets: tuple[str, ...]

    @property
    def service(self) -> str:
        return self.args[0]

    @property
    def placeholders(self) -> list[str]:
        return [m.group(1) for a in self.args if (m := _PLACEHOLDER.match(a))]

    def render(self, **values: str) -> list[str]:
        """The arguments with every placeholder replaced by its value (all of them given)."""
        names = self.placeholders
        if sorted(values) != sorted(names):
            raise ValueError(f"{self.service}: values for {sorted(names)}, got {sorted(values)}")
        return [values[m.group(1)] if (m := _PLACEHOLDER.match(a)) else a for a in self.args]

    def match(self, argv: Sequence[str]) -> dict[str, str]:
        """The placeholder values of `argv`, which must be this command with its own values;
        ValueError naming the first difference otherwise."""
        if len(argv) != len(self.args):
            raise ValueError(
                f"{self.service}: {len(argv)} arguments {list(argv)}, expected "
                f"{len(self.args)}: {list(self.args)}"
            )
        values: dict[str, str] = {}
        for i, (expected, got) in enumerate(zip(self.args, argv, strict=True)):
            m = _PLACEHOLDER.match(expected)
            if m:
                values[m.group(1)] = got
            elif got != expected:
                raise ValueError(f"{self.service}: argument {i} is {got!r}, expected {expected!r}")
        return values


STORAGE = ServiceCommand(
    (
        "storage",
        "--db",
        "{db_url}",
        "--listen",
        "{listen}",
        "--advertise",
        "{advertise}",
        "--config",
        "{config}",
    ),
    secrets=("ORBWEAVER_TOKEN", "ORBWEAVER_OPERATOR_TOKEN", "ORBWEAVER_DB_PASSWORD"),
)
SCHEDULER = ServiceCommand(
    ("scheduler", "--storage", "{storage}", "--listen", "{listen}", "--config", "{config}"),
    secrets=("ORBWEAVER_TOKEN",),
)
WORKER = ServiceCommand(
    (
        "worker",
        "--storage",
        "{storage}",
        "--scheduler",
        "{scheduler}",
        "--tasks-dir",
        "{tasks_dir}",
        "--processes",
        "{processes}",
        "--ip",
        "{ip}",
        "--executor-env",
        "{executor_env}",
    ),
    secrets=("ORBWEAVER_TOKEN",),
)
COMMANDS = {c.service: c for c in (STORAGE, SCHEDULER, WORKER)}
