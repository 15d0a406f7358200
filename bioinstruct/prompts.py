"""The prompt the tuned models see, in one of two formats (``prompt.format``):

  alpaca  Stanford Alpaca's prompt, which the paper's models were tuned with (the default; for
          base models, and what stats measures);
  chat    the tokenizer's own chat template (what an instruct model such as SmolLM2-Instruct
          expects): one user turn, the instruction and its input separated by a blank line,
          and the answer as the assistant's turn, ended as the template ends it.

In both, training masks the prompt out of the loss, and evaluation prompts the tuned model the
way it was trained: the adapter folder records its format (prompt.json).
(The LLM stages' prompt templates are :mod:`bioinstruct.llm.prompts`.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from .errors import ConfigError
from .io.rows import atomic_write_json, read_json

# Stanford Alpaca's training prompt, which the paper's models were tuned with: the text up
# to the response is masked out of the loss, and evaluation prompts the tuned model with it.
ALPACA_PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.\n\n"
                       "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_PROMPT_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                          "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
# Beside an adapter: the format it was trained with. An adapter without one predates the chat
# format, so was trained with alpaca.
PROMPT_FILE = "prompt.json"


@dataclasses.dataclass
class PromptConfig:
    format: Literal["alpaca", "chat"] = "alpaca"


@dataclasses.dataclass
class EvalPromptConfig:
    # auto: the format the adapter was trained with (its prompt.json); alpaca without an adapter.
    format: Literal["auto", "alpaca", "chat"] = "auto"


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt up to the response; like Alpaca's train.py, any non-empty input,
    even blank, takes the input template."""
    template = ALPACA_PROMPT_INPUT if input else ALPACA_PROMPT_NO_INPUT
    return template.format(instruction=instruction, input=input)


def _user_turn(instruction: str, input: str) -> dict:
    return {"role": "user", "content": f"{instruction}\n\n{input}" if input else instruction}


def chat_prompt(tokenizer, instruction: str, input: str = "") -> str:
    """The chat template applied to the user's turn, up to where the assistant's answer begins."""
    if not tokenizer.chat_template:
        raise ConfigError(f"prompt.format: chat, but the tokenizer of {tokenizer.name_or_path} has no chat template; "
                          f"use prompt.format=alpaca")
    return tokenizer.apply_chat_template([_user_turn(instruction, input)], tokenize=False, add_generation_prompt=True)


def chat_response(tokenizer, instruction: str, input: str, output: str) -> str:
    """What follows chat_prompt when the template renders the whole conversation: the answer and
    the template's end of the assistant's turn (its EOS, <|im_end|> in ChatML)."""
    prompt = chat_prompt(tokenizer, instruction, input)
    whole = tokenizer.apply_chat_template([_user_turn(instruction, input), {"role": "assistant", "content": output}],
                                          tokenize=False)
    if not whole.startswith(prompt):
        raise ConfigError(f"prompt.format: chat, but the chat template of {tokenizer.name_or_path} does not render a "
                          f"conversation as its prompt followed by the answer; use prompt.format=alpaca")
    return whole[len(prompt):]


def prompt_text(fmt: str, tokenizer, instruction: str, input: str = "") -> str:
    """The prompt a model answers, in format ``fmt``."""
    return chat_prompt(tokenizer, instruction, input) if fmt == "chat" else alpaca_prompt(instruction, input)


def record_format(adapter: str | Path, fmt: str) -> None:
    atomic_write_json(Path(adapter) / PROMPT_FILE, {"format": fmt})


def trained_format(adapter: str | Path) -> str:
    path = Path(adapter) / PROMPT_FILE
    return read_json(path)["format"] if path.exists() else "alpaca"


def resolve_format(requested: str, adapter: str | None) -> str:
    """The format to prompt with: the adapter's own unless one is asked for; a different one
    is refused, naming both."""
    trained = trained_format(adapter) if adapter else None
    if requested == "auto":
        return trained or "alpaca"
    if trained and trained != requested:
        raise ConfigError(f"prompt.format: {requested}, but the adapter {adapter} was trained with "
                          f"prompt.format={trained} (its {PROMPT_FILE}); leave prompt.format at auto")
    return requested
