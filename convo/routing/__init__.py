"""Cache-aware model routing: each turn to the acceptable model with the least expected
total cost, counting what each model's cache holds (:class:`Router`; ``docs/routing.md``)."""

from convo.routing.decide import Costed, Option, Prices, RouteDecision, RouteFacts, decide
from convo.routing.router import Router, RouteState, default_signal

__all__ = [
    "Costed",
    "Option",
    "Prices",
    "RouteDecision",
    "RouteFacts",
    "RouteState",
    "Router",
    "decide",
    "default_signal",
]
