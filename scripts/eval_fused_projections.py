"""Does fusing projections (jdlm.fuse_projections) change what the shipped models answer? `tiny` (guided by
`tiny-ar` in one row), 100 held-out examples for each of four task and strategy pairs, separate against fused
weights: accuracy and the share of examples whose record (answer, NFE) is identical. DTYPE: float32 or bfloat16.

    python scripts/eval_fused_projections.py float32      # about 3 minutes on a 2-core CPU
"""
import sys

import jax.numpy as jnp

import jdlm
import jdlm.eval as jeval
from jdlm import strategies as S
from jdlm.tasks import TASKS

dtype = jnp.dtype(sys.argv[1])
out = {}
for fused in (False, True):
    params, tok = jdlm.load("tiny", dtype=dtype)
    guide, _ = jdlm.load("tiny-ar", dtype=dtype)
    if fused:
        params, guide = jdlm.fuse_projections(params), jdlm.fuse_projections(guide)
    for name, spec in (("sudoku", "low_confidence"), ("countdown", "low_confidence"),
                       ("countdown", "threshold:0.9 dual"), ("latin", "threshold:0.000001 guide")):
        task = TASKS[name]
        st = jeval.task_settings(task, tok)
        G = st.gen_length
        block = G if "guide" in spec else st.block_length
        strat = S.parse_strategy(spec, S.Strategy(schedule=S.Schedule(gen_length=G, block_length=block, steps=G,
                                                                      stop_at_eos=True)))
        r = jeval.evaluate(params, tok, task, strat, limit=100, batch_size=50, progress=False, settings=st,
                           guide=guide if strat.guide else None)
        out[(name, spec, fused)] = (r.accuracy, [(rec.output, rec.nfe) for rec in r.records])
for (name, spec, fused), (acc, gens) in out.items():
    if fused:
        acc0, gens0 = out[(name, spec, False)]
        same = sum(a == b for a, b in zip(gens, gens0)) / len(gens)
        print(f"{dtype.name} {name:>10} {spec:<28} unfused {acc0:.3f} fused {acc:.3f} identical answers {same:.3f}",
              flush=True)
