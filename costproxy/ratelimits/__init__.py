"""Requests and tokens per minute per key, user, project, team and org (issue 13, item 4).

    gcra     the algorithm, in exact integers (core)
    model    limits, which apply to a principal, admissions and OpenAI's headers (core)
    config   the ``rate_limits:`` section of costproxy.yaml (core)
    store    the limiter of the embedded default: buckets in memory, checkpointed to SQLite
    redis    the limiter shared by replicas: one Lua script per admission
"""
