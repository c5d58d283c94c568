"""moesim: predict what it costs to serve dense and Mixture-of-Experts language models."""

__version__ = "0.1.0"
