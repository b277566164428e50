"""The evaluation data of each measurement protocol, with a `toy()` constructor for the offline toy worlds.

Users pass their own sets in any layout of :mod:`hf_immunize.data` (the harness reads them by their columns).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datasets import Dataset

from .scorers import Scorer

__all__ = ["BlockedTaskData", "SafetyEvalData", "UnlearningEvalData"]


@dataclass
class SafetyEvalData:
    """What a harmful fine-tuning attack needs: the attacker's pools and the held-out evaluation sets.

    Any layout of :mod:`hf_immunize.data` plugs in: `attack_harmful` as prompt/completion or refusal triples (its
    harmful answers) or BeaverTails (unsafe rows); `attack_benign` as prompt/completion; `eval_harmful` as a harmful
    prompt list; `eval_task` with `answer`, `final_answer` (GSM8K) or a label task's `label` + `completion`.
    `names` labels the sets on the card (e.g. `{"eval_harmful": "walledai/AdvBench"}`).
    """

    attack_harmful: Dataset
    attack_benign: Dataset
    eval_harmful: Dataset
    eval_task: Dataset | None = None
    over_refusal_prompts: list[str] | Dataset | None = None
    task_scorer: Scorer | None = None
    names: dict = field(default_factory=dict)

    @classmethod
    def toy(cls, seed: int = 0, **world_kwargs) -> SafetyEvalData:
        """The offline safety world's attack pools and held-out sets (weapons never seen in alignment)."""
        from hf_immunize.data.toy import PROMPT_TEMPLATE, make_safety_world

        w = make_safety_world(seed=seed, **world_kwargs)
        head, tail = PROMPT_TEMPLATE.split("{instruction}")

        def with_instruction(ds):  # the bare request, for methods that wrap it in their own template
            return ds.map(lambda r: {"instruction": r["prompt"].removeprefix(head).removesuffix(tail)})

        return cls(
            with_instruction(w.attack_harmful),
            with_instruction(w.attack_benign),
            with_instruction(w.eval_harmful),
            with_instruction(w.eval_benign),
            over_refusal_prompts=with_instruction(w.eval_dishes),
            names={"eval_harmful": "toy safety world, held-out weapons", "eval_task": "toy safety world tasks"},
        )


@dataclass
class BlockedTaskData:
    """MLAC's measurement: the blocked task's attacker pool and evaluation set, and the desired task's test set.

    Rows have `text` and an integer `label`; `num_labels` is the blocked task's class count.
    """

    blocked_pool: Dataset
    blocked_eval: Dataset
    desired_eval: Dataset | None = None
    num_labels: int = 2
    names: dict = field(default_factory=dict)

    @classmethod
    def toy(cls, seed: int = 0, **world_kwargs) -> BlockedTaskData:
        """The bios world: gender (blocked) from val1 / val2, profession (desired) on test, as the MLAC release."""
        from hf_immunize.data.toy import BiosWorld, make_bios_world

        w = make_bios_world(seed=seed, **{"scrub_pronouns": True, **world_kwargs})
        return cls(
            BiosWorld.with_label(w.val1, "gender"),
            BiosWorld.with_label(w.val2, "gender"),
            BiosWorld.with_label(w.test, "profession"),
            num_labels=2,
            names={"blocked_task": "gender", "desired_task": "profession"},
        )


@dataclass
class UnlearningEvalData:
    """The unlearning measurement: completion prompts with their expected terms, the anchored terms and theme terms
    of the keyword grader, held-out forget and retain texts for perplexity, and the passages a relearning attacker
    fine-tunes on."""

    prompts: list[str]
    targets: list
    anchored_terms: list[str]
    theme_terms: list[str] = field(default_factory=list)
    forget_texts: list[str] | None = None
    retain_texts: list[str] | None = None
    relearn_texts: list[str] | None = None
    names: dict = field(default_factory=dict)

    @classmethod
    def toy(cls, seed: int = 0, **world_kwargs) -> UnlearningEvalData:
        """The book world: its familiarity prompts and dictionary, held-out forget passages, the last retain
        passages, and forget passages as the relearning attacker's data."""
        from hf_immunize.data.toy import make_book_world

        w = make_book_world(seed=seed, **world_kwargs)
        n_retain = len(w.retain)
        return cls(
            list(w.familiarity_prompts["prompt"]),
            list(w.familiarity_prompts["targets"]),
            list(w.anchored_terms),
            list(w.theme_terms),
            forget_texts=list(w.forget_heldout["text"]),
            retain_texts=list(w.retain.select(range(max(0, n_retain - 16), n_retain))["text"]),
            relearn_texts=list(w.forget["text"]),
            names={"corpus": "toy book world"},
        )
