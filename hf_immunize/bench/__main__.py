"""`python -m hf_immunize.bench` is `hf-immunize bench`."""

from hf_immunize.bench.cli import main

if __name__ == "__main__":
    main()
