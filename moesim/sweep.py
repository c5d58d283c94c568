"""Moved to :mod:`moesim.plan.sweep`; this import path is kept for one release."""

import sys

from moesim.plan import sweep as _module

sys.modules[__name__] = _module
