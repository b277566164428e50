"""Mistake analysis (MistakeSFT); runs as `python scripts/mistake_sft.py --config recipes/mistake_sft_tiny.yaml` or
under `accelerate launch`. Same as `hf-immunize mistake-sft`: see hf_immunize/commands/mistake_sft.py."""

from hf_immunize.commands.mistake_sft import main

if __name__ == "__main__":
    main()
