"""Moved to :mod:`moesim.spec.dtypes`; this import path is kept for one release."""

import sys

from moesim.spec import dtypes as _module

sys.modules[__name__] = _module
