"""Moved to :mod:`moesim.cost.ops`; this import path is kept for one release."""

import sys

from moesim.cost import ops as _module

sys.modules[__name__] = _module
