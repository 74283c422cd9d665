"""Type stub for the private Rust extension `orbweaver._core` (crate `rust/py`).

The extension is a thin binding over the sans-IO engine in `rust/core`. Nothing here does I/O:
the storage service (Python) persists first and then applies the matching transition here.

Conventions:
* ids are plain `int`s (u64);
* a task id is an `int`: ``>= 0`` is a regular task index, `TASK_COMMIT` / `TASK_CLEANUP` are the
  termination tasks;
* job states are the numeric values of the protobuf `JobState` enum (`JOB_READY` ... );
* the shared vocabularies are generated from the core's enums: `JOB_STATES`, `TASK_STATES`,
  `LANES` and `OUTCOME_KINDS` list `(NAME, code)` pairs in code order (NAME is the Rust variant in
  upper snake case), and `JOB_<NAME>`, `LANE_<NAME>`, `OUTCOME_<NAME>` are the same codes one by
  one. The Python enums (`orbweaver.JobState`, the scheduler's `Lane`) are checked against them.
* times are milliseconds supplied by the caller (`now_ms`), the engine never reads a clock.
"""

from collections.abc import Sequence
from typing import Final, final

__version__: str

TASK_COMMIT: Final[int]
TASK_CLEANUP: Final[int]

JOB_STATES: Final[tuple[tuple[str, int], ...]]
TASK_STATES: Final[tuple[tuple[str, int], ...]]
LANES: Final[tuple[tuple[str, int], ...]]
OUTCOME_KINDS: Final[tuple[tuple[str, int], ...]]

JOB_READY: Final[int]
JOB_RUNNING: Final[int]
JOB_COMMIT_READY: Final[int]
JOB_CLEANUP_READY: Final[int]
JOB_SUCCEEDED: Final[int]
JOB_FAILED: Final[int]
JOB_CANCELLED: Final[int]

LANE_TASK: Final[int]
LANE_COMMIT: Final[int]
LANE_CLEANUP: Final[int]

OUTCOME_JOB_COMPLETED: Final[int]
OUTCOME_JOB_FAILED: Final[int]
OUTCOME_COMMIT_SUCCEEDED: Final[int]
OUTCOME_CLEANUP_SUCCEEDED: Final[int]

# ---------------------------------------------------------------------------------------------
# Errors. `kind` is the machine-readable variant name (e.g. "TaskInstanceLimitExceeded").
# ---------------------------------------------------------------------------------------------

class CoreError(Exception):
    kind: str

class InvalidGraphError(CoreError, ValueError):
    """A submitted graph or its inputs break a validation rule; the message names the task and
    position at fault."""

class InvalidInputValueError(InvalidGraphError):
    """A graph-input payload does not fit its declared type (kind "InvalidInputValue"): wrong
    msgpack type, integer out of range, not msgpack at all, trailing bytes, nesting deeper than
    512. The message names the graph input, the task and input it feeds and what was wrong, e.g.
    "graph input 2 (task 0 `pkg.fn`, input 1): expected Int32, got str"."""

class CodecError(CoreError, ValueError):
    """Malformed wire frame, self-describing outputs or zstd stream."""

class InvalidRequestError(CoreError, ValueError):
    """A request that does not fit the job: unknown task index, wrong output count, ..."""

class JobNotFoundError(CoreError, LookupError):
    """The job is not in the cache."""

class LimitExceededError(CoreError, ValueError):
    """A configured size or count limit was exceeded. Kinds: "GraphTooLarge", "InputsTooLarge",
    "TooManyTasks" (submissions). The message names the size when known, the limit and the
    setting, e.g. "the graph has 250000 tasks, above the limit of 100000 (max_tasks)"."""

class TaskInputsTooLargeError(LimitExceededError):
    """`register` / `register_batch` with `max_task_io_bytes`: the task's task_io (its inputs; a
    commit task's job outputs; a cleanup task's graph inputs) is larger than the limit (kind
    "TaskInputsTooLarge"). Nothing changed (the task stays schedulable); the caller fails the
    job. The message names the job, the task, the size and the limit."""

