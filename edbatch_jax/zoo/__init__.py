"""Layer 6, the model zoo: bundled models, their data and the workloads the benchmarks run.

:mod:`~edbatch_jax.zoo.models` (Tree-LSTM, Tree-GRU, MV-RNN, Double
Tree-LSTM, lattice LSTM/GRU taggers, BiLSTM tagger, chain LM, N-d grids,
random DAGs, binary trees), :mod:`~edbatch_jax.zoo.data` (SST trees, NER
lattices, WikiNER tags, synthetic generators) and
:mod:`~edbatch_jax.zoo.workloads` (14 workloads by name). Uses the core and
Flax; the core never imports it.
"""
