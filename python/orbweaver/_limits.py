"""Size limits shared by every component, and the helpers that apply them."""

from __future__ import annotations

from orbweaver._rpc import DEFAULT_MAX_MESSAGE_BYTES

# Room in a message for everything but its one large value (ids, framing, a short error).
MESSAGE_OVERHEAD_BYTES = 64 * 1024
# The largest value (outputs of a task or a job) a default-sized message can carry.
MAX_VALUE_IN_MESSAGE = DEFAULT_MAX_MESSAGE_BYTES - MESSAGE_OVERHEAD_BYTES
# Longest error message kept for a job (a task's traceback is cut to its start and its end).
MAX_ERROR_BYTES = 64 * 1024


def clip_message(message: str, limit: int = MAX_ERROR_BYTES) -> str:
    """`message`, or its first and last parts with the number of bytes cut between them."""
    data = message.encode("utf-8", "replace")
    if len(data) <= limit:
        return message
    half = limit // 2 - 64
    head = data[:half].decode("utf-8", "ignore")
    tail = data[-half:].decode("utf-8", "ignore")
    return f"{head}\n... ({len(data) - 2 * half} bytes cut) ...\n{tail}"
