"""Efficacy benchmark on the offline toy worlds; same as `hf-immunize bench`.

python benchmarks/efficacy.py                    # every registered arm, seeds 0 1 2, standard attack + sweep
python benchmarks/efficacy.py --arms booster     # one arm; merged into benchmarks/results/efficacy.json
"""

from hf_immunize.benchmark import main

if __name__ == "__main__":
    main()
