"""A failed job's message split as the job page shows it."""

from __future__ import annotations

from orbweaver.dashboard.app import parse_error

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/tasks/t.py", line 3, in boom\n'
    "    raise ValueError(x)\n"
    "ValueError: bad: input\n"
)


def test_a_task_error_with_its_traceback() -> None:
    message = f"task 1 (t.boom) failed: t.boom (job 2, task 1): ValueError: bad: input\n{TRACEBACK}"
    assert parse_error(message) == {
        "task": "task 1",
        "func": "t.boom",
        "type": "ValueError",
        "message": "bad: input",
        "traceback": TRACEBACK,
    }


def test_a_multi_line_message_stays_before_the_traceback() -> None:
    message = f"task 0 (t.f) failed: KeyError: 'a'\nsecond line\n{TRACEBACK}"
    parsed = parse_error(message)
    assert (parsed["type"], parsed["message"]) == ("KeyError", "'a'\nsecond line")
    assert parsed["traceback"] == TRACEBACK


def test_messages_of_other_shapes_are_kept_whole() -> None:
    crashed = "task 4 (t.g) failed: executor crashed (exit code 3)"
    assert parse_error(crashed)["message"] == "executor crashed (exit code 3)"
    assert parse_error(crashed)["type"] == ""
    limit = "the job outputs are 9 bytes, above the limit of 8 bytes"
    assert parse_error(limit) == {
        "task": "",
        "func": "",
        "type": "",
        "message": limit,
        "traceback": "",
    }
