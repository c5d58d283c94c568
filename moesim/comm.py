"""Moved to :mod:`moesim.cost.comm`; this import path is kept for one release."""

import sys

from moesim.cost import comm as _module

sys.modules[__name__] = _module