class OutputsReleasedError(CoreError, LookupError):
    """`outputs` of a job whose outputs were freed by `drop_outputs` (kind "OutputsReleased"):
    read them from the database."""

class StaleError(CoreError):
    """An expected race (instance limit reached, task already terminal, job no longer running,
    job already started/terminated, ...): reject the caller, nothing is wrong."""

class RecoveryError(CoreError):
    """A persisted job cannot be rebuilt (CommitReady without outputs, unrecoverable state, ...)."""

class InternalError(CoreError):
    """A broken invariant of the engine."""

# ---------------------------------------------------------------------------------------------
# Codecs
# ---------------------------------------------------------------------------------------------

def wire_encode(payloads: Sequence[bytes]) -> bytes:
    """`u32 LE count` then `u32 LE len + bytes` per payload."""

def wire_decode(data: bytes) -> list[bytes]: ...
def encode_outputs(payloads: Sequence[bytes]) -> bytes:
    """Self-describing outputs: option byte (0 plain, 1 zstd when payloads exceed 1 KiB)."""

def decode_outputs(data: bytes, max_size: int = ...) -> list[bytes]:
    """Inverse of `encode_outputs`; raises CodecError on malformed input or when the decompressed
    frame would exceed `max_size` bytes (default 1 GiB)."""

def compress(data: bytes) -> bytes:
    """zstd, library default level."""

def decompress(data: bytes, max_size: int = ...) -> bytes:
    """zstd; raises CodecError when the output would exceed `max_size` bytes (default 1 GiB)."""

def is_valid_transition(from_state: int, to_state: int) -> bool:
    """The job transition table (docs/concepts.md, "Job states"), the one the storage database
    layer checks its updates against too. Raises InvalidRequestError for a code that is not a job
    state."""

def is_terminal(state: int) -> bool:
    """Succeeded, Failed and Cancelled; InvalidRequestError for a code that is not a job state."""

def validate_task_name(package: str, task_func: str) -> None:
    """Raise InvalidGraphError unless `package` is an identifier and `task_func` a dotted
    identifier path (no `..`, `/`, absolute paths or empty parts)."""

def validate_value(type_json: str, payload: bytes) -> None:
    """Check one msgpack payload against a type descriptor (JSON, e.g. '{"Value":{"Bytes":{}}}')
    exactly as a submission checks each graph input: accepted is what the Python client encodes
    for the type (ints of any msgpack width within range, floats, bool, bin for Bytes, UTF-8 str
    for String, arrays for List and Struct, maps with keys of the key type for Map), exactly one
    value. Raises InvalidInputValueError (InvalidRequestError for a malformed descriptor)."""

# ---------------------------------------------------------------------------------------------
# Task graph
# ---------------------------------------------------------------------------------------------

@final
class TaskGraph:
    """A validated task graph in the Spider JSON schema (`schema_version` 0.1.x)."""

    @staticmethod
    def from_json(data: str | bytes) -> TaskGraph: ...
    @staticmethod
    def from_compressed(data: bytes) -> TaskGraph: ...
    def to_json(self) -> str: ...
    def to_compressed(self) -> bytes: ...
    @property
    def num_tasks(self) -> int: ...
    @property
    def num_graph_inputs(self) -> int: ...
    @property
    def num_graph_outputs(self) -> int: ...
    @property
    def has_commit(self) -> bool: ...
    @property
    def has_cleanup(self) -> bool: ...
    def graph_input_types(self) -> list[str]:
        """JSON of each graph input's type descriptor, in graph-input order."""

    def graph_output_types(self) -> list[str]: ...
    def tdl_contexts(self) -> list[tuple[str, str]]:
        """Distinct `(package, task_func)` pairs, termination tasks included."""

