"""Model routing: the router, the selection engine, constraints, quality profiles and circuit breakers."""
