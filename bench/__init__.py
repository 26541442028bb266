"""aiimg's benchmark suite (issue 5): what the bus costs beside calling an upstream directly.

Run ``python -m bench`` (``--quick`` for tiny sizes, ``--only overhead,blobs``,
``--json PATH``). It starts its own nats-server and loopback fake upstreams, runs the
router and provider actors as separate processes, and prints every figure beside its
baseline measured in the same run. See ``docs/benchmarks.md``.
"""
