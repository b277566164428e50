"""The efficacy benchmarks: every defense measured on an offline toy world, over seeds, the way its claim is stated.

`hf-immunize bench --world safety|bios|book [options]` (:mod:`~hf_immunize.bench.cli`) runs one world and rewrites
its tables; `--world X --help` lists that world's options. One module per world, plus what they share:

- :mod:`~hf_immunize.bench.recipes`: the safety world's model recipes (pretrain an unaligned model, align it with SFT);
- :mod:`~hf_immunize.bench.safety`: Booster (exact and fast) against plain SFT under the fine-tuning attack and its
  sweep (arms in :mod:`~hf_immunize.bench.safety_arms`); :mod:`~hf_immunize.bench.safety_studies` (Booster's LoRA
  protocols and λ/α grid) and
  :mod:`~hf_immunize.bench.mistake_sft` (mistake analysis, its own protocol on the same world);
- :mod:`~hf_immunize.bench.bios`: MLAC against the few-shot gender attacker (:mod:`~hf_immunize.bench.bios_spread`
  explains its spread over seeds);
- :mod:`~hf_immunize.bench.book`: WHP unlearning and its baselines, familiarity before and after relearning;
- :mod:`~hf_immunize.bench.results`: the shared result file (`benchmarks/results/efficacy.json`).

Nothing here is imported by the rest of the package (the demo calls in; the library never calls out).
"""
