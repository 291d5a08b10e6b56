"""``convo bench``: strategies against each other, against a real peer and against the ideal.

Workloads (:mod:`convo.bench.workloads`) are replayed on the emulator's virtual clock
(:mod:`convo.bench.run`) under each strategy (:mod:`convo.bench.strategies`); what each
run was billed is compared with a lower bound no client can beat (:mod:`convo.bench.ideal`)
and written out (:mod:`convo.bench.report`). See ``docs/benchmarks.md``.
"""

from convo.bench.ideal import SegmentPlan, TurnLog, ideal_cost, ideal_usage, plan_segment
from convo.bench.run import Bench, RunResult
from convo.bench.strategies import STRATEGIES, StrategyUnavailable
from convo.bench.workloads import WORKLOADS, Workload, build

__all__ = [
    "STRATEGIES",
    "WORKLOADS",
    "Bench",
    "RunResult",
    "SegmentPlan",
    "StrategyUnavailable",
    "TurnLog",
    "Workload",
    "build",
    "ideal_cost",
    "ideal_usage",
    "plan_segment",
]
