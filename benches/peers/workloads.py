"""The benchmark workloads, independent of any framework: the task bodies every system runs, the
shapes of the graphs, and the in-process reference results used for the correctness checks.

* W1 wide job: ``WIDE_TASKS`` independent ``inc(i)``; outputs ``[i + 1]``.
* W2 small jobs: ``SMALL_JOBS`` diamonds ``a = inc(x); b = double(a); c = inc(a); d = add(b, c)``;
  output ``[3 * x + 4]`` each.
* NN (Spider's neural-net workload): ``NN_LAYERS`` x ``NN_WIDTH`` neurons, ``NN_FAN_IN`` inputs;
  ``activation(0.5 + sum(w_i x_i))`` with fixed weights and relu / sigmoid / identity by layer
  index mod 3. Layer 0 reads the graph inputs; deeper neurons draw 25 distinct sources from the
  previous layer by dealing from repeatedly reshuffled decks of its indices.
* Latency: ``LATENCY_JOBS`` one-task jobs ``inc(x)``, one after the other.
* Task-duration shapes: independent ``spin(ms)`` tasks that keep a CPU busy for ``ms``
  milliseconds and return the seconds they spun (measured inside the task).
* Fan-out: one ``blob(size)`` (``size`` deterministic pseudo-random bytes) read by
  ``FANOUT_READERS`` ``digest(data)`` children, each returning ``len(data) << 32 | crc32(data)``.
* Clients: ``CLIENTS`` processes, each running ``CLIENT_JOBS`` diamonds one after the other.
"""

from __future__ import annotations

import math
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

WIDE_TASKS = 10_000
SMALL_JOBS = 1_000
DIAMOND_TASKS = 4
NN_LAYERS = 10
NN_WIDTH = 1_000
NN_FAN_IN = 25
NN_SEED = 7
NN_RTOL = 1e-12
LATENCY_JOBS = 500
SPIN_MS = (1, 10, 100)
SPIN_CPU_SECONDS = 6.0  # busy time per task-duration shape: 3 s of wall on 2 executors
FANOUT_BYTES = 1 << 20
FANOUT_READERS = 100
CLIENTS = 4
CLIENT_JOBS = 250


# -- task bodies (each system wraps these; nothing else runs in a task) ---------------------------


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return 2 * x


def add(a: int, b: int) -> int:
    return a + b


def spin(ms: int) -> float:
    """Busy-wait (no sleep: the CPU stays busy) for ``ms`` milliseconds; the seconds spun."""
    start = time.perf_counter()
    spun = 0.0
    while spun < ms / 1000:  # the returned time is compared with ms / 1000 exactly so
        spun = time.perf_counter() - start
    return spun


def blob(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def digest(data: bytes) -> int:
    return len(data) << 32 | zlib.crc32(data)


WEIGHTS = [0.01 * (i + 1) * (-1 if i % 2 else 1) for i in range(NN_FAN_IN)]


def activation(layer: int, z: float) -> float:
    kind = layer % 3
    if kind == 0:
        return max(0.0, z)
    if kind == 1:
        return 1.0 / (1.0 + math.exp(-z))
    return z


def neuron(layer: int, xs: list[float] | tuple[float, ...]) -> float:
    z = 0.5
    for w, x in zip(WEIGHTS, xs, strict=True):
        z += w * x
    return activation(layer, z)


# -- expected results ---------------------------------------------------------------------------


def wide_expected(n: int = WIDE_TASKS) -> list[int]:
    return [inc(i) for i in range(n)]


def diamond_expected(x: int) -> int:
    a = inc(x)
    return add(double(a), inc(a))


def spin_tasks(ms: int, cpu_seconds: float = SPIN_CPU_SECONDS) -> int:
    """How many ``spin(ms)`` tasks make ``cpu_seconds`` of busy time (at least 10)."""
    return max(10, round(cpu_seconds * 1000 / ms))


def spin_problem(got: list[float], ms: int, n: int) -> str | None:
    """None when there are ``n`` spin times of at least ``ms`` each, else what is wrong."""
    if len(got) != n:
        return f"expected {n} spin times, got {len(got)}"
    short = [s for s in got if not (isinstance(s, float) and s >= ms / 1000)]
    return None if not short else f"{len(short)} spins shorter than {ms} ms, e.g. {short[0]!r}"


def sample_latency(
    call: Callable[[int], int], n: int, warm: int = 20
) -> tuple[list[int], list[float]]:
    """``call(x)`` for ``x`` in ``range(n)``, one after the other, after ``warm`` untimed calls:
    the outputs and each call's milliseconds."""
    for x in range(warm):
        call(x)
    outputs, samples = [], []
    for x in range(n):
        start = time.perf_counter()
        outputs.append(call(x))
        samples.append((time.perf_counter() - start) * 1000)
    return outputs, samples


def fanout_expected(size: int, readers: int) -> list[int]:
    return [digest(blob(size))] * readers


# -- the neural network ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NeuralNetwork:
    layers: int
    width: int
    fan_in: int
    inputs: list[float]
    sources: list[list[list[int]]]
    """``sources[layer][n]``: indices in layer ``layer - 1`` feeding neuron ``n`` (layer >= 1;
    ``sources[0]`` is empty, layer 0 neuron ``n`` reads inputs ``n*fan_in .. (n+1)*fan_in``)."""

    @property
    def tasks(self) -> int:
        return self.layers * self.width

    def layer_inputs(self, n: int) -> list[float]:
        return self.inputs[n * self.fan_in : (n + 1) * self.fan_in]

    def reference(self) -> list[float]:
        """The last layer's values, computed in this process."""
        values = [neuron(0, self.layer_inputs(n)) for n in range(self.width)]
        for layer in range(1, self.layers):
            values = [
                neuron(layer, [values[i] for i in self.sources[layer][n]])
                for n in range(self.width)
            ]
        return values


def neural_network(
    layers: int = NN_LAYERS, width: int = NN_WIDTH, fan_in: int = NN_FAN_IN, seed: int = NN_SEED
) -> NeuralNetwork:
    if width * fan_in < width or fan_in > width:
        raise ValueError("each layer needs width >= fan_in")
    rng = random.Random(seed)
    sources: list[list[list[int]]] = [[]]
    for _layer in range(1, layers):
        deck: list[int] = []
        layer_sources = []
        for _ in range(width):
            picks: list[int] = []
            while len(picks) < fan_in:
                if not deck:
                    deck = list(range(width))
                    rng.shuffle(deck)
                candidate = deck.pop()
                if candidate not in picks:
                    picks.append(candidate)
            layer_sources.append(picks)
        sources.append(layer_sources)
    inputs = [rng.uniform(-1, 1) for _ in range(width * fan_in)]
    return NeuralNetwork(layers, width, fan_in, inputs, sources)


def check_close(got: list[float], want: list[float], rtol: float = NN_RTOL) -> str | None:
    """None when every value matches within ``rtol`` (and is finite), else a description."""
    if len(got) != len(want):
        return f"expected {len(want)} outputs, got {len(got)}"
    bad = 0
    first = ""
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        ok = isinstance(g, float) and math.isfinite(g) and abs(g - w) <= rtol * abs(w)
        if not ok:
            bad += 1
            if not first:
                first = f"output {i}: got {g!r}, want {w!r}"
    return None if bad == 0 else f"{bad} outputs differ; first: {first}"
