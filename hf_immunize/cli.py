"""`hf-immunize <command> [args]`: one entry point for the commands; each command is a module with `main(argv)`."""

from __future__ import annotations

import importlib
import sys

# command -> (module with `main(argv)`, one-line help). Commands join this table as they land.
COMMANDS = {
    "booster": ("hf_immunize.commands.booster", "Booster alignment from a YAML recipe (also scripts/booster.py)"),
    "mlac": ("hf_immunize.commands.mlac", "MLAC self-destructing training from a YAML recipe (also scripts/mlac.py)"),
    "mistake-sft": ("hf_immunize.commands.mistake_sft", "mistake analysis pipeline and SFT (scripts/mistake_sft.py)"),
    "unlearn": ("hf_immunize.commands.unlearn", "WHP unlearning (reinforce, labels, fine-tune) or GA/GradDiff/NPO"),
    "demo": ("hf_immunize.demo", "the short efficacy benchmark on the offline safety world (make demo)"),
    "attack": ("hf_immunize.commands.attack", "fine-tuning attack on saved models; prints a table, writes JSON + PNG"),
    "sweep": (
        "hf_immunize.commands.sweep",
        "worst-case attack over attacker settings; one machine or many sharing an Optuna storage",
    ),
    "evaluate": (
        "hf_immunize.commands.evaluate",
        "measure a saved model as its method's claim is stated; --write_card puts the report on its card",
    ),
    "push": ("hf_immunize.commands.push", "upload a saved model folder (weights, tokenizer, card, plot) to the Hub"),
    "bench": ("hf_immunize.bench.cli", "the efficacy benchmarks: --world safety|bios|book, every arm, 3 seeds"),
}


def _usage() -> str:
    lines = ["usage: hf-immunize <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `hf-immunize <command> --help` for the options of a command."]
    lines += ["A mistake in the arguments or data: one line and exit code 2 (HF_IMMUNIZE_TRACEBACK=1 shows more)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"hf-immunize: unknown command {command!r}; choose from {sorted(COMMANDS)}.\n\n{_usage()}", file=sys.stderr
        )
        return 2
    return run_command(command, rest)


# What a command raises for a user's mistake (a bad value, a missing file, a wrong layout): one message, exit 2.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def run_command(command: str, argv: list[str] | None = None) -> int:
    """Runs `hf-immunize <command>` (also from `scripts/<command>.py`): a user error becomes one line on stderr and
    exit code 2, without a traceback (`HF_IMMUNIZE_TRACEBACK=1` shows it); anything else propagates."""
    import os

    module = importlib.import_module(COMMANDS[command][0])
    try:
        module.main(argv)
    except USER_ERRORS as err:
        if os.environ.get("HF_IMMUNIZE_TRACEBACK"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"hf-immunize {command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
