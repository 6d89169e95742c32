"""Translations between the APIs clients and providers speak (sans-IO, pure functions and small
state machines over parsed JSON).

The pipeline's canonical form of a request is an OpenAI chat completions body (``ChatRequest.body``).
Each module converts one API to and from that form:

``responses``, ``responses_stream``   OpenAI Responses clients: request → chat form; a chat
                                      completion (or its chunks) → a Response (or its typed events)
``messages``, ``messages_stream``     Anthropic Messages clients: the same, for Messages
``anthropic``, ``anthropic_stream``   Claude upstreams (``kind: anthropic``): chat form → a Messages
                                      request; a Message (or its events) → a chat completion (chunks)
``usage``                             reading the usage each API reports
``shapes``                            server-sent event frames, JSON object access

Which of them a request goes through is ``pipeline.exchange``'s choice; a request whose client and
provider speak the same API is passed through untouched.
"""
