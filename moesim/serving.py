"""Moved to :mod:`moesim.engine.static`; this import path is kept for one release."""

import sys

from moesim.engine import static as _module

sys.modules[__name__] = _module
