"""What is served and on what: model, hardware, layout and traffic, validated once, in SI units.

The lowest wing: it imports nothing from ``cost``, ``engine`` or ``plan`` at import time.
"""


def resolve(model, hardware):
    """Accept names/paths or already-loaded specs."""
    from moesim.spec.hardware import HardwareProfile, load_hardware
    from moesim.spec.model import ModelSpec, load_model

    m = model if isinstance(model, ModelSpec) else load_model(model)
    h = hardware if isinstance(hardware, HardwareProfile) else load_hardware(hardware)
    return m, h
