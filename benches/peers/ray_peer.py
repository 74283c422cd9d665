"""The benchmark workloads on Ray (``ray.init(num_cpus=2)``): remote functions whose bodies are
the framework-free functions in ``workloads``; dependencies are passed as ``ObjectRef``s."""

from __future__ import annotations

from typing import Any

import ray
import workloads as w


@ray.remote
def inc(x: int) -> int:
    return w.inc(x)


@ray.remote
def double(x: int) -> int:
    return w.double(x)


@ray.remote
def add(a: int, b: int) -> int:
    return w.add(a, b)


@ray.remote
def spin(ms: int) -> float:
    return w.spin(ms)


@ray.remote
def blob(size: int) -> bytes:
    return w.blob(size)


@ray.remote
def digest(data: bytes) -> int:
    return w.digest(data)


@ray.remote
def dense(layer: int, *xs: float) -> float:
    return w.neuron(layer, xs)


def start(workers: int) -> None:
    ray.init(
        num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False
    )


def connect(address: str) -> None:
    """Join the running cluster at ``address`` as one more driver."""
    ray.init(address=address, log_to_driver=False, configure_logging=False)


def address() -> str:
    return str(ray.get_runtime_context().gcs_address)


def stop() -> None:
    ray.shutdown()


def version() -> str:
    return str(ray.__version__)


def warm_up(workers: int) -> None:
    ray.get([inc.remote(i) for i in range(20 * workers)])
    ray.get(dense.remote(0, *([0.0] * w.NN_FAN_IN)))
    ray.get(add.remote(double.remote(1), inc.remote(1)))


def wide(n: int) -> list[int]:
    return list(ray.get([inc.remote(i) for i in range(n)]))


def small_jobs(xs: list[int]) -> list[int]:
    finals = []
    for x in xs:
        a = inc.remote(x)
        finals.append(add.remote(double.remote(a), inc.remote(a)))
    return list(ray.get(finals))


def neural_network(nn: w.NeuralNetwork) -> list[float]:
    previous: list[Any] = [dense.remote(0, *nn.layer_inputs(n)) for n in range(nn.width)]
    for layer in range(1, nn.layers):
        previous = [
            dense.remote(layer, *[previous[i] for i in nn.sources[layer][n]])
            for n in range(nn.width)
        ]
    return list(ray.get(previous))


def latency(n: int) -> tuple[list[int], list[float]]:
    return w.sample_latency(lambda x: ray.get(inc.remote(x)), n)


def spin_tasks(ms: int, n: int) -> list[float]:
    return list(ray.get([spin.remote(ms) for _ in range(n)]))


def fanout(size: int, readers: int) -> list[int]:
    data = blob.remote(size)
    return list(ray.get([digest.remote(data) for _ in range(readers)]))


def bytes_moved() -> tuple[int | None, str]:
    return None, "not exposed (one node: readers map the object from the shared-memory store)"


def diamond(x: int) -> int:
    """One diamond job, waited for."""
    a = inc.remote(x)
    return int(ray.get(add.remote(double.remote(a), inc.remote(a))))
