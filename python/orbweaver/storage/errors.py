"""Translate core-engine and database errors into the public `orbweaver.errors` types.

One table, used by every storage RPC, so the same condition always gets the same status code.
"""

from __future__ import annotations

from orbweaver import _core, errors
from orbweaver.storage.db import errors as db_errors


class ServiceFailure(errors.InternalError):
    """The cache and the database no longer agree (or the database stayed unreachable during a
    job transition): the service must stop and rebuild its cache from the database."""


def translate(
    exc: BaseException, *, job_id: int | None = None, task_rpc: bool = False
) -> errors.OrbweaverError:
    """Map an engine/DB exception to a public error. `task_rpc` marks task-instance RPCs, where a
    job missing from the cache is a stale request, not an unknown job."""
    job = f"job {job_id}: " if job_id is not None else ""
    if isinstance(exc, errors.OrbweaverError):
        return exc
    # Core engine.
    if isinstance(exc, _core.InvalidGraphError):
        return errors.InvalidGraph(str(exc))
    if isinstance(exc, _core.LimitExceededError):
        return errors.LimitExceeded(f"{job}{exc}")
    if isinstance(exc, _core.CodecError | _core.InvalidRequestError):
        return errors.InvalidArgument(f"{job}{exc}")
    if isinstance(exc, _core.JobNotFoundError):
        if task_rpc:
            return errors.FailedPrecondition(f"{job}no longer cached (stale request)")
        return errors.JobNotFound(f"{job}not found", job_id=job_id)
    if isinstance(exc, _core.StaleError):
        return errors.FailedPrecondition(f"{job}{exc}")
    if isinstance(exc, _core.CoreError):
        return ServiceFailure(f"{job}{exc}")
    # Database.
    if isinstance(exc, db_errors.ResourceGroupNotFound | db_errors.InvalidPassword):
        return errors.Unauthenticated("invalid resource group or password")
    if isinstance(exc, db_errors.ResourceGroupAlreadyExists | db_errors.IdempotencyKeyReused):
        return errors.AlreadyExists(str(exc))
    if isinstance(exc, db_errors.IllegalExecutionManagerId):
        return errors.NotFound(str(exc))
    if isinstance(exc, db_errors.ExecutionManagerAlreadyDead):
        return errors.FailedPrecondition(str(exc))
    if isinstance(exc, db_errors.InvalidJobStateTransition | db_errors.UnexpectedJobState):
        return errors.FailedPrecondition(str(exc))
    if isinstance(exc, db_errors.DbUnavailable):
        return errors.Unavailable(f"database unavailable: {exc}")
    if isinstance(exc, db_errors.ValueTooLarge):
        return errors.LimitExceeded(str(exc))
    if isinstance(exc, db_errors.CorruptedDbState):
        return ServiceFailure(str(exc))
    return errors.InternalError(f"{job}{type(exc).__name__}: {exc}")
