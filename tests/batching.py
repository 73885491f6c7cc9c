"""The batching contract every strategy keeps: a left-padded batch decodes each row as its prompt alone."""

import jax
import numpy as np

import jdlm


def assert_batch_equals_each_alone(params, prompts: list[list[int]], strategy, keys: jax.Array | None = None):
    """Decodes `prompts` (token lists of different lengths) as one left-padded batch and one by one, and checks
    that every row has the same tokens and NFE. keys: [B] PRNG keys, one per row, or None for the default key.
    Returns the batched DecodeResult."""
    ids, mask = jdlm.pad_prompts(prompts, pad_id=1, buckets=None)
    batched = jdlm.decode(params, ids, strategy, prompt_mask=mask, key=keys)
    for row, p in enumerate(prompts):
        alone = jdlm.decode(params, np.asarray([p], np.int32), strategy,
                            key=None if keys is None else keys[row:row + 1])
        np.testing.assert_array_equal(np.asarray(batched.tokens[row]), np.asarray(alone.tokens[0]))
        assert int(batched.nfe[row]) == int(alone.nfe[0])
    return batched
