"""`hf-immunize bench --world safety|bios|book [options]`: runs one world's benchmark (its module's `main`)."""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["WORLDS", "main"]

# world -> module with `main(argv)`. Each module imports its heavy dependencies when it runs, not when it is named.
WORLDS = {
    "safety": "hf_immunize.bench.safety",
    "bios": "hf_immunize.bench.bios",
    "book": "hf_immunize.bench.book",
}

_HELP = {
    "safety": "Booster (exact, fast k=2/k=4) and mistake analysis vs SFT: fine-tuning attack + sweep",
    "bios": "MLAC vs the few-shot gender attacker (tiny BERT classifiers)",
    "book": "WHP unlearning vs grad ascent / grad diff / NPO: familiarity, retain perplexity, relearning",
}


def main(argv: list[str] | None = None):
    from hf_immunize.utils import set_offline_env

    set_offline_env(override=False)  # before any Hugging Face library is imported
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="hf-immunize bench",
        description="The efficacy benchmarks on the offline toy worlds; each run rewrites its world's tables.",
        epilog="worlds:\n"
        + "\n".join(f"  {name:<8} {text}" for name, text in _HELP.items())
        + "\n\n`hf-immunize bench --world WORLD --help` lists the options of that world.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    parser.add_argument("--world", choices=list(WORLDS), default="safety", help="the toy world (default: safety)")
    parser.add_argument("-h", "--help", action="store_true")
    known, rest = parser.parse_known_args(argv)
    if known.help and "--world" not in argv:
        parser.print_help()
        return None
    if known.help:
        rest.append("--help")
    return importlib.import_module(WORLDS[known.world]).main(rest)
