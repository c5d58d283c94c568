"""Moved to :mod:`moesim.spec.model`; this import path is kept for one release."""

import sys

from moesim.spec import model as _module

sys.modules[__name__] = _module
