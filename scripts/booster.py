"""Booster alignment; runs as `python scripts/booster.py --config recipes/booster_tiny.yaml` or under
`accelerate launch`. Same as `hf-immunize booster`: see hf_immunize/commands/booster.py."""

import sys

from hf_immunize.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("booster"))  # a user error: one line, exit code 2
