"""The scheduler service: polls storage's inbound queue, orders the ready work fairly across
resource groups and jobs, and hands assignments to execution managers.

Modules: `core` (pure placement logic), `dispatch` (the session-fenced dispatch queue),
`registry` (EM liveness and outstanding assignments), `service` (the gRPC servicer), `metrics`
and `runtime` (configuration, the core loop, start/stop, `main`).
"""

from __future__ import annotations

from orbweaver.scheduler.runtime import SchedulerConfig, SchedulerRuntime, main

__all__ = ["SchedulerConfig", "SchedulerRuntime", "main"]
