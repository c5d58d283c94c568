"""How an engine turns steps into service: static batches, in-flight batching with chunked
prefill (``inflight``), disaggregated pools, queueing, the engines' scheduler and memory defaults
(``presets``) and the memory an engine accounts (``memory``), giving TTFT, TPOT, tokens/s per GPU
and $/Mtok.

Builds on ``cost``; knows nothing of sweeps or planning (``plan``).
"""
