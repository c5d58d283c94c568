"""Moved to :mod:`moesim.plan.planner`; this import path is kept for one release."""

import sys

from moesim.plan import planner as _module

sys.modules[__name__] = _module
