"""Model cards rendered from the Jinja templates in `model_cards/` (shipped inside the wheel).

TRL looks its card template up inside the `trl` package, so a plugin cannot point it at its own file; our trainers
render through :func:`render_model_card` instead, with `huggingface_hub.ModelCard.from_template`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["render_model_card", "template_path"]


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
    report: str | None = None,
    limitations: str | None = None,
    template: str = "base.md",
):
    """Renders a card: YAML metadata (base model, datasets, tags `hf-immunize` + method, library) and the sections.

    `paper` is a dict with `title`, `id` (arXiv id) and `citation` (BibTeX), as the trainers' `_paper`.

    >>> card = render_model_card("tiny-defended", method="booster")
    >>> card.data.tags
    ['hf-immunize', 'booster']
    """
    from huggingface_hub import ModelCard, ModelCardData

    all_tags = (
        ["hf-immunize"] + ([method] if method else []) + [t for t in (tags or []) if t not in ("hf-immunize", method)]
    )
    card_data = ModelCardData(
        base_model=base_model,
        datasets=datasets or None,
        tags=all_tags,
        library_name="transformers",
        license=license,
        model_name=model_name,
    )
    paper = paper or {}
    return ModelCard.from_template(
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
        report=report,
        limitations=limitations,
    )
