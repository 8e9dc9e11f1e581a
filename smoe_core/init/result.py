"""The common return type of initializers: the model, ready for :func:`smoe_core.fit`, and a record of what
the initializer did (method, seconds, kernels, and its own figures such as segments), for tables."""
from __future__ import annotations

from typing import NamedTuple

from ..model import SMoE


class InitResult(NamedTuple):
    """``model, record = init.grid(image, 1000)``."""

    model: SMoE
    record: dict
