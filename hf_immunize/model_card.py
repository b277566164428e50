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
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path

__all__ = [
    "PLOT_NAME",
    "REPORT_NAME",
    "is_local_path",
    "load_report",
    "method_section",
    "redact",
    "render_model_card",
    "template_path",
    "write_model_card",
]

PLOT_NAME = "immunization_report.png"
REPORT_NAME = "immunization_report.json"

# Method keys (a trainer's tag or name, lower case) -> section template.
_SECTIONS = {
    "booster": "booster.md",
    "mlac": "mlac.md",
    "self-destructing-models": "mlac.md",
    "unlearn": "unlearn.md",
    "unlearning": "unlearn.md",
    "whp": "unlearn.md",
    "who-is-harry-potter": "unlearn.md",
    "mistake-analysis": "mistake_sft.md",
    "mistake-sft": "mistake_sft.md",
    "mistake_sft": "mistake_sft.md",
    "mistakesft": "mistake_sft.md",
}
_TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "HF_API_TOKEN")
_REDACTED_PATH = "(local path)"
_REDACTED_SECRET = "(redacted)"
# An absolute POSIX path of two or more parts, `~/...`, or a Windows drive path; not the path part of a URL (the
# look-behind rejects `host/...` and `://`) nor a fraction such as `g/‖g‖`.
_PATH_RE = re.compile(
    r"(?<![\w.:/~\-])(?:~/|/)(?:[^\s/`'\"()\[\]{}<>|,;]+/)+[^\s/`'\"()\[\]{}<>|,;]*"
    r"|(?<![\w])[A-Za-z]:\\[^\s`'\"()\[\]{}<>|,;]*"
)


def template_path(name: str = "base.md") -> Path:
    """Path of a card template inside the installed package (works from a wheel as well as from the repo).

    >>> template_path().name
    'base.md'
    """
    path = Path(str(resources.files("hf_immunize.model_cards").joinpath(name)))
    if not path.is_file():
        available = sorted(p.name for p in path.parent.iterdir() if p.suffix == ".md")
        raise ValueError(f"model card template {name!r} not found; available templates: {available}.")
    return path


def section_template(method: str | None) -> str | None:
    """File name of the section template of `method` (a tag such as `"booster"` or a trainer name), or None."""
    if not method:
        return None
    return _SECTIONS.get(method.strip().lower().replace(" ", "-"))


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
    defaults = {"alpha": None, "dictionary_size": None, "forget_corpus": None, "grader": None}
    module = env.from_string(source).make_module({**defaults, **context})
    return {part: str(getattr(module, part)()).strip() for part in ("description", "limitations")}


def _known_secrets(extra=()) -> list[str]:
    secrets = [os.environ.get(name) for name in _TOKEN_ENV_VARS]
    try:
        from huggingface_hub import get_token

        secrets.append(get_token())
    except Exception:  # no token file, or an unreadable one: nothing to hide
        pass
    secrets.extend(extra)
    # Very short strings would redact ordinary words; real tokens are long.
    return sorted({s for s in secrets if isinstance(s, str) and len(s) >= 8}, key=len, reverse=True)


def redact(text: str, secrets=(), paths=()) -> str:
    """`text` without tokens (the `HF_TOKEN`-style variables, the stored Hub token, `secrets`) and without local
    paths (`paths`, the home and working directories, and anything shaped like an absolute path).

    >>> redact("saved to /home/me/run/model and https://arxiv.org/abs/2409.01586")
    'saved to (local path) and https://arxiv.org/abs/2409.01586'
    """
    for secret in _known_secrets(secrets):
        text = text.replace(secret, _REDACTED_SECRET)
    known = {str(p) for p in paths if p} | {str(Path.home()), os.getcwd()}
    for path in sorted((p for p in known if len(p) > 1), key=len, reverse=True):
        text = re.sub(re.escape(path) + r"[^\s`'\"()\[\]{}<>|,;]*", _REDACTED_PATH, text)
    return _PATH_RE.sub(_REDACTED_PATH, text)


