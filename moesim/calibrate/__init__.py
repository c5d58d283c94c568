"""Fit the roofline and network efficiency terms of a hardware profile to measurements.

``moesim profile`` writes kernel timings; :class:`Calibration` fits, per kernel class, the few
physical parameters of :mod:`moesim.cost.roofline` (achievable peak per dtype, achievable bandwidth,
launch overhead, tile quantisation, ridge sharpness) and the α-β terms of :mod:`moesim.cost.comm`,
holding out a fixed fraction of shapes to report how well the model extrapolates, and writes a
measured profile. :func:`calibrate_published` does the same from published kernel tables.
"""

from moesim.calibrate.base import generic_base, infer_base_name
from moesim.calibrate.calibration import Calibration
from moesim.calibrate.collectives import CollectiveCalibrator
from moesim.calibrate.kernels import KernelCalibrator
from moesim.calibrate.measurements import (
    error_stats,
    heldout_shapes,
    read_measurements,
    read_run_metadata,
)
from moesim.calibrate.predict import predict_rows
from moesim.calibrate.published import calibrate_published, published_frame

__all__ = [
    "Calibration",
    "CollectiveCalibrator",
    "KernelCalibrator",
    "calibrate_published",
    "error_stats",
    "generic_base",
    "heldout_shapes",
    "infer_base_name",
    "predict_rows",
    "published_frame",
    "read_measurements",
    "read_run_metadata",
]
