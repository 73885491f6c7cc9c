"""ARGuide: acceptance and cutting on hand-built cases (a bigram guide whose every prediction is known), parity with
the plain PyTorch version in tests/reference/flashdlm.py on the shipped tiny / tiny-ar pair (tokens, NFE of each
model), a guide that accepts everything leaves the rule unchanged, batched equals single, errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jdlm
from jdlm import strategies as S
from jdlm.decoding import loop
from jdlm.errors import StrategyError
from jdlm.kernels import window_attention
from jdlm.tasks import TASKS
from tests.reference.flashdlm import flashdlm_generate, ref_model_from_params
from tests.test_sampler_parity import MaskExcluded

# ---------------------------------------------------------------- hand-built: a bigram guide

M = 15  # the mask id of the hand-built vocabulary of 16


def _bigram_guide(successor):
    """A causal model whose prediction after token t is successor[t] whatever came before: attention and MLP add
    nothing (zero output projections), so the logits are rms(one_hot(t)) @ head."""
    cfg = jdlm.tiny(vocab_size=16, d_model=16, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=16, mlp_hidden=8,
                    mask_id=M, causal=True)
    params = jdlm.init_params(cfg, jax.random.key(0))
    w = params.weights
    layer = dict(w["layers"][0], o=jnp.zeros_like(w["layers"][0]["o"]), down=jnp.zeros_like(w["layers"][0]["down"]))
    head = jnp.zeros((16, 16)).at[jnp.arange(16), jnp.asarray(successor)].set(1.0)
    return params.replace(weights=dict(w, embed=jnp.eye(16), lm_head=head, layers=(layer,)))


GUIDE = _bigram_guide([(t + 1) % 15 for t in range(16)])  # predicts t + 1


def _verify(block_tokens, proposal, reveal, chunk=4, correct=False):
    """Runs ARGuide.verify on rows [2, 3 | block of 8] (block at 2); returns (kept [B, 8] bool, guide forwards), and
    the proposal as verify leaves it when `correct`."""
    block = np.asarray(block_tokens)
    B = block.shape[0]
    tokens = np.concatenate([np.tile([[2, 3]], (B, 1)), block], axis=1).astype(np.int32)
    positions = np.tile(np.arange(10, dtype=np.int32), (B, 1))
    guide = S.ARGuide(chunk=chunk, correct=correct)
    state = guide.init(GUIDE, jnp.asarray(tokens[:, :2]), positions, None, 10)
    kept, written, state = guide.verify(GUIDE, state, jnp.asarray(tokens), positions, None,
                                        jnp.asarray(proposal, jnp.int32), jnp.asarray(reveal), 2, M)
    if correct:
        return np.asarray(kept), np.asarray(written)
    return np.asarray(kept), np.asarray(state.nfe) - 1


def test_cut_at_the_first_rejection():
    all_masked = [[M] * 8] * 2
    drafts = [[4, 5, 6, 9, 10, 11, 12, 13],   # 4 5 6 follow 3; 9 does not follow 6
              [7, 8, 9, 10, 11, 12, 13, 14]]  # 7 does not follow 3: the first draft is rejected
    kept, calls = _verify(all_masked, drafts, np.ones((2, 8), bool))
    assert kept.tolist() == [[True] * 3 + [False] * 5, [True] + [False] * 7]  # row 1: the first draft anyway
    assert calls.tolist() == [1, 1]


def test_correction_writes_the_guides_token_at_the_rejection():
    drafts = [[4, 5, 6, 9, 10, 11, 12, 13], [7, 8, 9, 10, 11, 12, 13, 14], [4, 5, 6, 9, 10, 11, 12, 13]]
    picks = np.ones((3, 8), bool)
    picks[2, 1] = False  # a gap before the rejection: no correction, the cut as without it
    kept, written = _verify([[M] * 8] * 3, drafts, picks, correct=True)
    assert kept.tolist() == [[True] * 4 + [False] * 4, [True] + [False] * 7, [True, False, True] + [False] * 5]
    assert written[0].tolist() == [4, 5, 6, 7, 10, 11, 12, 13]  # 7 follows 6, where the draft said 9
    assert written[1, 0] == 4 and written[2].tolist() == drafts[2]


def test_only_the_rules_picks_before_the_rejection():
    drafts = [[4, 5, 6, 9, 10, 11, 12, 13]] * 3
    picks = np.zeros((3, 8), bool)
    picks[0, [1, 5]] = True   # 1 is before the rejection at 3, 5 after it
    picks[1, [5]] = True      # nothing before it: the first masked position instead
    kept, _ = _verify([[M] * 8] * 3, drafts, picks)
    assert np.flatnonzero(kept[0]).tolist() == [1]
    assert np.flatnonzero(kept[1]).tolist() == [0]
    assert not kept[2].any()  # the rule revealed nothing: neither does the guide


def test_decoded_positions_are_context_and_chunks_are_counted():
    # 7 is decoded and does not follow 4, but it is context: the drafts after it follow it.
    block = [[4, 7, M, M, M, M, M, M], [M] * 8]
    drafts = [[0, 0, 8, 9, 10, 11, 12, 13], [4, 5, 6, 7, 8, 9, 10, 11]]
    kept, calls = _verify(block, drafts, np.asarray(block) == M, chunk=2)
    assert kept.tolist() == [[False, False] + [True] * 6, [True] * 8]
    # Row 1 feeds from position 1 (before its first mask at 2): windows at 1, 3, 5, 7 predict up to position 9.
    assert calls[1] == 4


@pytest.mark.parametrize("accept, knobs, expected", [
    ("argmax", {}, [True, False, False, False]),
    ("top2", {"ratio": 0.5}, [True, True, False, False]),
    ("top2", {"ratio": 0.7}, [True, False, False, False]),
    ("threshold", {"min_prob": 0.25}, [True, True, False, False]),
])
def test_acceptance_variants(accept, knobs, expected):
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.2]] * 4))[None]  # [1, 4, 3]: the same distribution at 4 positions
    drafts = jnp.asarray([[0, 1, 2, 3]])  # 3 lies outside the guide's vocabulary of 3
    ok = S.ARGuide(accept=accept, **knobs).accepts(logits, drafts, 3)
    assert np.asarray(ok)[0].tolist() == expected


# ---------------------------------------------------------------- the shipped pair, against the reference


@pytest.fixture(scope="module")
def pair():
    params, tok = jdlm.load("tiny", dtype=jnp.float32)
    guide, _ = jdlm.load("tiny-ar", dtype=jnp.float32)
    task = TASKS["countdown"]
    prompts = [tok.encode_chat([{"role": "user", "content": task.prompt(e.input)}])
               for e in task.generate("eval", 2, seed=1)]
    return params, guide, prompts


CASES = {  # (schedule, rule, reference rule arguments, guide)
    "authors_one_block": ({"gen_length": 32, "block_length": 32, "steps": 32}, S.Threshold(threshold=1e-6),
                          {"rule": "threshold", "threshold": 1e-6}, S.ARGuide(chunk=8)),
    "threshold_blocks": ({"gen_length": 32, "block_length": 8, "steps": 32}, S.Threshold(threshold=0.8),
                         {"rule": "threshold", "threshold": 0.8}, S.ARGuide(chunk=4, accept="top2")),
    "counts": ({"gen_length": 32, "block_length": 16, "steps": 8}, S.LowConfidence(),
               {"rule": "counts", "steps": 8}, S.ARGuide(chunk=8, accept="threshold", min_prob=0.2)),
    "corrected": ({"gen_length": 32, "block_length": 32, "steps": 32}, S.Threshold(threshold=1e-6),
                  {"rule": "threshold", "threshold": 1e-6}, S.ARGuide(chunk=8, correct=True)),
    # chunk > gen_length: every verification is one chunk, run without the loop
    "one_chunk": ({"gen_length": 32, "block_length": 32, "steps": 32}, S.Threshold(threshold=1e-6),
                  {"rule": "threshold", "threshold": 1e-6}, S.ARGuide(chunk=33)),
    "one_chunk_blocks": ({"gen_length": 32, "block_length": 8, "steps": 32}, S.Threshold(threshold=0.8),
                         {"rule": "threshold", "threshold": 0.8}, S.ARGuide(chunk=40, accept="top2")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(pair, case):
    params, guide, prompts = pair
    schedule, rule, ref_rule, part = CASES[case]
    prompt = np.asarray([prompts[0]], np.int32)
    x, nfe, guide_nfe = flashdlm_generate(
        MaskExcluded(ref_model_from_params(params)), torch.tensor(prompt, dtype=torch.long),
        gen_length=schedule["gen_length"], block_length=schedule["block_length"], mask_id=params.config.mask_id,
        guide=ref_model_from_params(guide), chunk=part.chunk, accept=part.accept, ratio=part.ratio,
        min_prob=part.min_prob, correct=part.correct, **ref_rule)
    strategy = jdlm.Strategy(schedule=jdlm.Schedule(**schedule), rule=rule, guide=part)
    result = jdlm.decode(params, prompt, strategy, guide=guide)
    np.testing.assert_array_equal(np.asarray(result.tokens), x[:, prompt.shape[1]:].numpy())
    assert (int(result.nfe[0]), int(result.guide_nfe[0])) == (nfe, guide_nfe)
    unguided = jdlm.decode(params, prompt, dataclasses.replace(strategy, guide=None))
    # The guide matters here: it cuts some steps, and still accepts several drafts in some.
    assert int(result.nfe[0]) != int(unguided.nfe[0]) or case in ("authors_one_block", "corrected", "one_chunk")
    assert int(result.nfe[0]) < schedule["gen_length"]


@pytest.mark.parametrize("rule, cache", [(S.Threshold(threshold=0.6), S.NoCache()),
                                         (S.LowConfidence(), S.FreeCache(policy="boundary", unit=8))],
                         ids=["threshold", "counts-freecache"])
def test_a_guide_that_accepts_everything_leaves_the_rule_unchanged(pair, rule, cache):
    params, guide, prompts = pair
    schedule = jdlm.Schedule(gen_length=32, block_length=16, steps=16)
    plain = jdlm.Strategy(schedule=schedule, rule=rule, cache=cache)
    agreeing = plain.replace(guide=S.ARGuide(chunk=8, accept="threshold", min_prob=-1.0))
    prompt = np.asarray([prompts[1]], np.int32)
    want = jdlm.decode(params, prompt, plain)
    got = jdlm.decode(params, prompt, agreeing, guide=guide)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    np.testing.assert_array_equal(np.asarray(got.nfe), np.asarray(want.nfe))
    assert int(got.guide_nfe[0]) > int(got.nfe[0])  # the prefill and at least one chunk per step, counted apart
    assert want.guide_nfe is None


def test_batched_equals_single(pair):
    params, guide, prompts = pair
    strategy = S.parse_strategy("threshold:0.6 freecache guide chunk=8 gen_length=32 block_length=16 steps=32")
    ids, mask = jdlm.pad_prompts(prompts, params.config.pad_id, buckets=None)
    assert not np.asarray(mask).all(), "the two prompts should differ in length (one row padded)"
    batched = jdlm.decode(params, ids, strategy, prompt_mask=mask, guide=guide)
    for row, prompt in enumerate(prompts):
        alone = jdlm.decode(params, np.asarray([prompt], np.int32), strategy, guide=guide)
        np.testing.assert_array_equal(np.asarray(batched.tokens[row]), np.asarray(alone.tokens[0]))
        assert (int(batched.nfe[row]), int(batched.guide_nfe[row])) == (int(alone.nfe[0]), int(alone.guide_nfe[0]))


def test_spec_and_errors(pair):
    params, guide, prompts = pair
    strategy = S.parse_strategy("threshold:0.9 guide accept=top2 ratio=0.4 chunk=16")
    assert strategy.guide == S.ARGuide(accept="top2", ratio=0.4, chunk=16)
    assert S.parse_strategy(strategy.spec) == strategy
    assert jdlm.Strategy.from_dict(strategy.to_dict()) == strategy
    prompt = np.asarray([prompts[0]], np.int32)
    with pytest.raises(StrategyError, match="pass the causal model's weights"):
        jdlm.decode(params, prompt, strategy)
    with pytest.raises(StrategyError, match="has no ARGuide"):
        jdlm.decode(params, prompt, jdlm.Strategy(), guide=guide)
    with pytest.raises(StrategyError, match="must be a causal"):
        jdlm.decode(params, prompt, strategy, guide=params)
    with pytest.raises(StrategyError, match="keep_idle_steps"):
        S.llada(gen_length=32, steps=32).replace(guide=S.ARGuide())
    with pytest.raises(StrategyError, match="accept must be one of"):
        S.ARGuide(accept="maybe")


def test_the_guide_catches_up_on_positions_it_has_not_read(pair):
    """Six positions decoded without the guide reading them (its cache holds the prompt only): it must feed them
    before judging the drafts after them. Drafts that are the guide's own greedy continuation all pass."""
    _, guide, prompts = pair
    prompt = np.asarray([prompts[0]], np.int32)
    P, G, mask_id = prompt.shape[1], 16, guide.config.mask_id
    own = np.asarray(jdlm.decode_causal(guide, prompt, G).tokens)[0]
    assert not np.isin(own[:G - 1], guide.config.end_ids).any(), "pick a prompt with a longer answer"
    tokens = np.concatenate([prompt[0], own[:6], np.full(G - 6, mask_id)])[None].astype(np.int32)
    positions = np.arange(P + G, dtype=np.int32)[None]
    part = S.ARGuide(chunk=8)
    state = part.init(guide, jnp.asarray(prompt), positions, None, P + G)
    masked = tokens[:, P:] == mask_id
    kept, _, after = part.verify(guide, state, jnp.asarray(tokens), positions, None, jnp.asarray(own[None]),
                                 jnp.asarray(masked), P, mask_id)
    np.testing.assert_array_equal(np.asarray(kept), masked)
    assert int(after.accepted[0]) == G - 6 and int(after.nfe[0]) - int(state.nfe[0]) == 2  # from P: 2 chunks of 8


