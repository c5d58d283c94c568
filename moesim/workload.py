"""Moved to :mod:`moesim.spec.workload`; this import path is kept for one release."""

import sys

from moesim.spec import workload as _module

sys.modules[__name__] = _module
