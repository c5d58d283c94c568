"""Moved to :mod:`moesim.spec.hardware`; this import path is kept for one release."""

import sys

from moesim.spec import hardware as _module

sys.modules[__name__] = _module
