"""Test doubles for the outside world: a local OpenAI-protocol server (:mod:`.openai_server`)."""
