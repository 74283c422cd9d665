"""The benchmark workloads on Dask distributed (``LocalCluster(n_workers=2,
threads_per_worker=1)``): ``client.map`` for the independent tasks, ``client.submit`` graphs of
futures for the others (``pure=False``, so nothing is deduplicated by key); the task bodies are the
framework-free functions in ``workloads``."""

from __future__ import annotations

import logging
from typing import Any

import dask
import distributed
import workloads as w

_state: dict[str, Any] = {}


def dense(layer: int, *xs: float) -> float:
    return w.neuron(layer, xs)


def start(workers: int) -> None:
    for name in (
        "distributed",
        "distributed.worker",
        "distributed.scheduler",
        "distributed.nanny",
        "distributed.core",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    cluster = distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    _state["cluster"] = cluster
    _state["client"] = distributed.Client(cluster)


def stop() -> None:
    client = _state.pop("client", None)
    cluster = _state.pop("cluster", None)
    if client is not None:
        client.close()
    if cluster is not None:
        cluster.close()


def version() -> str:
    return f"dask {dask.__version__}, distributed {distributed.__version__}"


def _client() -> distributed.Client:
    return _state["client"]


def warm_up(workers: int) -> None:
    c = _client()
    c.gather(c.map(w.inc, range(20 * workers), pure=False))
    c.submit(dense, 0, *([0.0] * w.NN_FAN_IN), pure=False).result()


def wide(n: int) -> list[int]:
    c = _client()
    return list(c.gather(c.map(w.inc, range(n), pure=False)))


def small_jobs(xs: list[int]) -> list[int]:
    c = _client()
    finals = []
    for x in xs:
        a = c.submit(w.inc, x, pure=False)
        finals.append(
            c.submit(
                w.add, c.submit(w.double, a, pure=False), c.submit(w.inc, a, pure=False), pure=False
            )
        )
    return list(c.gather(finals))


def neural_network(nn: w.NeuralNetwork) -> list[float]:
    c = _client()
    previous = [c.submit(dense, 0, *nn.layer_inputs(n), pure=False) for n in range(nn.width)]
    for layer in range(1, nn.layers):
        previous = [
            c.submit(dense, layer, *[previous[i] for i in nn.sources[layer][n]], pure=False)
            for n in range(nn.width)
        ]
    return list(c.gather(previous))
