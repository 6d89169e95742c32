"""The response cache (issue 13, item 5): exact-match answers to deterministic requests.

    policy   what is cacheable, partitions, keys, the ``cache:`` settings (core)
    config   the ``cache:`` section of costproxy.yaml (core)
    capture  a streamed answer accumulated into the whole answer (core)
    replay   a stored answer written as the client's SSE frames (core)
    store    entries in the local SQLite file (embedded default)
    redis    entries in Redis with TTL keys (replicas share them)
"""
