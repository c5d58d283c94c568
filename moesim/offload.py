"""Moved to :mod:`moesim.cost.offload`; this import path is kept for one release."""

import sys

from moesim.cost import offload as _module

sys.modules[__name__] = _module