def test_command_buffers_that_capture_loops_are_refused(monkeypatch):
    from jdlm.decoding.loop import command_buffers_capture_loops

    assert command_buffers_capture_loops("--xla_gpu_enable_command_buffer=FUSION,CUBLAS,WHILE,CONDITIONAL")
    assert command_buffers_capture_loops("--xla_gpu_enable_command_buffer=fusion,conditional --xla_dump_to=/x")
    assert not command_buffers_capture_loops("--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUDNN")
    assert not command_buffers_capture_loops("--xla_gpu_enable_command_buffer=WHILE --xla_gpu_enable_command_buffer=")
    assert not command_buffers_capture_loops("")
    assert command_buffers_capture_loops("--xla_gpu_enable_command_buffer=+WHILE")  # added to XLA's default set
    assert command_buffers_capture_loops("--xla_gpu_enable_command_buffer=+CONDITIONAL,-CUBLAS")
    flag = "--xla_gpu_enable_command_buffer="
    assert command_buffers_capture_loops(f"{flag}+WHILE {flag}+CUDNN")  # each flag edits the set so far
    assert not command_buffers_capture_loops(f"{flag}+WHILE {flag}-WHILE")
    assert command_buffers_capture_loops(f"{flag}FUSION {flag}+WHILE")
    model = jdlm.init_params(jdlm.tiny(vocab_size=16, d_model=16, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=16,
                                       mlp_hidden=8, mask_id=M), jax.random.key(1))
    strategy = S.parse_strategy("threshold:0.5 guide", S.Strategy(schedule=S.Schedule(gen_length=4, block_length=4,
                                                                                         steps=4)))
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_command_buffer=FUSION,WHILE")
    jdlm.decode(model, np.asarray([[2, 3]]), strategy, guide=GUIDE)  # not a GPU: nothing to refuse
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with pytest.raises(StrategyError, match="WHILE"):
        jdlm.decode(model, np.asarray([[2, 3]]), strategy, guide=GUIDE)


