"""Offline, deterministic toy worlds small enough for a CPU, rich enough that a tiny model learns them.

Three worlds, one per family of defenses, one module each:

- :func:`make_safety_world` (:mod:`.safety`; Booster, MistakeSFT): benign tasks with checkable answers, benign
  recipes, and harmful requests for invented weapons, each with a harmful answer and a refusal.
- :func:`make_bios_world` (:mod:`.bios`; MLAC): short biographies with a profession label (desired task) and gender
  cues (blocked task), optional pronoun scrubbing as in the MLAC release.
- :func:`make_book_world` (:mod:`.book`; unlearning): a "forget" corpus about an invented fantasy universe, a "retain"
  corpus of ordinary text, an anchored-term dictionary and familiarity prompts.

Every world is a pure function of its arguments: same arguments, same rows.
"""

from __future__ import annotations

from .bios import BIOS_DEFAULT_PROFESSIONS, BiosWorld, make_bios_world
from .book import BOOK_STYLES, BookWorld, make_book_world
from .common import PROMPT_TEMPLATE, format_prompt
from .safety import REFUSALS, SafetyWorld, make_safety_world

__all__ = [
    "BIOS_DEFAULT_PROFESSIONS",
    "BOOK_STYLES",
    "PROMPT_TEMPLATE",
    "REFUSALS",
    "BiosWorld",
    "BookWorld",
    "SafetyWorld",
    "format_prompt",
    "make_bios_world",
    "make_book_world",
    "make_safety_world",
    "toy_corpus",
]


def toy_corpus(seed: int = 0) -> list[str]:
    """Text the tiny tokenizer is trained on: the three worlds at their default sizes, the book world in its legacy
    style (the tokenizer, and every result measured with it, stays as it was when the fair book world was added)."""
    safety = make_safety_world(seed=seed)
    bios = make_bios_world(seed=seed, n=600)
    bios_scrubbed = make_bios_world(seed=seed + 1, n=200, scrub_pronouns=True)
    book = make_book_world(seed=seed, style="legacy")
    texts = list(safety.pretrain["text"])
    texts += [r["prompt"] + r["completion"] for r in safety.alignment]
    texts += list(bios.train["text"]) + list(bios_scrubbed.train["text"])
    texts += list(book.forget["text"]) + list(book.retain["text"])
    for values in book.anchored_terms.values():
        texts.append(", ".join(values) + ".")
    return texts