@final
class Submission:
    """A validated job submission: zstd(JSON graph) + zstd(wire frame of inputs), checked by every
    graph rule (docs/concepts.md), the inputs against their types, and task-name validation."""

    def __new__(
        cls,
        compressed_graph: bytes,
        compressed_inputs: bytes,
        *,
        max_graph_bytes: int = 1073741824,
        max_input_bytes: int = 1073741824,
        max_tasks: int | None = None,
    ) -> Submission:
        """Parse and validate. Limits (defaults = the behaviour before limits existed: 1 GiB per
        decompressed buffer, no task-count limit):

        * `max_graph_bytes`: decompressed size of the graph JSON;
        * `max_input_bytes`: decompressed size of the graph-input wire frame;
        * `max_tasks`: regular tasks per job (`None`: no limit).

        Decompression stops at the limit (memory grows only with the bytes actually produced) and
        tasks past `max_tasks` are counted, never built. Each graph input is checked against its
        declared type (see `validate_value`). Raises LimitExceededError ("GraphTooLarge",
        "InputsTooLarge", "TooManyTasks"), InvalidInputValueError or InvalidGraphError."""

    @staticmethod
    def with_graph(
        graph: TaskGraph, compressed_inputs: bytes, *, max_input_bytes: int = 1073741824
    ) -> Submission:
        """A submission of an already-parsed graph (shared, not copied) with new inputs; the
        input frame is bounded by `max_input_bytes` (default 1 GiB)."""

    @property
    def graph(self) -> TaskGraph: ...
    @property
    def num_inputs(self) -> int: ...

# ---------------------------------------------------------------------------------------------
# Job cache: job control blocks, inbound queue and task-instance table.
# ---------------------------------------------------------------------------------------------

@final
class ExecutionContext:
    instance_id: int
    job_id: int
    task_id: int
    resource_group_id: int
    package: str
    task_func: str
    soft_timeout_ms: int
    hard_timeout_ms: int
    task_io: bytes
    """Regular: wire frame of the inputs. Commit: self-describing job outputs. Cleanup: wire frame
    of the graph inputs."""

@final
class Outcome:
    """A job-level consequence of a report that the caller must persist and then apply."""

    kind: int
    job_id: int
    outputs: bytes | None
    """OUTCOME_JOB_COMPLETED: self-describing job outputs to persist before `complete`."""
    message: str | None
    """OUTCOME_JOB_FAILED: the failure message to persist before `fail`."""
    has_commit: bool

@final
class InstanceGcReport:
    removed_terminal: int
    removed_dead: int
    requeued_dead: int
    requeued_soft_timeout: int

