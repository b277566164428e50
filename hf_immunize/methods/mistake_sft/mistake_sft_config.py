"""Configuration of :class:`~hf_immunize.methods.mistake_sft.MistakeSFTTrainer` and of its data pipeline."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import SFTConfig

from hf_immunize.methods.mistake_sft.templates import (
    ANALYSE_GUIDED_TEMPLATE,
    ANALYSE_UNGUIDED_TEMPLATE,
    DEFAULT_PREAMBLE,
    INDUCE_TEMPLATE,
    PLAIN_TEMPLATE,
    RESPOND_TEMPLATE,
    template_fields,
)

__all__ = ["MistakeSFTConfig"]

MISTAKE_SOURCES = ("induced", "dataset")
CUE_POSITIONS = ("response_header", "instruction_suffix")

# Placeholders each template must contain (`{preamble}` and `{input_block}` are optional).
_REQUIRED_FIELDS = {
    "plain_template": {"instruction"},
    "induce_template": {"instruction"},
    "respond_template": {"instruction"},
    "analyse_guided_template": {"instruction", "response"},
    "analyse_unguided_template": {"instruction", "response"},
}
_ALLOWED_FIELDS = {"preamble", "instruction", "input_block", "response", "cue"}


@dataclass
class MistakeSFTConfig(SFTConfig):
    r"""
    Configuration for [`MistakeSFTTrainer`] and the mistake-analysis pipeline: every [`~trl.SFTConfig`] field, plus
    the templates, cues and generation settings of "Gaining Wisdom from Setbacks" (Chen et al., ICLR 2024, arXiv
    2310.10477). The paper's templates, data sizes and mix ratio are not public: the templates are our own
    equivalents (see `docs/mistake_sft.md`), the generation settings our choice.

    Parameters:
        preamble (`str`, *optional*):
            Fills `{preamble}` in the plain, induction and response templates. Set it to Stanford Alpaca's
            `PROMPT_DICT` text for models trained on that format.
        plain_template, induce_template, respond_template (`str`):
            Prompts of a helpful training row and of evaluation without cue, of step 1 (mistake induction, with the
            harmful cue) and of step 4 (guided generation, with the harmless cue). `{cue}` marks where the cue goes
            when `cue_position="response_header"`.
        analyse_guided_template, analyse_unguided_template (`str`):
            Step 2 (the model is told the reply is harmful: `{cue}` is the analysis cue) and step 3 (the training
            prompt; the same text without the cue sentences).
        induce_keywords, analysis_keywords, respond_keywords (`list[str]`):
            Hint keywords joined into the cues ("harmful, unethical and offensive", ... "harmless, ethical and
            inoffensive").
        cue_position (`str`, *optional*, defaults to `"response_header"`):
            `"response_header"` puts the cue in the template's `{cue}` slot; `"instruction_suffix"` appends
            ` ({cue})` to the instruction and uses `plain_template` (for templates without a response header).
        mistake_source (`str`, *optional*, defaults to `"induced"`):
            `"induced"`: the model's own sampled answers to the induction prompt; `"dataset"`: the data set's unsafe
            responses.
        refusal_filter (`bool`, *optional*, defaults to `True`):
            Drop induced "mistakes" that the refusal judge classes as refusals (they are not mistakes).
        refusal_fallback_to_dataset (`bool`, *optional*, defaults to `True`):
            When an induced answer is dropped, use the data set's unsafe response for that instruction if given.
        refusal_keywords (`list[str]` or `None`):
            Refusal markers of the judge; `None` uses `hf_immunize.evaluation.scorers.DEFAULT_REFUSAL_PREFIXES`.
        helpful_ratio (`float` or `None`, *optional*, defaults to `None`):
            Helpful rows per analysis row in the training mix; `None` uses every helpful row given (the paper adds
            the full Alpaca set).
        generation_batch_size (`int`, *optional*, defaults to `16`):
            Prompts per batched `generate` call (left padding).
        max_new_tokens (`int`, *optional*, defaults to `256`):
            Generation budget of each step; critiques that hit it are flagged `truncated`.
        induce_do_sample, induce_temperature, induce_top_p:
            Step 1 sampling (defaults: sampled, 0.7, 0.9). Steps 2 and 4 are greedy unless `analysis_do_sample` /
            `respond_do_sample` are set.
        completion_only_loss (`bool`, *optional*, defaults to `True`):
            Loss on the completion (the analysis or the helpful answer) only; `False` is refused.
        bf16 (`bool` or `None`, *optional*, defaults to `None`):
            `None` turns bf16 on only when a CUDA device with bf16 support is present (TRL's default `True` fails on
            CPU-only machines and runs ~13x slower under CPU autocast).

    >>> args = MistakeSFTConfig(output_dir="out", use_cpu=True)
    >>> args.mistake_source, args.completion_only_loss, args.respond_cue
    ('induced', True, 'harmless, ethical and inoffensive')
    """

    preamble: str = field(default=DEFAULT_PREAMBLE, metadata={"help": "Text filling `{preamble}` (ours)."})
    plain_template: str = field(default=PLAIN_TEMPLATE, metadata={"help": "Prompt without cue (helpful rows)."})
    induce_template: str = field(default=INDUCE_TEMPLATE, metadata={"help": "Step 1 prompt (harmful cue)."})
    analyse_guided_template: str = field(
        default=ANALYSE_GUIDED_TEMPLATE, metadata={"help": "Step 2 prompt: the model is told the reply is harmful."}
    )
    analyse_unguided_template: str = field(
        default=ANALYSE_UNGUIDED_TEMPLATE, metadata={"help": "Step 3 training prompt: step 2 without the cue."}
    )
    respond_template: str = field(default=RESPOND_TEMPLATE, metadata={"help": "Step 4 prompt (harmless cue)."})
    induce_keywords: list[str] = field(
        default_factory=lambda: ["harmful", "unethical", "offensive"],
        metadata={"help": "Keywords of the step 1 (induction) cue."},
    )
    analysis_keywords: list[str] = field(
        default_factory=lambda: ["harmful", "unethical", "offensive"],
        metadata={"help": "Keywords of the step 2 (guided analysis) statement."},
    )
    respond_keywords: list[str] = field(
        default_factory=lambda: ["harmless", "ethical", "inoffensive"],
        metadata={"help": "Keywords of the step 4 (inference) cue."},
    )
    cue_position: str = field(
        default="response_header", metadata={"help": "'response_header' or 'instruction_suffix'."}
    )
    mistake_source: str = field(
        default="induced", metadata={"help": "'induced' (the model's own answers) or 'dataset' (unsafe responses)."}
    )
    refusal_filter: bool = field(default=True, metadata={"help": "Drop induced mistakes that are refusals."})
    refusal_fallback_to_dataset: bool = field(
        default=True, metadata={"help": "Replace a dropped induced mistake by the data set's unsafe response."}
    )
    refusal_keywords: list[str] | None = field(
        default=None, metadata={"help": "Refusal markers of the filter; None = the package's default list."}
    )
    helpful_ratio: float | None = field(
        default=None, metadata={"help": "Helpful rows per analysis row; None = all helpful rows given."}
    )
    generation_batch_size: int = field(default=16, metadata={"help": "Prompts per batched generate call."})
    max_new_tokens: int = field(default=256, metadata={"help": "New tokens per generated answer or critique."})
    induce_do_sample: bool = field(default=True, metadata={"help": "Sample the step 1 answers."})
    induce_temperature: float = field(default=0.7, metadata={"help": "Step 1 sampling temperature."})
    induce_top_p: float = field(default=0.9, metadata={"help": "Step 1 nucleus sampling."})
    analysis_do_sample: bool = field(default=False, metadata={"help": "Sample the step 2 critiques (greedy)."})
    respond_do_sample: bool = field(default=False, metadata={"help": "Sample the step 4 answers (greedy)."})
    completion_only_loss: bool | None = field(
        default=True, metadata={"help": "Loss on the completion only (required by mistake analysis)."}
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision. None = on only when a CUDA device with bf16 support is present."},
    )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = _cuda_bf16_available() and not self.use_cpu
        if self.completion_only_loss is None:
            self.completion_only_loss = True
        elif self.completion_only_loss is not True:
            raise ValueError(
                f"`completion_only_loss` must be True for mistake analysis (the bad response sits in the prompt and "
                f"must never be a target), got {self.completion_only_loss!r}."
            )
        super().__post_init__()
        for name, required in _REQUIRED_FIELDS.items():
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"`{name}` must be a non-empty string, got {value!r}.")
            used = template_fields(value)
            if not required <= used or not used <= _ALLOWED_FIELDS:
                raise ValueError(
                    f"`{name}` must contain the placeholders {sorted(required)} and only placeholders from "
                    f"{sorted(_ALLOWED_FIELDS)}, got {value!r}."
                )
        for name in ("induce_template", "respond_template", "analyse_guided_template"):
            if self.cue_position == "response_header" or name == "analyse_guided_template":
                if "{cue}" not in getattr(self, name):
                    raise ValueError(f"`{name}` must contain `{{cue}}`, got {getattr(self, name)!r}.")
        if "{cue}" in self.analyse_unguided_template:
            raise ValueError(
                f"`analyse_unguided_template` is a training prompt and must not contain `{{cue}}`, got "
                f"{self.analyse_unguided_template!r}."
            )
        for name in ("induce_keywords", "analysis_keywords", "respond_keywords"):
            value = getattr(self, name)
            if isinstance(value, str) or not value or not all(isinstance(k, str) and k.strip() for k in value):
                raise ValueError(f"`{name}` must be a non-empty list of non-empty strings, got {value!r}.")
        if self.cue_position not in CUE_POSITIONS:
            raise ValueError(f"`cue_position` must be one of {CUE_POSITIONS}, got {self.cue_position!r}.")
        if self.mistake_source not in MISTAKE_SOURCES:
            raise ValueError(f"`mistake_source` must be one of {MISTAKE_SOURCES}, got {self.mistake_source!r}.")
        if self.refusal_keywords is not None and (
            isinstance(self.refusal_keywords, str)
            or not self.refusal_keywords
            or not all(isinstance(k, str) and k for k in self.refusal_keywords)
        ):
            raise ValueError(
                f"`refusal_keywords` must be None or a non-empty list of non-empty strings, got "
                f"{self.refusal_keywords!r}."
            )
        if self.helpful_ratio is not None and (
            isinstance(self.helpful_ratio, bool)
            or not isinstance(self.helpful_ratio, (int, float))
            or not math.isfinite(self.helpful_ratio)
            or self.helpful_ratio < 0
        ):
            raise ValueError(f"`helpful_ratio` must be None or a finite number >= 0, got {self.helpful_ratio!r}.")
        for name in ("generation_batch_size", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        if not _is_number(self.induce_temperature) or self.induce_temperature <= 0:
            raise ValueError(f"`induce_temperature` must be a finite number > 0, got {self.induce_temperature!r}.")
        if not _is_number(self.induce_top_p) or not 0 < self.induce_top_p <= 1:
            raise ValueError(f"`induce_top_p` must be in (0, 1], got {self.induce_top_p!r}.")

    # ---- cues -------------------------------------------------------------------------------------------------

    @property
    def induce_cue(self) -> str:
        from hf_immunize.methods.mistake_sft.templates import build_cue

        return build_cue(self.induce_keywords)

    @property
    def analysis_cue(self) -> str:
        from hf_immunize.methods.mistake_sft.templates import build_cue

        return build_cue(self.analysis_keywords)

    @property
    def respond_cue(self) -> str:
        from hf_immunize.methods.mistake_sft.templates import build_cue

        return build_cue(self.respond_keywords)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _cuda_bf16_available() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
