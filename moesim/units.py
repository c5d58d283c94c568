"""Moved to :mod:`moesim.spec.units`; this import path is kept for one release."""

import sys

from moesim.spec import units as _module

sys.modules[__name__] = _module