@final
class JobCache:
    def __new__(
        cls,
        *,
        task_capacity: int = 65536,
        commit_capacity: int = 1024,
        cleanup_capacity: int = 1024,
        max_task_output_bytes: int = 1073741824,
        max_job_bytes: int | None = None,
    ) -> JobCache:
        """Byte limits on what the cache keeps of each job (defaults: 1 GiB per report, no
        per-job limit):

        * `max_task_output_bytes`: the summed payload size of one success report's outputs;
        * `max_job_bytes`: the graph inputs plus every stored task output of a running job
          (`None`: unbounded).

        A success report over either limit does not store its outputs: the task fails for good
        and the report returns an OUTCOME_JOB_FAILED `Outcome` (once per job, like a task that
        exhausted its retries) whose message names the task, the size and the limit. The job's
        state is not changed: persist the failure, then call `fail`."""
    def __len__(self) -> int: ...
    def __contains__(self, job_id: int, /) -> bool: ...
    def job_ids(self) -> list[int]: ...

    # Insertion and recovery (nothing is enqueued).
    def insert(self, job_id: int, resource_group_id: int, submission: Submission) -> None: ...
    def recover(
        self,
        job_id: int,
        resource_group_id: int,
        submission: Submission,
        state: int,
        outputs: bytes | None,
        finished: list[tuple[int, bytes]] | None = None,
    ) -> Outcome | None:
        """Dedicated shapes per recovered state: READY and RUNNING get a fresh graph, COMMIT_READY
        only the job outputs and a fresh commit task, CLEANUP_READY only a fresh cleanup task.

        `finished` (RUNNING only; InvalidRequestError otherwise): ``(task index, outputs wire
        frame)`` of the tasks whose outputs were persisted (durability "task"). Those whose
        parents all finished too are SUCCEEDED with their outputs, and only the remaining tasks
        can become READY. Returns the OUTCOME_JOB_COMPLETED `Outcome` when every task had
        finished (persist it, then call `complete`), else None. A malformed entry raises
        RecoveryError naming the task."""

    # Queries.
    def state(self, job_id: int) -> int: ...
    def resource_group(self, job_id: int) -> int: ...
    def has_commit(self, job_id: int) -> bool: ...
    def has_cleanup(self, job_id: int) -> bool: ...
    def outputs(self, job_id: int) -> bytes:
        """Self-describing job outputs; StaleError unless SUCCEEDED (or COMMIT_READY);
        OutputsReleasedError after `drop_outputs`."""

    def drop_outputs(self, job_id: int) -> bool:
        """Free the cached outputs of a SUCCEEDED job (the database keeps them); returns whether
        anything was freed. Any other state (a COMMIT_READY job's commit task needs its outputs)
        or outputs already released: False, nothing changes."""

    def error(self, job_id: int) -> str | None: ...
    def progress(self, job_id: int) -> tuple[int, int, int, int, int, int]:
        """Task counts: pending, ready, running, succeeded, failed, cancelled."""

    def total_tasks(self, job_id: int) -> int: ...
    def explain(self, job_id: int, limit: int) -> list[tuple[int, str, str]]:
        """Why non-terminal tasks are not running: `(task_id, reason, detail)`, reason one of
        "pending_parents", "queued", "instance_limit", "retrying", "running"."""
    def task_states(self, job_id: int) -> list[tuple[int, int, int, int]]:
        """Every task's `(task_id, state code (TASK_STATES), failed attempts, live instances)`:
        the regular tasks while the job holds its graph (until it leaves RUNNING), then its
        commit and cleanup tasks, if any."""

    # Job-level transitions. The caller validates with `check_transition`, persists, then applies.
    def check_transition(self, job_id: int, target: int) -> int:
        """Return the current state; StaleError if `target` is not reachable from it now."""

    def start(self, job_id: int) -> int:
        """READY -> RUNNING; enqueues the input tasks; returns how many."""

    def complete(self, job_id: int, now_ms: int) -> int:
        """After OUTCOME_JOB_COMPLETED was persisted: -> COMMIT_READY (commit enqueued) or
        SUCCEEDED. Releases the task graph, keeps the outputs."""

    def cancel(self, job_id: int, now_ms: int) -> int:
        """-> CLEANUP_READY (cleanup enqueued) or CANCELLED; cancels every non-terminal task."""

    def fail(self, job_id: int, message: str, now_ms: int) -> None:
        """-> FAILED; cancels the other tasks and releases the graph."""

    def finish(self, job_id: int, now_ms: int) -> int:
        """After a termination task's success was persisted: COMMIT_READY -> SUCCEEDED,
        CLEANUP_READY -> CANCELLED."""

    # Task-instance lifecycle.
    def register(
        self,
        job_id: int,
        task_id: int,
        em_id: int,
        now_ms: int,
        *,
        max_task_io_bytes: int | None = None,
    ) -> ExecutionContext:
        """Register a new instance. With `max_task_io_bytes`, a task whose task_io would be
        larger is refused with TaskInputsTooLargeError (its size is computed from the stored
        values, no buffer is built; only a registration that would otherwise succeed is refused
        for its size). A successful registration forgets the task's taken queue entry."""

    def register_batch(
        self,
        items: Sequence[tuple[int, int]],
        em_id: int,
        now_ms: int,
        *,
        max_task_io_bytes: int | None = None,
        max_total_io_bytes: int | None = None,
    ) -> list[ExecutionContext | CoreError]:
        """`register` per item; errors (TaskInputsTooLargeError included) are returned in
        place. With `max_total_io_bytes`, the registered tasks' task_io adds up to at most that
        (beyond the first registration, which only `max_task_io_bytes` bounds): the others are
        left unregistered with a LimitExceededError of kind "ReplyFull" (register them again)."""
    def report_success(
        self, job_id: int, task_id: int, instance_id: int, outputs: bytes
    ) -> Outcome | None: ...
    def report_failure(
        self, job_id: int, task_id: int, instance_id: int, message: str
    ) -> Outcome | None: ...
    def report_batch(
        self, items: Sequence[tuple[int, int, int, bytes | str]]
    ) -> list[Outcome | CoreError | None]:
        """`bytes` reports a success (wire frame of outputs), `str` a failure message."""
    def report_batch_continuing(
        self,
        items: Sequence[tuple[int, int, int, bytes | str]],
        em_id: int,
        accept: int,
        now_ms: int,
        *,
        max_task_io_bytes: int | None = None,
        max_total_io_bytes: int | None = None,
    ) -> tuple[list[Outcome | CoreError | None], list[ExecutionContext]]:
        """`report_batch`; while the task lane is empty, up to `accept` of the regular tasks
        the reports made ready are registered for `em_id` (as `register_batch` with these
        limits) instead of being offered: their contexts are the second value."""

    def gc_instances(self, now_ms: int, dead_ems: Sequence[int]) -> InstanceGcReport: ...
    def reconcile_em(self, em_id: int, held: Sequence[int], registered_before_ms: int) -> int:
        """The EM holds the instances `held`: every other instance registered for it before
        `registered_before_ms` was lost on the way and its task is offered again; returns how
        many."""
    def live_instances(self) -> int: ...

    # Inbound queue.
    def poll(
        self, lane: int, max_items: int, wait_ms: int, now_ms: int | None = None
    ) -> list[tuple[int, int, int]]:
        """Up to `max_items` `(resource_group_id, job_id, task_id)` entries; returns as soon as
        `max_items` are collected or the shared deadline passes. Releases the GIL while waiting.

        With `now_ms`, the entries are recorded as taken at that time: if no instance of the task
        is registered before `requeue_expired` finds them older than the visibility timeout, they
        are offered again. Without it (`None`, the default) they are handed out for good."""

    def poll_all(
        self,
        max_tasks: int,
        max_commit: int,
        max_cleanup: int,
        wait_ms: int,
        now_ms: int | None = None,
    ) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """Poll the three lanes at once; returns when any lane yields work or the wait elapses.
        `now_ms` as for `poll`."""

    def poll_first(self, max_items: int, wait_ms: int, now_ms: int) -> list[tuple[int, int, int]]:
        """Up to `max_items` task-lane entries for an idle execution manager, served before
        `poll_all`: while this call waits and no entry a poll took is still unregistered (the
        scheduler is ordering nothing), the next `max_items` entries are its own. Recorded as
        taken at `now_ms`, as for `poll`. Releases the GIL while waiting."""

    def give_back(self, entries: list[tuple[int, int, int]]) -> int:
        """Offer again, at once, entries a poll took that nobody will register; those no longer
        schedulable are dropped. Returns how many were offered."""

    def requeue_expired(self, now_ms: int, visibility_ms: int) -> int:
        """Re-offer every entry taken by a poll (with `now_ms`) more than `visibility_ms` before
        `now_ms` whose task was not registered since and is still schedulable (job in the lane's
        state, instance limit not reached); expired entries leave the ledger either way (they are
        recorded again when polled again). A successful `register` / `register_batch` of the task
        forgets its entry; job termination (`complete`, `cancel`, `fail`, `finish`), eviction,
        `remove` and `resend_ready` forget a job's / all entries. Duplicates are possible when a
        registration races with this call, losses are not. Returns the number of entries
        offered."""

    def taken_entries(self) -> int:
        """Entries taken by polls (with `now_ms`) and neither registered, expired nor forgotten
        yet (for metrics)."""

    def queue_depths(self) -> tuple[int, int, int]: ...
    def resend_ready(self) -> int:
        """Re-offer every Ready task / commit / cleanup of the cached jobs (after a restart or a
        scheduler change) and forget every taken entry; returns the number of entries offered."""

    def close(self) -> None:
        """Wake every poller; later polls return immediately."""

    # Eviction.
    def evict_terminated(self, now_ms: int, retention_ms: int) -> list[int]: ...
    def remove(self, job_ids: Sequence[int]) -> int: ...
