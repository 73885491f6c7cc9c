"""Wino: WINO's revocable decoding, wide draft and narrow verification in one forward (Feng-Hong/WINO-DLLM)."""

from __future__ import annotations

from jdlm.decoding.part import part
from jdlm.decoding.revocable import Revocable


# Behaviour follows Feng-Hong/WINO-DLLM LLaDA/decoding.py::decoding_wino at commit 9549a1d (REFERENCE.md 3.2.1).
@part
class Wino(Revocable):
    """Each step runs one forward over the sequence and the block's shadow twins (jdlm/decoding/shadow.py), drafts
    the masked positions whose proposal is > `threshold` probable (at most min(max(floor(0.7 n), 5), 20) of the n
    masked, at least the single best), and, when it drafts more than one, sends back to the mask the decoded block
    positions whose twin gives their token a probability < `threshold_back` (fewer than the previous step drafted:
    at most `last_accept - 1`, the lowest). Tokens drafted at a step are first verified at the next; only the current
    block is ever re-masked. Authors' settings: threshold 0.6, threshold_back 0.9 (GSM8K), block 128. The cap's
    0.7, 5 and 20 are knobs (`draft_fraction`, `draft_min`, `draft_max`; upstream's values by default): a small
    block of sure tokens needs two steps under the default cap (8 masked: at most 5 a step).

    Differences from upstream, all documented: batches (every count, cap and top-k per row; upstream is batch 1);
    probabilities in float32 (upstream float64, so a value within ~1e-7 of a threshold may compare the other way);
    the mask token is never proposed and its mass is left out of every probability; ties go to the lowest position;
    a position goes back to the mask at most `max_revocations` times (default 8; upstream has no cap and no
    guarantee that a block ends); left-padded rows count rotary positions from their first real token.
    """
