"""`dupn bench`: every figure of the performance issue, side by side in one run (BENCHMARKS.md).

Parts, each runnable alone (``dupn bench --part X``); ``--part all`` runs them in this order:
ceiling-a, ceiling-b, worker, freshness, sweep, encoder, state, recovery, query, scaling
(``drain`` is one configurable worker run, outside ``all``). Ceiling A and the worker's
incremental drain run interleaved and repeated (``throughput.interleaved``); freshness
and the sweep measure every event, worker and floor alike (``perevent``, ``paced``). Every Kafka-facing part
produces the same synthetic stream to its own topics on a fresh embedded broker
(same binary and configuration), so no part pays for another's data, and runs its
processes on this machine, sharing its cores with the broker.
"""

from ops.bench.common import BenchConfig, make_stream
from ops.bench.drain import Drain, drain
from ops.bench.report import markdown
from ops.bench.run import PARTS, run_parts

__all__ = ["PARTS", "BenchConfig", "Drain", "drain", "make_stream", "markdown", "run_parts"]
