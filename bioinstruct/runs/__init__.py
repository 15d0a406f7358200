"""Run directories and what every stage shares: configs (dataclasses, YAML, overrides), the
run-directory contract (manifests, resume, force), input identities, the environment a
run records, progress lines."""
