"""Model cards: rendering (:mod:`hf_immunize.core.card`) and what a card may show (:mod:`hf_immunize.core.card_text`),
both importable from here as before."""

from hf_immunize.core.card import load_report, method_section, render_model_card, write_model_card, write_run_record
from hf_immunize.core.card_text import (
    PLOT_NAME,
    REPORT_NAME,
    canonical_method,
    hub_model_id,
    is_local_path,
    redact,
    section_template,
    template_path,
)

__all__ = [
    "PLOT_NAME",
    "REPORT_NAME",
    "canonical_method",
    "hub_model_id",
    "is_local_path",
    "load_report",
    "method_section",
    "redact",
    "render_model_card",
    "section_template",
    "template_path",
    "write_model_card",
    "write_run_record",
]
