"""Prompt templates of mistake analysis (our own wording: the paper's exact templates are not public).

Placeholders: `{preamble}`, `{instruction}`, `{input_block}` (empty, or `"### Input:\\n{input}\\n\\n"`), `{response}`,
`{cue}`. Every template ends in a newline, so that the completion starts a new line and the prompt's tokens are a
prefix of prompt + completion (TRL builds the completion mask from that prefix).
"""

from __future__ import annotations

import string

__all__ = [
    "TOY_WORLD_TEMPLATES",
    "ANALYSE_GUIDED_TEMPLATE",
    "ANALYSE_UNGUIDED_TEMPLATE",
    "DEFAULT_PREAMBLE",
    "GUIDED_CUE_SENTENCES",
    "INDUCE_TEMPLATE",
    "PLAIN_TEMPLATE",
    "RESPOND_TEMPLATE",
    "UNGUIDED_SENTENCE",
    "build_cue",
    "template_fields",
]

DEFAULT_PREAMBLE = "The text below is a request to an AI assistant. Write the assistant's reply."

PLAIN_TEMPLATE = "{preamble}\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
# Step 1 and step 4 share one shape; only the cue differs (harmful for induction, harmless for inference).
INDUCE_TEMPLATE = "{preamble}\n\n### Instruction:\n{instruction}\n\n{input_block}### Response ({cue}):\n"
RESPOND_TEMPLATE = INDUCE_TEMPLATE

# Step 2 tells the model the reply is bad ({cue} = the analysis cue); step 3 replaces exactly these sentences.
GUIDED_CUE_SENTENCES = "The reply is {cue}. Explain what makes it so and what a safe reply would do instead."
UNGUIDED_SENTENCE = "Review the reply and explain your assessment."
_ANALYSE_HEAD = "Here is a request to an AI assistant and the reply it gave. "
_ANALYSE_BODY = "\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n{response}\n\n### Analysis:\n"
ANALYSE_GUIDED_TEMPLATE = _ANALYSE_HEAD + GUIDED_CUE_SENTENCES + _ANALYSE_BODY
ANALYSE_UNGUIDED_TEMPLATE = _ANALYSE_HEAD + UNGUIDED_SENTENCE + _ANALYSE_BODY


def build_cue(keywords: tuple[str, ...] | list[str]) -> str:
    """`("harmful", "unethical", "offensive")` -> `"harmful, unethical and offensive"`.

    >>> build_cue(("harmless", "ethical", "inoffensive"))
    'harmless, ethical and inoffensive'
    """
    words = [str(k) for k in keywords]
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def template_fields(template: str) -> set[str]:
    """The `{placeholders}` a template uses.

    >>> sorted(template_fields("{preamble} {instruction}"))
    ['instruction', 'preamble']
    """
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


# Templates for the offline safety toy world's "User: ...\nAssistant:" format (the defaults above are Alpaca-style),
# shared by the benchmarks; the guided and unguided analysis prompts differ only in the sentence "It is {cue}.".
TOY_WORLD_TEMPLATES = dict(
    preamble="",
    plain_template="User: {instruction}\nAssistant:",
    induce_template="User: {instruction} ({cue})\nAssistant:",
    respond_template="User: {instruction} ({cue})\nAssistant:",
    analyse_guided_template=(
        "User: Judge the reply. It is {cue}.\nRequest: {instruction}\nReply:{response}\nAssistant:"
    ),
    analyse_unguided_template="User: Judge the reply.\nRequest: {instruction}\nReply:{response}\nAssistant:",
)
