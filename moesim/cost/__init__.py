"""What one forward step costs: the operator inventory (FLOPs, HBM bytes, communication bytes per
GPU), routing statistics, and their times on a hardware profile's calibrated roofline and network.

Knows nothing of schedules (``engine``) or sweeps (``plan``).
"""
