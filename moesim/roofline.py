"""Moved to :mod:`moesim.cost.roofline`; this import path is kept for one release."""

import sys

from moesim.cost import roofline as _module

sys.modules[__name__] = _module
