"""The request-level simulator's parts: the step-time table (cost of a step by batch
composition), the engines' scheduler settings, KV capacity, the event loop of one instance and
the summary. The public entry points are in :mod:`moesim.engine.simulate`."""
