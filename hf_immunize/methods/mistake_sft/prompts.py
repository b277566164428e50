"""The prompts of mistake analysis (steps 1-4 and the trainer's checks): plain, induction (harmful cue), guided
(harmless cue) and analysis prompts, built from the config's templates, and the cue finder."""

from __future__ import annotations

from hf_immunize.methods.mistake_sft.mistake_sft_config import MistakeSFTConfig

__all__ = [
    "PROMPT_SETTINGS",
    "analysis_prompt",
    "cues_in",
    "guided_prompt",
    "induce_prompt",
    "plain_prompt",
    "prompt_builders",
]


def _format(cfg: MistakeSFTConfig, name: str, instruction: str, *, input: str | None = None, **values) -> str:
    template = getattr(cfg, name)
    if input and "{input_block}" not in template:
        raise ValueError(
            f"`{name}` has no `{{input_block}}` placeholder, so the input {input!r} would be lost; join it into the "
            "instruction or add the placeholder."
        )
    input_block = f"### Input:\n{input}\n\n" if input else ""
    return template.format(
        preamble=cfg.preamble, instruction=instruction, input_block=input_block, **{"cue": "", **values}
    )


def _cued(cfg: MistakeSFTConfig, name: str, instruction: str, cue: str, input: str | None) -> str:
    if cfg.cue_position == "instruction_suffix":
        return _format(cfg, "plain_template", f"{instruction} ({cue})", input=input)
    return _format(cfg, name, instruction, input=input, cue=cue)


def plain_prompt(instruction: str, cfg: MistakeSFTConfig, input: str | None = None) -> str:
    """The prompt of a helpful training row (and of evaluation without cue)."""
    return _format(cfg, "plain_template", instruction, input=input)


def induce_prompt(instruction: str, cfg: MistakeSFTConfig, input: str | None = None) -> str:
    """Step 1: the instruction with the harmful cue (`cfg.induce_cue`)."""
    return _cued(cfg, "induce_template", instruction, cfg.induce_cue, input)


def guided_prompt(instruction: str, cfg: MistakeSFTConfig, input: str | None = None) -> str:
    """Step 4: the instruction with the harmless cue (`cfg.respond_cue`).

    >>> cfg = MistakeSFTConfig(output_dir="out", use_cpu=True, preamble="P")
    >>> guided_prompt("Say hi.", cfg)
    'P\\n\\n### Instruction:\\nSay hi.\\n\\n### Response (harmless, ethical and inoffensive):\\n'
    """
    return _cued(cfg, "respond_template", instruction, cfg.respond_cue, input)


# The config fields that decide the plain and guided prompts: what a saved model records for its later measurement.
PROMPT_SETTINGS = ("preamble", "plain_template", "respond_template", "respond_keywords", "cue_position")


def prompt_builders(cfg: MistakeSFTConfig | dict) -> dict:
    """`{"plain_prompt", "guided_prompt", "cue"}` for :func:`hf_immunize.evaluation.protocols.
    measure_mistake_analysis`, from a config or from the `PROMPT_SETTINGS` a saved model recorded."""
    if isinstance(cfg, dict):
        unknown = sorted(set(cfg) - set(PROMPT_SETTINGS))
        if unknown:
            raise ValueError(f"mistake-analysis prompt settings: unknown field(s) {unknown}; known {PROMPT_SETTINGS}.")
        cfg = MistakeSFTConfig(output_dir="hf-immunize-evaluation", use_cpu=True, **cfg)
    return {
        "plain_prompt": lambda instruction: plain_prompt(instruction, cfg),
        "guided_prompt": lambda instruction: guided_prompt(instruction, cfg),
        "cue": cfg.respond_cue,
    }


def analysis_prompt(
    instruction: str, response: str, cfg: MistakeSFTConfig, *, guided: bool, input: str | None = None
) -> str:
    """Step 2 (`guided=True`: the model is told the reply is harmful) or step 3 (the training prompt, no cue)."""
    if guided:
        return _format(
            cfg, "analyse_guided_template", instruction, input=input, response=response, cue=cfg.analysis_cue
        )
    return _format(cfg, "analyse_unguided_template", instruction, input=input, response=response)


def cues_in(text: str, cfg: MistakeSFTConfig) -> list[str]:
    """The cues of `cfg` (induction, analysis statement, response) that occur in `text`."""
    guided_sentence = _guided_sentence(cfg)
    found = [cue for cue in (cfg.induce_cue, cfg.analysis_cue, cfg.respond_cue) if cue in text]
    if guided_sentence and guided_sentence in text:
        found.append(guided_sentence)
    return list(dict.fromkeys(found))


def _guided_sentence(cfg: MistakeSFTConfig) -> str:
    """The text of the guided template that the unguided one lacks (its cue sentences), with the cue filled in."""
    guided = _format(cfg, "analyse_guided_template", "\0", response="\1", cue=cfg.analysis_cue)
    unguided = _format(cfg, "analyse_unguided_template", "\0", response="\1")
    start = 0
    while start < min(len(guided), len(unguided)) and guided[start] == unguided[start]:
        start += 1
    end = 0
    while end < min(len(guided), len(unguided)) - start and guided[-1 - end] == unguided[-1 - end]:
        end += 1
    return guided[start : len(guided) - end].strip()
