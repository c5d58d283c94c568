"""Moved to :mod:`moesim.plan.scenario`; this import path is kept for one release."""

import sys

from moesim.plan import scenario as _module

sys.modules[__name__] = _module
