"""Loss balancers. Importing the package registers every method in ``BALANCERS``."""

from polytask.balance import loss_weighting  # noqa: F401  (registers the methods)
from polytask.balance.base import BALANCERS, Balancer, build_balancer

__all__ = ["BALANCERS", "Balancer", "build_balancer"]
