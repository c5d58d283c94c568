"""Moved to :mod:`moesim.engine.disagg`; this import path is kept for one release."""

import sys

from moesim.engine import disagg as _module

sys.modules[__name__] = _module
