"""Which API a provider is spoken to, for a client of a given API (pure).

``kind: anthropic`` speaks Anthropic's Messages API only.  ``kind: openai`` speaks chat
completions, and OpenAI's Responses API as well when its ``responses_api`` option says so;
``kind: azure`` speaks chat completions.  A client is served in its own API where the provider
speaks it (native pass-through), through the provider's chat API otherwise (see
``pipeline.exchange``).
"""

from __future__ import annotations

from costproxy.request import Api
from costproxy.settings import ProviderSettings


def upstream_api(provider: ProviderSettings, client: Api) -> Api:
    """The API ``provider`` is spoken to for a client of ``client``'s API."""
    if provider.kind == "anthropic":
        return Api.MESSAGES
    if client is Api.RESPONSES and provider.responses_api:
        return Api.RESPONSES
    return Api.CHAT
