"""The benchmark workloads on Dask distributed (``LocalCluster(n_workers=2,
threads_per_worker=1)``): ``client.map`` for the independent tasks, ``client.submit`` graphs of
futures for the others (``pure=False``, so nothing is deduplicated by key); the task bodies are the
framework-free functions in ``workloads``."""

from __future__ import annotations

import logging
import time
from typing import Any

import dask
import distributed
import workloads as w

_state: dict[str, Any] = {}


def dense(layer: int, *xs: float) -> float:
    return w.neuron(layer, xs)


def _quiet() -> None:
    for name in (
        "distributed",
        "distributed.worker",
        "distributed.scheduler",
        "distributed.nanny",
        "distributed.core",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)


def _cluster(workers: int, threads: int) -> distributed.LocalCluster:
    return distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=threads,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )


def start(workers: int) -> None:
    _quiet()
    cluster = _cluster(workers, 1)
    _state["cluster"] = cluster
    _state["client"] = distributed.Client(cluster)


def connect(address: str) -> None:
    """Join the running cluster's scheduler at ``address`` as one more client."""
    _quiet()
    _state["client"] = distributed.Client(address)


def address() -> str:
    return str(_state["cluster"].scheduler_address)


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


def latency(n: int) -> tuple[list[int], list[float]]:
    c = _client()
    return w.sample_latency(lambda x: c.submit(w.inc, x, pure=False).result(), n)


def spin_tasks(ms: int, n: int) -> list[float]:
    c = _client()
    return list(c.gather(c.map(w.spin, [ms] * n, pure=False)))


def fanout(size: int, readers: int) -> list[int]:
    c = _client()
    data = c.submit(w.blob, size, pure=False)
    return list(c.gather([c.submit(w.digest, data, pure=False) for _ in range(readers)]))


def bytes_moved() -> tuple[int | None, str]:
    """Bytes the workers sent each other so far (a reader on another worker fetches a copy)."""
    sent = _client().run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total)
    return sum(sent.values()), "sum of the workers' transfer_outgoing_bytes_total"


def diamond(x: int) -> int:
    """One diamond job, waited for."""
    c = _client()
    a = c.submit(w.inc, x, pure=False)
    d = c.submit(
        w.add, c.submit(w.double, a, pure=False), c.submit(w.inc, a, pure=False), pure=False
    )
    return int(d.result())


def other_topology(workers: int, jobs: int) -> tuple[str, float, list[int]]:
    """W2 on 1 worker with ``workers`` threads (the usual cluster has ``workers`` workers of 1
    thread): its label, seconds and outputs."""
    with _cluster(1, workers) as cluster, distributed.Client(cluster) as client:
        previous = _state["client"]
        _state["client"] = client
        try:
            small_jobs([0])  # warm-up
            start = time.perf_counter()
            outputs = small_jobs(list(range(jobs)))
            return f"1 worker x {workers} threads", time.perf_counter() - start, outputs
        finally:
            _state["client"] = previous
