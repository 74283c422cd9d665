"""Short liveness settings for clusters of real processes in tests: a dead execution manager is
noticed within seconds, not the production minute."""

from __future__ import annotations

STORAGE_CONFIG = """
[storage]
instance_gc_interval = 0.25
em_stale_cutoff = 3.0
job_cache_gc_interval = 1.0
"""

SCHEDULER_CONFIG = """
[scheduler]
dead_em_cutoff = 3.0
"""
