"""Jinja templates for hf_immunize model cards (installed as `hf_immunize.model_cards`)."""
