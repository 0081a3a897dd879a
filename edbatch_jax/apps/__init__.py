"""Layer 7, applications: the ``edbatch`` command (:mod:`~edbatch_jax.apps.cli`), the benchmark harness
(:mod:`~edbatch_jax.apps.bench`), the op-call bound and compute floor (:mod:`~edbatch_jax.apps.op_calls`) and
DyNet side by side (:mod:`~edbatch_jax.apps.peers`). Nothing in the library imports them."""
