"""The decode loop's state and result: pytree dataclasses with static shapes."""

from __future__ import annotations

import flax.struct
import jax

from jdlm.decoding.cache import SequenceInputs
from jdlm.decoding.commit import Latest
from jdlm.decoding.schedule import StepTables
from jdlm.model import KVCache


@flax.struct.dataclass
class DecodeInputs:
    """What stays fixed during one decode: the model calls' inputs and the schedule's per-step tables."""

    seq: SequenceInputs
    tables: StepTables
    guide: object = None  # the ARGuide's weights (Params), or None


@flax.struct.dataclass
class DecodeState:
    """Carried through `lax.while_loop`. B batch, L = P + G sequence length, G generation length.

    tokens:        [B, L] int32    prompt, then the generation (mask id where not yet revealed).
    block_index:   [] int32        the block being decoded.
    step_in_block: [] int32        steps taken in the current block.
    forwards:      [] int32        forward passes run for the batch so far.
    full_forwards: [] int32        those over the whole sequence: every one without a cache, a cache's refreshes
                                   (the rest are cached steps over a window).
    nfe:           [B] int32       forward passes each row took part in (what decoding it alone would cost).
    done:          [B] bool        row finished early (Schedule.stop_at_eos).
    refresh:       [] bool         the next forward rebuilds the KV cache (first step of a block).
    key:           [B]             one PRNG key per row, split at the start of every step.
    kv:            KVCache [B', L, K, H] per layer (B' = 2B with guidance), or None without a cache.
    revealed_at:   [B, G] int32    index of the forward pass that revealed each generated position (-1: not yet).
    revealed_conf: [B, G] float32  the rule's confidence for it at that step.
    latest:        Latest ([B, G] each), what the last forward computing each generated position said; None unless
                   the strategy has a commit part.
    memory:        what a rule that reads attention carries between steps (`Rule.init_memory`), or None.
    guide:         the ARGuide's GuideState (its KV cache [B, L, K, H], forwards per row), or None.
    """

    tokens: jax.Array
    block_index: jax.Array
    step_in_block: jax.Array
    forwards: jax.Array
    full_forwards: jax.Array
    nfe: jax.Array
    done: jax.Array
    refresh: jax.Array
    key: jax.Array
    kv: KVCache | None
    revealed_at: jax.Array
    revealed_conf: jax.Array
    latest: Latest | None = None
    memory: object = None
    guide: object = None


@flax.struct.dataclass
class Trace:
    """Order of unmasking. step: [B, G] int32 index (from 0) of the forward pass that revealed each position (-1:
    never); confidence: [B, G] float32 the rule's confidence when it was revealed (0 for EOS fill)."""

    step: jax.Array
    confidence: jax.Array


@flax.struct.dataclass
class DecodeResult:
    """tokens: [B, G] generated ids (mask id where not revealed yet); nfe: [B] forward passes per row; forwards: []
    forward passes run for the batch; full_forwards: [] those over the whole sequence (the rest were cached steps
    over a window; None for a causal decode); trace: the unmasking order; guide_nfe: [B] forward passes of the AR guide per
    row (its prompt prefill included), None without a guide."""

    tokens: jax.Array
    nfe: jax.Array
    forwards: jax.Array
    trace: Trace
    guide_nfe: jax.Array | None = None
    full_forwards: jax.Array | None = None
