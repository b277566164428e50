"""Unlearning (WHP pipeline or a baseline loss); runs as `python scripts/unlearn.py --config recipes/unlearn_tiny.yaml`
or under `accelerate launch`. Same as `hf-immunize unlearn`: see hf_immunize/commands/unlearn.py."""

import sys

from hf_immunize.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("unlearn"))  # a user error: one line, exit code 2