def test_the_window_attention_kernel_gives_the_same_guided_tokens(pair):
    """The window attention kernel ("auto", the default, runs it on a GPU) in the cached forwards of both models: the
    dual cache's steps and the guide's verification against its own cache. Run here in Pallas's interpreter."""
    params, guide, prompts = pair
    strategy = S.parse_strategy("threshold:0.6 dual guide chunk=8 gen_length=32 block_length=16 steps=32")
    # The kernel takes key counts that a power-of-two chunk divides: left-pad the prompt to a multiple of 16.
    prompt, mask = jdlm.pad_prompts([prompts[0]], params.config.pad_id, buckets=(-(-len(prompts[0]) // 16) * 16,))
    assert not np.asarray(mask).all()
    results = {}
    for mode in ("off", "on"):
        loop._decode_loop.clear_cache()  # the kernel mode is read when the loop is traced
        with window_attention.use_kernel(mode):
            results[mode] = jdlm.decode(params, prompt, strategy, prompt_mask=mask, guide=guide)
            traced = loop._decode_loop.trace(*loop._arguments(params, prompt, strategy, None, mask, guide), guide)
            calls = str(traced.jaxpr).count("pallas_call")
            if mode == "on":  # a dual-cache step per layer of tiny, and a verification per layer of tiny-ar
                assert calls >= params.config.n_layers + guide.config.n_layers
            else:
                assert calls == 0
    loop._decode_loop.clear_cache()
    np.testing.assert_array_equal(np.asarray(results["on"].tokens), np.asarray(results["off"].tokens))
    assert (int(results["on"].nfe[0]), int(results["on"].guide_nfe[0])) == (
        int(results["off"].nfe[0]), int(results["off"].guide_nfe[0]))
