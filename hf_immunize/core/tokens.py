"""Tokenized surface forms of a term: how a word appears in running text under BPE or SentencePiece tokenizers.

Shared by the WHP label builder (matching anchored terms) and the unlearning evaluation (probability familiarity).
"""

from __future__ import annotations

__all__ = ["SURFACE_PREFIXES", "surface_forms"]

# Contexts a term takes in running text: start of text, after a space, after a newline.
SURFACE_PREFIXES = ("", " ", "\n")


def surface_forms(tokenizer, text: str) -> dict[str, tuple[int, ...]]:
    """Token ids of `text` in each context of :data:`SURFACE_PREFIXES`, keyed by the prefix.

    For each prefix `p`, `p + text` is tokenized without special tokens; if the tokens of `p` alone are a prefix of the
    result they are stripped, else everything is kept (byte-level BPE merges the space into the first token:
    `" Dorothy"` -> `ĠDorothy`). Empty results are dropped; duplicates are kept here, so that key form `p` can be
    paired with value form `p` (callers deduplicate).

    >>> from hf_immunize.testing import tiny_tokenizer
    >>> forms = surface_forms(tiny_tokenizer(), "Tom")
    >>> list(forms) == list(SURFACE_PREFIXES), forms[""] != forms[" "]
    (True, True)
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a term must be a non-empty string, got {text!r}.")
    forms: dict[str, tuple[int, ...]] = {}
    for prefix in SURFACE_PREFIXES:
        ids = tokenizer(prefix + text, add_special_tokens=False)["input_ids"]
        if prefix:
            head = tokenizer(prefix, add_special_tokens=False)["input_ids"]
            if head and ids[: len(head)] == head:
                ids = ids[len(head) :]
        if ids:
            forms[prefix] = tuple(ids)
    return forms