def is_local_path(name: str) -> bool:
    """Whether `name` (a model or dataset name) points at the local file system rather than the Hub."""
    return os.path.isabs(name) or name.startswith(("~", ".")) or os.path.exists(name) or "\\" in name


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
):
    """Renders a card: YAML metadata (base model, datasets, tags `hf-immunize` + method, library) and the sections.

    `paper` is a dict with `title`, `id` (arXiv id) and `citation` (BibTeX), as the trainers' `_paper`. `method`
    (e.g. `"booster"`) adds its tag and, unless given explicitly, the method's description and known limitations
    from `model_cards/<method>.md`. `report` is Markdown, or an :class:`~hf_immunize.evaluation.report.
    ImmunizationReport` (with `report_plot`, the plot's file name relative to the card). `hyperparameters` are the
    method's settings; `training_hyperparameters` the Trainer settings that differ from `config_class`'s defaults.
    A base model or dataset given as a local path is left out of the metadata, and local paths and tokens are removed
    from the text (:func:`redact`; `secrets` adds strings to hide).

    >>> card = render_model_card("tiny-defended", method="booster")
    >>> card.data.tags
    ['hf-immunize', 'booster']
    """
    from huggingface_hub import ModelCard, ModelCardData

    import hf_immunize

    if base_model is not None and is_local_path(base_model):
        base_model = None
    datasets = [d for d in (datasets or []) if d and not is_local_path(d)]
    all_tags = (
        ["hf-immunize"] + ([method] if method else []) + [t for t in (tags or []) if t not in ("hf-immunize", method)]
    )
    if method and section_template(method):
        section = method_section(method, **(section_context or {}))
        method_description = method_description if method_description is not None else section["description"]
        limitations = limitations if limitations is not None else section["limitations"]
    if report is not None and not isinstance(report, str):
        report = load_report(report).to_markdown(plot_file=report_plot)
    card_data = ModelCardData(
        base_model=base_model,
        datasets=datasets or None,
        tags=all_tags,
        library_name="transformers",
        license=license,
        model_name=model_name,
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
        data = {k: v for k, v in report.items() if k != "summary"}
        try:
            return ImmunizationReport(**data)
        except TypeError as err:
            raise ValueError(f"`report`: not an ImmunizationReport dict ({err}); keys: {sorted(report)}.") from None
    if isinstance(report, str | os.PathLike):
        path = Path(report)
        if path.is_dir():
            path = path / REPORT_NAME
        if not path.is_file():
            raise ValueError(
                f"`report`: no immunization report at {str(report)!r} (expected a JSON file or a folder "
                f"holding {REPORT_NAME})."
            )
        try:
            return ImmunizationReport.load(path)
        except (json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"`report`: {str(path)!r} is not an immunization report JSON ({err}).") from None
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


def _atomic_write(path: Path, write) -> None:
    """Calls `write(tmp_path)` and moves the result onto `path`: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)  # keeps the format
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_model_card(output_dir: str | os.PathLike, model_name: str, *, report=None, **render_kwargs) -> Path:
    """Writes `output_dir/README.md` and, with a `report`, its plot and JSON beside it; returns the card's path.

    `render_kwargs` go to :func:`render_model_card`. The plot is copied from beside a report given as a path, or
    drawn from the report's data, and redrawn only when the report changed. Every file is written atomically.
    """
    output_dir = Path(output_dir)
    if report is not None:
        source_png = _report_plot_source(report)
        report = load_report(report)
        secrets = render_kwargs.get("secrets", ())
        text = redact(json.dumps(report.to_dict(), indent=2), secrets=secrets, paths=[output_dir.resolve()])
        json_path, png_path = output_dir / REPORT_NAME, output_dir / PLOT_NAME
        unchanged = json_path.is_file() and png_path.is_file() and json_path.read_text() == text
        if not unchanged:
            if source_png is not None:
                _atomic_write(png_path, lambda tmp: shutil.copyfile(source_png, tmp))
            else:
                _atomic_write(png_path, report.plot)
            _atomic_write(json_path, lambda tmp: tmp.write_text(text))
    card = render_model_card(model_name, report=report, report_plot=PLOT_NAME if report else None, **render_kwargs)
    card_path = output_dir / "README.md"
    _atomic_write(card_path, lambda tmp: tmp.write_text(str(card), encoding="utf-8"))
    return card_path
