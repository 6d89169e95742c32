"""Upstream providers: OpenAI-compatible HTTP endpoints (OpenAI, Azure, Anthropic, Google, …)."""
