"""The HTTP layer: the composition root, middlewares, the OpenAI-compatible proxy and the /api/v1 API."""
