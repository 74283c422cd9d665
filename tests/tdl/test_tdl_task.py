"""`@task`, `TaskFunction`, `TaskPolicy` and `TaskContext`."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

import orbweaver as ow
from orbweaver import _core, errors
from orbweaver.tdl.task import is_registered, registered_task
from orbweaver.tdl.types import value_type

WORKER_TASKS = Path(__file__).resolve().parents[1] / "worker" / "tasks"
if str(WORKER_TASKS) not in sys.path:
    sys.path.insert(0, str(WORKER_TASKS))

import integration_tasks as it  # noqa: E402
from nested_pkg.sub import mod as nested  # noqa: E402

PYTHON_ROOT = Path(__file__).resolve().parents[2] / "python"


def define(source: str, module: str = "fake_module") -> Any:
    """Run `source` as a module-level definition in a fresh module; returns the module."""
    mod = types.ModuleType(module)
    mod.__file__ = f"/nonexistent/{module}.py"
    sys.modules[module] = mod  # dataclasses and get_type_hints look their module up
    exec(textwrap.dedent(source), mod.__dict__)
    return mod


# -------------------------------------------------------------------------------------------------
# Attributes
# -------------------------------------------------------------------------------------------------


def test_task_attributes() -> None:
    fib = it.fibonacci
    assert isinstance(fib, ow.TaskFunction)
    assert fib.package == "integration_tasks"
    assert fib.task_func == "fibonacci"
    assert fib.qualified_name == "integration_tasks.fibonacci"
    assert fib.tasks_dir == WORKER_TASKS
    assert [(p.name, p.annotation) for p in fib.params] == [("n", int)]
    assert [o.name for o in fib.outputs] == ["int"]
    assert fib.takes_context is False
    assert fib.policy == ow.TaskPolicy()
    assert repr(fib) == "<orbweaver task integration_tasks.fibonacci>"


def test_task_is_still_callable_and_wraps() -> None:
    assert it.fibonacci(10) == 55
    assert it.fibonacci.__name__ == "fibonacci"
    assert it.fibonacci.__module__ == "integration_tasks"
    assert it.fibonacci.__wrapped__ is it.fibonacci.fn
    assert it.write_graph_inputs.__doc__ is not None


def test_submodule_task_address() -> None:
    assert nested.triple.package == "nested_pkg"
    assert nested.triple.task_func == "sub.mod.triple"
    assert nested.triple.tasks_dir == WORKER_TASKS
    assert nested.triple.outputs == (value_type(ow.Int32),)


def test_renamed_task() -> None:
    assert it.original_name.task_func == "renamed"
    assert registered_task("integration_tasks", "renamed") is it.original_name
    assert registered_task("integration_tasks", "original_name") is None


def test_registry() -> None:
    assert registered_task("integration_tasks", "fibonacci") is it.fibonacci
    assert is_registered(it.fibonacci)
    assert not is_registered(it.not_a_task)
    assert not is_registered(print)


def test_context_parameter_is_excluded() -> None:
    assert it.describe_context.takes_context
    assert [p.name for p in it.describe_context.params] == ["tag"]
    assert len(it.describe_context.outputs) == 5
    mod = define(
        """
        import orbweaver as ow

        @ow.task
        def by_name(ctx, x: int) -> None:
            pass

        @ow.task
        def annotated(c: ow.TaskContext) -> tuple[()]:
            pass

        @ow.task
        def none_out() -> None:
            pass

        @ow.task
        def ctx_typed_int(ctx: int) -> int:
            return ctx
        """
    )
    assert mod.by_name.takes_context and [p.name for p in mod.by_name.params] == ["x"]
    assert mod.annotated.takes_context and mod.annotated.params == ()
    assert mod.annotated.outputs == ()
    assert mod.none_out.outputs == ()
    # A first parameter named ctx with a value annotation is a regular parameter.
    assert not mod.ctx_typed_int.takes_context


def test_multiple_outputs() -> None:
    mod = define(
        """
        from dataclasses import dataclass
        import orbweaver as ow

        @dataclass
        class S:
            a: int

        @ow.task
        def three() -> tuple[int, S, list[bytes]]:
            return 1, S(2), [b""]

        @ow.task
        def one_tuple() -> tuple[int]:
            return (1,)
        """
    )
    assert [o.name for o in mod.three.outputs] == ["int", "S", "list[bytes]"]
    assert len(mod.one_tuple.outputs) == 1


def test_string_annotations_are_resolved() -> None:
    mod = define(
        """
        from __future__ import annotations
        import orbweaver as ow

        @ow.task
        def f(ctx: ow.TaskContext, x: ow.Int8, y: dict[str, list[float]]) -> ow.Float32:
            return 0.0
        """
    )
    assert mod.f.takes_context
    assert [p.type.name for p in mod.f.params] == ["Int8", "dict[str, list[float]]"]
    assert mod.f.outputs[0].name == "Float32"


# -------------------------------------------------------------------------------------------------
# Decorator validation
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("def f(*args: int) -> int: ...", "parameter `args` is variadic"),
        ("def f(**kw: int) -> int: ...", "parameter `kw` is variadic"),
        ("def f(a: int, *, b: int) -> int: ...", "parameter `b` is keyword-only"),
        ("def f(a) -> int: ...", "parameter `a` needs a type annotation"),
        ("def f(a: int): ...", "needs a return annotation (use `-> None` for no outputs)"),
        (
            "def f(a: complex) -> int: ...",
            "`fake_module.f`, parameter `a`: unsupported type complex",
        ),
        (
            "def f(a: int) -> set[int]: ...",
            "`fake_module.f`, return type: unsupported type set[int]",
        ),
        ("def f() -> tuple[int, ...]: ...", "has a variable length"),
        ("def f() -> tuple: ...", "bare `tuple` return type"),
        ("def f() -> tuple[int, complex]: ...", "`fake_module.f`, output 1: unsupported type"),
        (
            "import orbweaver as ow\ndef f(x: int, ctx: ow.TaskContext) -> int: ...",
            "the TaskContext parameter `ctx` must be the first parameter",
        ),
        ("async def f() -> int: ...", "is async"),
        ("def f() -> int:\n    yield 1", "is a generator"),
        ("def f(a: 'Missing') -> int: ...", "cannot resolve its type annotations"),
        ("class C:\n    def f(self) -> int: ...\nf = C.f", "is defined in a class"),
        ("f = lambda: 1", "a lambda cannot be a task"),
    ],
)
def test_decorator_rejects(source: str, fragment: str) -> None:
    mod = define(source)
    with pytest.raises(TypeError) as info:
        ow.task(mod.f)
    assert fragment in str(info.value)


def test_local_functions_are_rejected() -> None:
    def local(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="is defined inside another function; tasks must be"):
        ow.task(local)


def test_non_functions_are_rejected() -> None:
    with pytest.raises(TypeError, match="can only decorate functions"):
        ow.task(print)
    with pytest.raises(TypeError, match="can only decorate functions"):
        ow.task(it.fibonacci)


def test_invalid_name_option() -> None:
    mod = define("def f() -> int: ...")
    with pytest.raises(errors.InvalidArgument, match="invalid task name 'a/b'"):
        ow.task(name="a/b")(mod.f)
    with pytest.raises(errors.InvalidArgument, match="invalid task name"):
        ow.task(name="")(mod.f)


def test_duplicate_names_are_rejected() -> None:
    mod = define(
        """
        import orbweaver as ow

        @ow.task(name="same")
        def a() -> int: ...
        """,
        module="dup_module",
    )
    assert mod.a.task_func == "same"
    other = define("def b() -> int: ...", module="dup_module")
    with pytest.raises(errors.InvalidArgument, match="is used by both"):
        ow.task(name="same")(other.b)
    # Re-importing the same module (a reload) replaces the entry.
    again = define(
        "import orbweaver as ow\n@ow.task(name='same')\ndef a() -> int: ...", module="dup_module"
    )
    assert registered_task("dup_module", "same") is again.a


def test_task_with_unaddressable_module_fails_when_used() -> None:
    mod = define(
        "import orbweaver as ow\n@ow.task\ndef f() -> int:\n    return 1",
        module="not-an-identifier",
    )
    assert mod.f() == 1  # still callable
    with pytest.raises(errors.InvalidArgument, match="cannot be addressed by executors"):
        _ = mod.f.package
    with pytest.raises(errors.InvalidGraph, match="task 0"):
        ow.TaskGraph().add(mod.f)


def test_pickles_by_reference() -> None:
    assert pickle.loads(pickle.dumps(it.fibonacci)) is it.fibonacci


# -------------------------------------------------------------------------------------------------
# Scripts: tasks defined in __main__
# -------------------------------------------------------------------------------------------------


def _run_script(path: Path) -> str:
    env = {"PYTHONPATH": str(PYTHON_ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_tasks_defined_in_a_script_use_its_file_stem(tmp_path: Path) -> None:
    script = tmp_path / "my_script.py"
    script.write_text(
        textwrap.dedent(
            """
            import orbweaver as ow

            @ow.task
            def work(x: int) -> int:
                return x

            if __name__ == "__main__":
                print(work.package, work.task_func, work.tasks_dir)
            """
        )
    )
    assert _run_script(script) == f"my_script work {tmp_path.resolve()}"


def test_script_with_a_non_identifier_name(tmp_path: Path) -> None:
    script = tmp_path / "my-script.py"
    script.write_text(
        textwrap.dedent(
            """
            import orbweaver as ow

            @ow.task
            def work(x: int) -> int:
                return x

            try:
                work.package
            except ow.InvalidArgument as exc:
                print("refused:", exc)
            """
        )
    )
    out = _run_script(script)
    assert out.startswith("refused:") and "cannot be addressed by executors" in out


# -------------------------------------------------------------------------------------------------
# Policies
# -------------------------------------------------------------------------------------------------


def test_default_policy() -> None:
    p = ow.TaskPolicy()
    assert (p.retries, p.instances, p.soft_timeout_ms, p.hard_timeout_ms) == (
        0,
        1,
        150_000,
        300_000,
    )
    assert p.is_default and p.to_json() is None


def test_policy_from_the_decorator() -> None:
    mod = define(
        """
        import orbweaver as ow

        @ow.task(retries=3, instances=2, soft_timeout=5, hard_timeout=30.5)
        def f() -> int: ...
        """
    )
    assert mod.f.policy == ow.TaskPolicy(3, 2, 5_000, 30_500)
    assert mod.f.policy.to_json() == {
        "max_num_retry": 3,
        "max_num_instances": 2,
        "timeout_policy": {"soft_timeout_ms": 5000, "hard_timeout_ms": 30500},
    }


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"retries": -1}, "retries must be >= 0"),
        ({"instances": 0}, "instances must be >= 1"),
        ({"soft_timeout": 0.05}, "soft_timeout must be between 0.1 s and 24 h"),
        ({"hard_timeout": 86_400.001, "soft_timeout": 10}, "hard_timeout must be between"),
        ({"soft_timeout": 10, "hard_timeout": 10}, "must be greater than soft_timeout"),
        ({"soft_timeout": 20, "hard_timeout": 10}, "hard_timeout (10 s) must be greater"),
        ({"hard_timeout": 0.1}, "must be greater than soft_timeout"),
        ({"hard_timeout": "5"}, "must be a number of seconds"),
        ({"soft_timeout": float("nan")}, "must be finite"),
        ({"retries": 1.5}, "retries must be an int"),
        ({"instances": True}, "instances must be an int"),
    ],
)
def test_policy_validation(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        ow.task(**kwargs)
    assert fragment in str(info.value)


def test_a_lone_timeout_moves_the_other_one() -> None:
    base = ow.TaskPolicy()
    p = base.with_overrides(hard_timeout=0.2)
    assert (p.soft_timeout_ms, p.hard_timeout_ms) == (100, 200)
    p = base.with_overrides(hard_timeout=60)
    assert (p.soft_timeout_ms, p.hard_timeout_ms) == (30_000, 60_000)
    p = base.with_overrides(soft_timeout=600)
    assert (p.soft_timeout_ms, p.hard_timeout_ms) == (600_000, 1_200_000)
    p = base.with_overrides(soft_timeout=86_000)
    assert p.hard_timeout_ms == 86_400_000
    p = base.with_overrides(hard_timeout=200)  # no conflict: the soft timeout stays
    assert p.soft_timeout_ms == 150_000


# -------------------------------------------------------------------------------------------------
# TaskContext
# -------------------------------------------------------------------------------------------------


def test_task_context() -> None:
    ctx = ow.TaskContext(1, 2, 3, 4)
    assert not ctx.is_commit and not ctx.is_cleanup and ctx.task_label == "task 2"
    commit = ow.TaskContext(1, _core.TASK_COMMIT, 3, 4, job_outputs=[1])
    assert commit.is_commit and commit.task_label == "commit"
    cleanup = ow.TaskContext(1, _core.TASK_CLEANUP, 3, 4, graph_inputs=[])
    assert cleanup.is_cleanup and cleanup.task_label == "cleanup"
    assert _core.TASK_COMMIT < 0 and _core.TASK_CLEANUP < 0
    with pytest.raises(AttributeError):
        ctx.job_id = 5  # type: ignore[misc]
