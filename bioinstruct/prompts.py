"""The prompt the tuned models see: Stanford Alpaca's, for training, evaluation and stats.
(The LLM stages' prompt templates are :mod:`bioinstruct.llm.prompts`.)"""

from __future__ import annotations

# Stanford Alpaca's training prompt, which the paper's models were tuned with: the text up
# to the response is masked out of the loss, and evaluation prompts the tuned model with it.
ALPACA_PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.\n\n"
                       "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_PROMPT_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                          "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt up to the response; like Alpaca's train.py, any non-empty input,
    even blank, takes the input template."""
    template = ALPACA_PROMPT_INPUT if input else ALPACA_PROMPT_NO_INPUT
    return template.format(instruction=instruction, input=input)
