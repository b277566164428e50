"""MLAC's efficacy on the bios toy world; the same as `hf-immunize bench --world bios` (see
hf_immunize/benchmark_bios.py for the protocol and options). Run from the repository root."""

from hf_immunize.benchmark_bios import main

if __name__ == "__main__":
    main()
