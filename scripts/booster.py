"""Booster alignment; runs as `python scripts/booster.py --config recipes/booster_tiny.yaml` or under
`accelerate launch`. Same as `hf-immunize booster`: see hf_immunize/commands/booster.py."""

from hf_immunize.commands.booster import main

if __name__ == "__main__":
    main()
