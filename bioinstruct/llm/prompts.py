"""Prompt templates: a YAML file with a ``system`` and a ``user`` message and ``{name}``
placeholders. Users point a stage's ``prompt_template`` key at their own copy; the file's
hash is recorded with every request, so results say which prompt made them."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from ..errors import ConfigError
from ..io.rows import read_yaml
from ..paths import DATA

PROMPTS = DATA / "prompts"


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    system: str
    user: str
    sha256: str

    @classmethod
    def load(cls, path: str | Path | None, default: str, placeholders: tuple[str, ...]) -> "PromptTemplate":
        """The template at ``path`` (None: the package's ``default``), checked to hold
        every placeholder the stage fills in."""
        path = Path(path) if path else PROMPTS / default
        if not path.exists():
            raise ConfigError(f"prompt_template: {path} not found")
        data = read_yaml(path)
        if not isinstance(data, dict) or not isinstance(data.get("user"), str):
            raise ConfigError(f"{path}: a prompt template needs a 'user' message (and may have 'system')")
        for name in placeholders:
            if "{" + name + "}" not in data["user"]:
                raise ConfigError(f"{path}: the 'user' message must contain the placeholder {{{name}}}")
        return cls(data.get("system") or "", data["user"], hashlib.sha256(path.read_bytes()).hexdigest()[:16])

    def messages(self, **values: str) -> list[dict[str, str]]:
        # str.replace, not str.format: prompts quote JSON and code with braces of their own.
        user = self.user
        for name, value in values.items():
            user = user.replace("{" + name + "}", value)
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + [{"role": "user", "content": user}]
