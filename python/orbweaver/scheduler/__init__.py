"""The scheduler service: polls storage's inbound queue, orders the ready work fairly across
resource groups and jobs, and hands assignments to execution managers.

Modules: `config` (its settings), `core` (pure placement logic), `dispatch` (the
session-fenced dispatch queue), `registry` (EM liveness and outstanding assignments),
`servicer` (the gRPC surface), `metrics` and `runtime` (the core loop, start/stop, `main`).
"""

from __future__ import annotations

from orbweaver.scheduler.config import SchedulerConfig
from orbweaver.scheduler.runtime import SchedulerRuntime, main

__all__ = ["SchedulerConfig", "SchedulerRuntime", "main"]
