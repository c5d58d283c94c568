"""Moved to :mod:`moesim.cost.routing`; this import path is kept for one release."""

import importlib
import sys

from moesim.cost import routing as _package

for _name in ("distributions", "eplb", "inclusion", "loads", "montecarlo", "stats"):
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"{_package.__name__}.{_name}")
sys.modules[__name__] = _package
