"""Moved to :mod:`moesim.calibrate.validate`; this import path is kept for one release."""

import sys

from moesim.calibrate import validate as _module

sys.modules[__name__] = _module
