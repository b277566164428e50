"""Anchored terms of WHP: the user's dictionary (term -> generic substitutes), its token index, block translation.

Reference: `../shared/reference/whp_unlearning.md` §3 and §5 (Eldan & Russinovich, arXiv 2310.02238).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from hf_immunize.core.tokens import surface_forms

__all__ = ["AnchorIndex", "TranslatedBlock", "load_anchored_terms", "merge_anchored_terms", "translate_block"]


def merge_anchored_terms(raw: dict) -> dict[str, list[str]]:
    """Applies the reference merge rules to `{term: substitute | [substitutes]}`.

    Keys and values are stripped; values are deduplicated in order; a multi-word key whose words are all keys
    themselves is dropped, and so is `"X's"` when `"X"` is a key.

    >>> merge_anchored_terms({"Harry": "Jon", "Potter": ["Smith"], "Harry Potter": "Jon Smith", "Harry's": "Jon's"})
    {'Harry': ['Jon'], 'Potter': ['Smith']}
    """
    if not isinstance(raw, dict):
        raise TypeError(f"anchored terms must be a dict of term -> substitute(s), got {type(raw).__name__}.")
    merged: dict[str, list[str]] = {}
    for key, values in raw.items():
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"anchored-term keys must be non-empty strings, got {key!r}.")
        values = [values] if isinstance(values, str) else values
        if not isinstance(values, list | tuple) or not values or not all(isinstance(v, str) for v in values):
            raise ValueError(
                f"anchored term {key!r}: the substitutes must be a string or a non-empty list of strings, got "
                f"{values!r}."
            )
        cleaned = [v.strip() for v in values if v.strip()]
        if not cleaned:
            raise ValueError(f"anchored term {key!r} has only empty substitutes: {values!r}.")
        bucket = merged.setdefault(key.strip(), [])
        for value in cleaned:
            if value not in bucket:
                bucket.append(value)
    keys = set(merged)
    out = {}
    for key, values in merged.items():
        words = key.split()
        if len(words) > 1 and all(w in keys for w in words):
            continue
        if key.endswith("'s") and key[:-2] in keys:
            continue
        out[key] = values
    return out


def load_anchored_terms(source: str | os.PathLike | dict) -> dict[str, list[str]]:
    """Reads a JSON dictionary `{term: substitute | [substitutes]}` (a path, a JSON string, or a dict) and merges it.

    >>> load_anchored_terms('{"Dorothy": ["Mary", "Anne"]}')
    {'Dorothy': ['Mary', 'Anne']}
    """
    if isinstance(source, dict):
        return merge_anchored_terms(source)
    text, where = str(source), "the `anchored_terms` string"
    if os.path.isfile(text):
        where = repr(text)
        with open(text, encoding="utf-8") as f:
            text = f.read()
    elif not text.lstrip().startswith("{"):
        raise FileNotFoundError(f"anchored terms: {text!r} is neither an existing JSON file nor a JSON object.")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"anchored terms in {where} are not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
            'expected an object such as {"Dorothy": ["Mary", "Anne"]}.'
        ) from None
    if not isinstance(raw, dict):
        raise ValueError(f"anchored terms in {where} must be a JSON object of term -> substitute(s), got {raw!r:.80}.")
    return merge_anchored_terms(raw)


class AnchorIndex:
    """The dictionary in token space: every surface form of every key, paired with the same form of each value.

    Lookup is by first token; among keys matching at a position the longest wins (the reference takes the first in
    dictionary order; the two agree unless one key's tokens prefix another's).
    """

    def __init__(self, tokenizer, anchored_terms: dict[str, list[str]]):
        self.keys = list(anchored_terms)
        self.values: list[list[dict[str, tuple[int, ...]]]] = []  # [key][value] -> prefix -> tokens
        self._by_first: dict[int, list[tuple[tuple[int, ...], int, str]]] = {}
        seen: set[tuple[int, ...]] = set()
        for kid, key in enumerate(self.keys):
            value_forms = [surface_forms(tokenizer, v) for v in anchored_terms[key]]
            self.values.append(value_forms)
            for prefix, tokens in surface_forms(tokenizer, key).items():
                if tokens in seen:
                    continue
                seen.add(tokens)
                self._by_first.setdefault(tokens[0], []).append((tokens, kid, prefix))
        for entries in self._by_first.values():
            entries.sort(key=lambda e: -len(e[0]))  # longest first

    def __len__(self) -> int:
        return len(self.keys)

    def match(self, ids, i: int) -> tuple[int, int, str] | None:
        """`(key id, key length in tokens, surface prefix)` of the longest key starting at `ids[i]`, else None."""
        for tokens, kid, prefix in self._by_first.get(int(ids[i]), ()):
            k = len(tokens)
            if i + k <= len(ids) and tuple(int(x) for x in ids[i : i + k]) == tokens:
                return kid, k, prefix
        return None

    def value_tokens(self, kid: int, vid: int, prefix: str) -> tuple[int, ...]:
        """Value `vid` of key `kid` in the same surface form as the matched key (a space-led key gets a space-led
        value), falling back to the bare form."""
        forms = self.values[kid][vid]
        return forms.get(prefix) or forms[""]

    def first_tokens(self, kid: int, vid: int) -> list[int]:
        """First token of every surface form of a value: what may not be predicted after it was inserted."""
        return sorted({tokens[0] for tokens in self.values[kid][vid].values()})


@dataclass
class TranslatedBlock:
    """One block and its translation.

    Attributes:
        original: o, the T original token ids.
        translated: t, with every anchored term replaced by its block's substitute.
        mapping: original index -> translated index whose prediction it inherits; -1 = no loss there.
        inserted: `(j, first tokens)` for every inserted substitute starting at translated index j; those tokens are
            forbidden at translated positions > j.
        choices: key -> chosen substitute index, for the keys that occur in the block.
        spans: `(i, k, j, m, repeated)` per replaced term: key at original `i` (k tokens), value at translated `j`
            (m tokens), and whether the key occurred earlier in the block.
    """

    original: list[int]
    translated: list[int]
    mapping: list[int]
    inserted: list[tuple[int, list[int]]] = field(default_factory=list)
    choices: dict[str, int] = field(default_factory=dict)
    spans: list[tuple[int, int, int, int, bool]] = field(default_factory=list)


def translate_block(original, index: AnchorIndex | None, rng: np.random.Generator) -> TranslatedBlock:
    """Walks the block with separate cursors i (original) and j (translated); see the reference, §5.

    One substitute is drawn per key per block, at the key's first occurrence, so all occurrences agree.
    """
    o = [int(x) for x in original]
    t: list[int] = []
    mapping = [-1] * len(o)
    inserted: list[tuple[int, list[int]]] = []
    spans: list[tuple[int, int, int, int, bool]] = []
    choices: dict[int, int] = {}
    i = 0
    while i < len(o):
        hit = index.match(o, i) if index is not None and len(index) else None
        if hit is None:
            mapping[i] = len(t)
            t.append(o[i])
            i += 1
            continue
        kid, k, prefix = hit
        repeated = kid in choices
        if repeated:
            if i > 0:  # the token before a repeated anchor would be taught to predict the anchor itself
                mapping[i - 1] = -1
        else:
            choices[kid] = int(rng.integers(len(index.values[kid])))
        vid = choices[kid]
        value = index.value_tokens(kid, vid, prefix)
        j, m = len(t), len(value)
        # Intermediate key tokens (mapping[i .. i+k-2]) stay -1: B's prediction there continues the value.
        mapping[i + k - 1] = j + m - 1  # last key token <-> last value token: both predict what follows the term
        t.extend(value)
        inserted.append((j, index.first_tokens(kid, vid)))
        spans.append((i, k, j, m, repeated))
        i += k
    choices_by_key = {index.keys[kid]: v for kid, v in choices.items()}
    return TranslatedBlock(o, t, mapping, inserted, choices_by_key, spans)
