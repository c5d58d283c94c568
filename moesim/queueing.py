"""Moved to :mod:`moesim.engine.queueing`; this import path is kept for one release."""

import sys

from moesim.engine import queueing as _module

sys.modules[__name__] = _module
