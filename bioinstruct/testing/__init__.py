"""Test doubles for the outside world: a local OpenAI-protocol server (:mod:`.openai_server`;
its chat endpoint in :mod:`.openai_chat`, files and batches in :mod:`.openai_batches`, the
HTTP plumbing in :mod:`.http_server`)."""
