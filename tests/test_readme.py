"""The README's example runs and agrees with unbatched execution."""

import re
from pathlib import Path

import jax
import numpy as np

import edbatch_jax as eb


def test_readme_example_runs_and_matches_unbatched():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## Twenty lines\n\n```python\n(.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) <= 25
    env: dict = {}
    exec(compile(code, "README.md", "exec"), env)
    ops = {"leaf": env["leaf"], "node": env["node"]}
    params, graph, roots = env["params"], env["graph"], env["roots"]
    assert list(roots) == [4, 7, 14]
    ref = eb.run_unbatched(ops, params, graph, outputs=roots)
    np.testing.assert_allclose(env["states"], ref, rtol=1e-6)
    g_ref = jax.grad(lambda p: eb.run_unbatched(ops, p, graph, outputs=roots).sum())(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), env["grads"], g_ref)
