"""The public exception hierarchy: every error Orbweaver raises derives from `OrbweaverError`."""

from __future__ import annotations

from collections.abc import Mapping


class OrbweaverError(Exception):
    """Base class of every Orbweaver error."""


class InvalidArgument(OrbweaverError, ValueError):
    """A request was malformed or does not fit the target (bad value, bad index, ...)."""


class InvalidGraph(InvalidArgument):
    """A task graph breaks a validation rule; the message names the task and position."""


class InvalidInput(InvalidArgument):
    """A job input does not match the graph input it is bound to."""


class MessageTooLarge(InvalidArgument):
    """A message exceeds the configured gRPC size limit."""


class LimitExceeded(InvalidArgument):
    """A value exceeds a configured size or count limit (decompressed inputs, outputs, tasks per
    job, ...); the message names the size, the limit and the setting."""


class ConfigError(InvalidArgument):
    """A service setting is unknown, of the wrong type or refused; the message names the setting
    and where its value came from (a file, an environment variable, a flag)."""


class NotFound(OrbweaverError, LookupError):
    """The requested object does not exist."""


class JobNotFound(NotFound):
    """No job with that id exists (it may also have been deleted after its retention period).
    The one class for it: the storage's database layer raises it too."""

    def __init__(self, message: str = "", *, job_id: int | None = None) -> None:
        self.job_id = job_id
        super().__init__(message or (f"job {job_id} not found" if job_id is not None else ""))


class Unauthenticated(OrbweaverError):
    """Missing or wrong credentials: resource-group password, operator token or cluster token."""


class PermissionDenied(Unauthenticated):
    """The credentials are valid but do not allow this call (e.g. a resource group's credentials
    asking to create resource groups, or the cluster token used for a client call)."""


class AlreadyExists(OrbweaverError):
    """The object already exists (e.g. a resource group with that name)."""


class FailedPrecondition(OrbweaverError):
    """The request is valid but the current state does not allow it."""


class Unavailable(OrbweaverError, ConnectionError):
    """A service could not be reached, even after retries."""


class InternalError(OrbweaverError):
    """A broken invariant inside a service; please report it."""


class JobFailed(OrbweaverError):
    """The job ended in the FAILED state."""

    def __init__(self, job_id: int, message: str) -> None:
        super().__init__(f"job {job_id} failed: {message}")
        self.job_id = job_id
        self.message = message


class JobCancelled(OrbweaverError):
    """The job was cancelled."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} was cancelled")
        self.job_id = job_id


class JobTimeout(OrbweaverError, TimeoutError):
    """The job did not reach a terminal state within the given timeout. From a wait for several
    jobs (`as_completed`), `unfinished` maps each job not finished to its last known state and
    `job_id` is the first of them."""

    def __init__(
        self,
        job_id: int,
        timeout: float,
        state: str,
        *,
        unfinished: Mapping[int, str] | None = None,
    ) -> None:
        self.unfinished = dict(unfinished) if unfinished else {job_id: state}
        if len(self.unfinished) == 1:
            message = f"job {job_id} still {state} after {timeout:g} s"
        else:
            listed = ", ".join(f"{j} ({s})" for j, s in list(self.unfinished.items())[:10])
            more = len(self.unfinished) - 10
            message = (
                f"{len(self.unfinished)} jobs still unfinished after {timeout:g} s: {listed}"
                + (f" and {more} more" if more > 0 else "")
            )
        super().__init__(message)
        self.job_id = job_id
        self.timeout = timeout
