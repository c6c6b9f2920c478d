"""Loss balancers. Importing the package registers every method in ``BALANCERS``."""

from polytask.balance import (  # noqa: F401  (importing registers the methods)
    adaptive_weighting,
    gradient_methods,
    loss_weighting,
    preference_methods,
)
from polytask.balance.base import BALANCERS, BackwardResult, Balancer, build_balancer
from polytask.balance.gradient_engine import EngineParams, GradientBalancer

__all__ = [
    "BALANCERS",
    "BackwardResult",
    "Balancer",
    "EngineParams",
    "GradientBalancer",
    "build_balancer",
]
