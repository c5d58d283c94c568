"""Moved to :mod:`moesim.spec.deployment`; this import path is kept for one release."""

import sys

from moesim.spec import deployment as _module

sys.modules[__name__] = _module
