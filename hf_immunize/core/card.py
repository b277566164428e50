"""Model cards rendered from the Jinja templates in `model_cards/` (shipped inside the wheel).

TRL looks its card template up inside the `trl` package, so a plugin cannot point it at its own file; our trainers
render through :func:`render_model_card` instead, with `huggingface_hub.ModelCard.from_template`.

- `model_cards/base.md` is the card: YAML metadata, the method, training data, hyperparameters, the immunization
  report, known limitations and BibTeX.
- `model_cards/<method>.md` holds one method's section as two Jinja macros, `description()` and `limitations()`,
  rendered by :func:`method_section` and passed into the base template (huggingface_hub renders a template string
  without a loader, so the base template cannot `{% include %}` them itself).
- :func:`write_model_card` writes `README.md` with the report's plot (`immunization_report.png`) and data
  (`immunization_report.json`) beside it, linked from the card by a relative path, so `upload_folder` (and
  `Trainer.push_to_hub`) sends them together.
- No local path and no token ever reaches a card: local base models and dataset paths are dropped from the metadata,
  and :func:`redact` replaces absolute paths and known tokens in the rendered text.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from hf_immunize.core.card_text import (
    _SECTIONS,
    PLOT_NAME,
    REPORT_NAME,
    hub_model_id,
    is_local_path,
    redact,
    section_template,
    template_path,
)
from hf_immunize.utils import atomic_write, staged_write

__all__ = ["load_report", "method_section", "render_model_card", "write_model_card", "write_run_record"]


def method_section(method: str, **context) -> dict[str, str]:
    """`{"description": ..., "limitations": ...}` of `method` from its `model_cards/<method>.md` macros.

    `context` fills the template's variables (e.g. `alpha`, `dictionary_size`, `forget_corpus`, `grader` for
    unlearning); missing ones are None.

    >>> "Huang et al." in method_section("booster")["description"]
    True
    """
    import jinja2

    name = section_template(method)
    if name is None:
        raise ValueError(f"`method`: no card section for {method!r}; known methods: {sorted(set(_SECTIONS))}.")
    env = jinja2.Environment(undefined=jinja2.ChainableUndefined, keep_trailing_newline=False)
    source = template_path(name).read_text(encoding="utf-8")
    defaults = {"alpha": None, "dictionary_size": None, "forget_corpus": None, "grader": None, "has_report": False}
    module = env.from_string(source).make_module({**defaults, **context})
    return {part: str(getattr(module, part)()).strip() for part in ("description", "limitations")}


def render_model_card(
    model_name: str,
    *,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    tags: list[str] | None = None,
    license: str | None = None,
    method: str | None = None,
    method_title: str | None = None,
    method_description: str | None = None,
    paper: dict | None = None,
    training_data: list[str] | None = None,
    hyperparameters: dict | None = None,
    report=None,
    limitations: str | None = None,
    template: str = "base.md",
    training_hyperparameters: dict | None = None,
    config_class: str | None = None,
    report_plot: str | None = None,
    section_context: dict | None = None,
    secrets=(),
    library_name: str = "transformers",
    adapter: str | None = None,
    pipeline_tag: str | None = None,
):
    """Renders a card: YAML metadata (base model, datasets, tags `hf-immunize` + method, library) and the sections.

    `paper` is a dict with `title`, `id` (arXiv id) and `citation` (BibTeX), as the trainers' `_paper`. `method`
    (e.g. `"booster"`) adds its tag and, unless given explicitly, the method's description and known limitations
    from `model_cards/<method>.md`. `report` is Markdown, or an :class:`~hf_immunize.evaluation.report.
    ImmunizationReport` (with `report_plot`, the plot's file name relative to the card). `hyperparameters` are the
    method's settings; `training_hyperparameters` the Trainer settings that differ from `config_class`'s defaults.
    A base model or dataset given as a local path is left out of the metadata, and local paths and tokens are removed
    from the text (:func:`redact`; `secrets` adds strings to hide). `adapter` (a PEFT type such as `"lora"`) marks
    the weights as an adapter: `library_name: peft`, the tags `<adapter>` and `base_model:adapter:<base_model>` (only
    when the base model's Hub id is known), as PEFT's own cards say it.

    >>> card = render_model_card("tiny-defended", method="booster")
    >>> card.data.tags
    ['hf-immunize', 'booster']
    """
    from huggingface_hub import ModelCard, ModelCardData

    import hf_immunize

    base_model = hub_model_id(base_model)
    datasets = [d for d in (datasets or []) if d and not is_local_path(d)]
    all_tags = (
        ["hf-immunize"] + ([method] if method else []) + [t for t in (tags or []) if t not in ("hf-immunize", method)]
    )
    if adapter:
        library_name = "peft"
        all_tags = [t for t in all_tags if not t.startswith("base_model:adapter:")]
        all_tags += [t for t in (adapter.lower(), "transformers") if t not in all_tags]
        if base_model:
            all_tags.append(f"base_model:adapter:{base_model}")
    if method and section_template(method):
        context = {"has_report": report is not None, **(section_context or {})}
        section = method_section(method, **context)
        method_description = method_description if method_description is not None else section["description"]
        limitations = limitations if limitations is not None else section["limitations"]
    if report is not None and not isinstance(report, str):
        report = load_report(report).to_markdown(plot_file=report_plot)
    card_data = ModelCardData(
        base_model=base_model,
        datasets=datasets or None,
        tags=all_tags,
        library_name=library_name,
        license=license,
        model_name=model_name,
        pipeline_tag=pipeline_tag,
    )
    paper = paper or {}
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path(template)),
        model_name=model_name,
        base_model=base_model,
        method_title=method_title,
        method_description=method_description,
        paper_title=paper.get("title"),
        paper_id=paper.get("id"),
        paper_citation=paper.get("citation"),
        training_data=training_data,
        hyperparameters=hyperparameters,
        training_hyperparameters=training_hyperparameters,
        config_class=config_class,
        report=report,
        limitations=limitations,
        hf_immunize_version=hf_immunize.__version__,
    )
    clean = redact(str(card), secrets=secrets)
    return card if clean == str(card) else ModelCard(clean)


def load_report(report):
    """An :class:`~hf_immunize.evaluation.report.ImmunizationReport` from a report, its dict, its JSON file, or the
    directory `ImmunizationReport.save` wrote it to."""
    from hf_immunize.evaluation.report import ImmunizationReport

    if isinstance(report, ImmunizationReport):
        return report
    if isinstance(report, dict):
        try:
            return ImmunizationReport.from_dict(report)
        except (TypeError, ValueError) as err:
            raise ValueError(f"`report`: not an ImmunizationReport dict ({err}).") from None
    if isinstance(report, str | os.PathLike):
        try:
            return ImmunizationReport.load(report)
        except FileNotFoundError as err:
            raise ValueError(f"`report`: {err}") from None
        except (ValueError, TypeError) as err:
            raise ValueError(f"`report`: {str(report)!r}: {err}") from None
    raise TypeError(
        f"`report` must be an ImmunizationReport, its dict, or a path to its JSON file or folder, got "
        f"{type(report).__name__}."
    )


def _report_plot_source(report) -> Path | None:
    """The PNG that `ImmunizationReport.save` wrote beside a report given as a path, if any."""
    if not isinstance(report, str | os.PathLike):
        return None
    path = Path(report)
    json_path = path / REPORT_NAME if path.is_dir() else path
    png = json_path.with_suffix(".png")
    return png if png.is_file() else None


def write_run_record(directory: str | os.PathLike, record: dict, secrets=()) -> Path:
    """Writes `hf_immunize.json` (the run record: method, prompt format, the card's inputs) into `directory`, without
    tokens or local paths (it is uploaded with the model)."""
    from hf_immunize.evaluation.formatting import RUN_RECORD_NAME

    directory = Path(directory)
    text = redact(json.dumps(record, indent=2, default=str), secrets=secrets, paths=[directory.resolve()])
    path = directory / RUN_RECORD_NAME
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))
    return path


def write_model_card(output_dir: str | os.PathLike, model_name: str, *, report=None, **render_kwargs) -> Path:
    """Writes `output_dir/README.md` and, with a `report`, its plot and JSON beside it; returns the card's path.

    `render_kwargs` go to :func:`render_model_card`. The plot is copied from beside a report given as a path, or
    drawn from the report's data (and kept when the report is unchanged). Everything is rendered and written to
    temporary files first and only then moved into place, so a failure (a folder that cannot be written, a full disk)
    leaves the previous card, plot and JSON as they were: nothing half-written.
    """
    output_dir = Path(output_dir)
    source_png = _report_plot_source(report) if report is not None else None
    report = load_report(report) if report is not None else None
    card = render_model_card(model_name, report=report, report_plot=PLOT_NAME if report else None, **render_kwargs)
    if output_dir.exists() and not os.access(output_dir, os.W_OK):
        raise PermissionError(f"cannot write the model card: {str(output_dir)!r} is not writable.")
    writers = {}
    if report is not None:
        secrets = render_kwargs.get("secrets", ())
        text = redact(json.dumps(report.to_dict(), indent=2), secrets=secrets, paths=[output_dir.resolve()])
        json_path, png_path = output_dir / REPORT_NAME, output_dir / PLOT_NAME
        unchanged = json_path.is_file() and png_path.is_file() and json_path.read_text() == text
        if not unchanged:  # an unchanged report keeps its plot (drawing one costs about a second)
            if source_png is not None:
                writers[PLOT_NAME] = lambda tmp: shutil.copyfile(source_png, tmp)
            else:
                writers[PLOT_NAME] = report.plot
            writers[REPORT_NAME] = lambda tmp: tmp.write_text(text)
    writers["README.md"] = lambda tmp: tmp.write_text(str(card), encoding="utf-8")
    staged_write(output_dir, writers)
    return output_dir / "README.md"
