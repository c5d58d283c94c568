"""How an engine turns steps into service: static batches, disaggregated pools, queueing and the
memory an engine accounts, giving TTFT, TPOT, tokens/s per GPU and $/Mtok.

Builds on ``cost``; knows nothing of sweeps or planning (``plan``).
"""
