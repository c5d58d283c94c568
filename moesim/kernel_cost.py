"""Moved to :mod:`moesim.cost.kernel_cost`; this import path is kept for one release."""

import sys

from moesim.cost import kernel_cost as _module

sys.modules[__name__] = _module
