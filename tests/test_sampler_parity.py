"""Token-exact parity of `jdlm.decode` with independent PyTorch versions of the reference samplers.

The references live in tests/reference/samplers.py (ML-GSAI LLaDA `generate`, HKUNLP Dream `_sample`, NVlabs
Fast-dLLM with prefix/dual caches), running on tests/reference/torch_dlm.py. Both sides load the same tiny random
checkpoint (jdlm through its converter) in float32 and decode greedily; tokens and NFE must be identical.

Both sides exclude the mask token from the proposals (jdlm does so by design; random weights could otherwise
propose it), so the reference model's mask logit is set to -1e30 (exp underflows to exactly 0, as -inf would,
and classifier-free guidance's `un + s * (cond - un)` stays finite).
"""

import dataclasses
import jax
import numpy as np
import pytest
import torch

import jdlm
from jdlm.convert import convert_checkpoint
from jdlm import strategies as S
from tests.hf_fixtures import write_tokenizer
from tests.reference import samplers
from tests.reference.make_fixtures import MASK_ID, load_ref_model, tiny_dream_checkpoint, tiny_llada_checkpoint


class MaskExcluded(torch.nn.Module):
    """The reference model with the mask token's logit at -1e30 in every output."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @staticmethod
    def _exclude(logits):
        logits = logits.clone()
        logits[..., MASK_ID] = -1e30
        return logits

    def forward(self, *args, **kwargs):
        return self._exclude(self.model(*args, **kwargs))

    def forward_full_with_cache(self, *args, **kwargs):
        logits, kv = self.model.forward_full_with_cache(*args, **kwargs)
        return self._exclude(logits), kv

    def forward_window(self, *args, **kwargs):
        return self._exclude(self.model.forward_window(*args, **kwargs))

    def forward_with_attention(self, *args, **kwargs):
        logits, attention = self.model.forward_with_attention(*args, **kwargs)
        return self._exclude(logits), attention

    @property
    def config(self):
        return self.model.config


def _models(family, tmp_path_factory, seed):
    root = tmp_path_factory.mktemp(f"{family}_parity")
    hf = root / "hf"
    (tiny_llada_checkpoint if family == "llada" else tiny_dream_checkpoint)(hf, seed=seed)
    write_tokenizer(hf)
    params = jdlm.load_params(convert_checkpoint(family, hf, root / "jdlm"))
    return MaskExcluded(load_ref_model(hf)), params


@pytest.fixture(scope="module")
def llada(tmp_path_factory):
    return _models("llada", tmp_path_factory, seed=11)


@pytest.fixture(scope="module")
def dream(tmp_path_factory):
    return _models("dream", tmp_path_factory, seed=12)


def _prompts(B=2, P=5, seed=0):
    return np.random.default_rng(seed).integers(2, 240, size=(B, P)).astype(np.int64)


def _check(ref_x, ref_nfe, result, P):
    ref_gen = ref_x[:, P:].numpy()
    ours = np.asarray(result.tokens)
    np.testing.assert_array_equal(ours, ref_gen)
    assert (np.asarray(result.nfe) == ref_nfe).all(), (np.asarray(result.nfe), ref_nfe)


# ---------------------------------------------------------------- LLaDA generate

LLADA_CASES = {
    "one_token_per_step": dict(gen_length=16, steps=16, block_length=8),
    "two_tokens_per_step": dict(gen_length=16, steps=8, block_length=4),
    "uneven_counts": dict(gen_length=20, steps=6, block_length=10),
    "more_steps_than_tokens": dict(gen_length=8, steps=16, block_length=4),
    "cfg": dict(gen_length=16, steps=8, block_length=8, cfg_scale=0.7),
}


@pytest.mark.parametrize("case", list(LLADA_CASES))
def test_llada_generate_low_confidence(llada, case):
    ref, params = llada
    args = LLADA_CASES[case]
    prompt = _prompts(1)
    x, nfe = samplers.llada_generate(ref, torch.as_tensor(prompt), mask_id=MASK_ID, **args)
    _check(x, nfe, jdlm.decode(params, prompt, S.llada(**args)), prompt.shape[1])


def _jdlm_uniform_stream(key, batch):
    """RandomOrder's documented random stream, replayed: row keys fold_in(key, b); each step splits a row key into
    (next, propose, select); the proposal key splits into (gumbel, uniform); uniform(uniform_key, (W,))."""
    keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(np.arange(batch))
    per_step = []

    def rand_fn(step, block_start, block_length, B):
        nonlocal keys
        while len(per_step) <= step:
            split = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
            keys, propose = split[:, 0], split[:, 1]
            uniform_keys = jax.vmap(jax.random.split)(propose)[:, 1]
            per_step.append(np.asarray(jax.vmap(lambda k: jax.random.uniform(k, (block_length,)))(uniform_keys)))
        return torch.as_tensor(per_step[step], dtype=torch.float32)

    return rand_fn


def test_llada_generate_random_order_with_a_fixed_key(llada):
    ref, params = llada
    prompt = _prompts(2)
    args = dict(gen_length=16, steps=8, block_length=8)
    key = jax.random.key(42)
    x, nfe = samplers.llada_generate(ref, torch.as_tensor(prompt), mask_id=MASK_ID, remasking="random",
                                     rand_fn=_jdlm_uniform_stream(key, 2), **args)
    _check(x, nfe, jdlm.decode(params, prompt, S.llada(remasking="random", **args), key=key), prompt.shape[1])


def test_llada_generate_padded_batch(llada):
    ref, params = llada
    prompts = [[5, 9, 14], [7, 3, 22, 41, 8, 19], [100, 200, 31, 4]]
    ids, mask = jdlm.pad_prompts(prompts, pad_id=1, buckets=None)
    args = dict(gen_length=16, steps=8, block_length=8)
    x, nfe = samplers.llada_generate(ref, torch.as_tensor(ids, dtype=torch.long), mask_id=MASK_ID,
                                     attention_mask=torch.as_tensor(mask), pad_position_ids=True, **args)
    _check(x, nfe, jdlm.decode(params, ids, S.llada(**args), prompt_mask=mask), ids.shape[1])


# Prophet's gaps scaled to the tiny random model, whose top-1/top-2 logit gaps stay below ~2.5: upstream's 7.5, 5.0,
# 2.5 over 5, so each case runs into a phase before it fires.
PROPHET_GAPS = dict(early=1.5, mid=1.0, late=0.5)


def _with_prophet(strategy):
    g = PROPHET_GAPS
    return strategy.replace(commit=S.Prophet(early_gap=g["early"], mid_gap=g["mid"], late_gap=g["late"]))


@pytest.mark.parametrize("case", ["one_token_per_step", "two_tokens_per_step", "uneven_counts", "cfg"])
def test_prophet_early_commit(llada, case):
    ref, params = llada
    args = LLADA_CASES[case]
    prompt = _prompts(1)
    x, nfe = samplers.llada_generate(ref, torch.as_tensor(prompt), mask_id=MASK_ID, prophet=True,
                                     exit_thresholds=PROPHET_GAPS, **args)
    assert nfe[0] < args["steps"], "the reference never exited early: this case would test nothing"
    _check(x, nfe, jdlm.decode(params, prompt, _with_prophet(S.llada(**args))), prompt.shape[1])


def test_prophet_early_commit_padded_batch(llada):
    ref, params = llada
    prompts = [[5, 9, 14], [7, 3, 22, 41, 8, 19], [100, 200, 31, 4]]
    ids, mask = jdlm.pad_prompts(prompts, pad_id=1, buckets=None)
    args = dict(gen_length=16, steps=16, block_length=8)
    x, nfe = samplers.llada_generate(ref, torch.as_tensor(ids, dtype=torch.long), mask_id=MASK_ID,
                                     attention_mask=torch.as_tensor(mask), pad_position_ids=True, prophet=True,
                                     exit_thresholds=PROPHET_GAPS, **args)
    assert len(set(nfe)) > 1, f"every row exited at the same step {nfe}: the batch would not test rows apart"
    _check(x, nfe, jdlm.decode(params, ids, _with_prophet(S.llada(**args)), prompt_mask=mask), ids.shape[1])


def _frequent_tokens(params, prompt, args, n=2):
    """The tokens a plain decode proposes most often: as stand-in EOS / EOT ids they make the EOS options bite."""
    tokens = np.asarray(jdlm.decode(params, prompt, S.llada(**args)).tokens).ravel()
    values, counts = np.unique(tokens, return_counts=True)
    return [int(v) for v in values[np.argsort(-counts, kind="stable")][:n]]


@pytest.mark.parametrize("options", [dict(logits_eos_inf=True), dict(confidence_eos_eot_inf=True),
                                     dict(logits_eos_inf=True, confidence_eos_eot_inf=True)],
                         ids=["logits_eos_inf", "confidence_eos_eot_inf", "both"])
@pytest.mark.parametrize("cfg_scale", [0.0, 0.7], ids=["plain", "cfg"])
def test_llada_generate_eos_options(llada, options, cfg_scale):
    ref, params = llada
    prompt = _prompts(2, seed=8)
    args = dict(gen_length=16, steps=8, block_length=8, cfg_scale=cfg_scale)
    eos, eot = _frequent_tokens(params, prompt, args)
    params = jdlm.Params(config=dataclasses.replace(params.config, eos_id=eos, eot_id=eot), weights=params.weights)
    x, nfe = samplers.llada_generate(ref, torch.as_tensor(prompt), mask_id=MASK_ID, eos_id=eos, eot_id=eot,
                                     **args, **options)
    result = jdlm.decode(params, prompt, S.llada(**args, **options))
    _check(x, nfe, result, prompt.shape[1])
    plain = jdlm.decode(params, prompt, S.llada(**args))
    assert not np.array_equal(np.asarray(result.tokens), np.asarray(plain.tokens)), "the option changed nothing"


def _jdlm_select_uniforms(key, batch, width, steps):
    """Origin's documented random stream, replayed: row keys fold_in(key, b); each step splits a row key into
    (next, propose, select) and draws uniform(select, (W,)). Returns [steps, B, W]."""
    keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(np.arange(batch))
    out = []
    for _ in range(steps):
        split = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
        keys = split[:, 0]
        out.append(np.asarray(jax.vmap(lambda k: jax.random.uniform(k, (width,)))(split[:, 2])))
    return np.stack(out)


@pytest.mark.parametrize("case", [dict(steps=8), dict(steps=5, top_p=0.7), dict(steps=1)],
                         ids=["eight_steps", "top_p", "one_step"])
def test_dream_sample_origin_with_jdlm_uniforms(dream, case):
    ref, params = dream
    prompt = _prompts(2, seed=9)
    key, G = jax.random.key(21), 16
    u = _jdlm_select_uniforms(key, 2, G, case["steps"])
    x, nfe = samplers.dream_sample(ref, torch.as_tensor(prompt), max_new_tokens=G, alg="origin", mask_id=MASK_ID,
                                   uniform=samplers.uniforms_from_grid(lambda i: torch.as_tensor(u[i]),
                                                                       start=prompt.shape[1]), **case)
    result = jdlm.decode(params, prompt, S.dream(max_new_tokens=G, alg="origin", **case), key=key)
    _check(x, nfe, result, prompt.shape[1])


# ---------------------------------------------------------------- Dream _sample

DREAM_CASES = {
    "maskgit_plus": dict(alg="maskgit_plus", steps=16),
    "topk_margin": dict(alg="topk_margin", steps=16),
    "entropy": dict(alg="entropy", steps=16),
    "entropy_few_steps": dict(alg="entropy", steps=5),
    "maskgit_top_p": dict(alg="maskgit_plus", steps=8, top_p=0.6),
    "margin_top_k": dict(alg="topk_margin", steps=8, top_k=3),
}


@pytest.mark.parametrize("case", list(DREAM_CASES))
def test_dream_sample(dream, case):
    ref, params = dream
    args = DREAM_CASES[case]
    prompt = _prompts(2)
    x, nfe = samplers.dream_sample(ref, torch.as_tensor(prompt), max_new_tokens=16, mask_id=MASK_ID, **args)
    _check(x, nfe, jdlm.decode(params, prompt, S.dream(max_new_tokens=16, **args)), prompt.shape[1])


def test_dream_sample_padded_batch(dream):
    ref, params = dream
    prompts = [[5, 9, 14], [7, 3, 22, 41, 8, 19]]
    ids, mask = jdlm.pad_prompts(prompts, pad_id=1, buckets=None)
    x, nfe = samplers.dream_sample(ref, torch.as_tensor(ids, dtype=torch.long), max_new_tokens=16, steps=16,
                                   alg="entropy", mask_id=MASK_ID, attention_mask=torch.as_tensor(mask))
    result = jdlm.decode(params, ids, S.dream(max_new_tokens=16, steps=16, alg="entropy"), prompt_mask=mask)
    _check(x, nfe, result, ids.shape[1])


# ---------------------------------------------------------------- Fast-dLLM (LLaDA)

FAST_CASES = {
    f"{rule}_{cache or 'nocache'}": (rule_args, cache)
    for rule, rule_args in [("threshold", dict(threshold=0.5)), ("factor", dict(factor=1.5)),
                            ("counts", dict(steps=12))]
    for cache in [None, "prefix", "dual"]
}


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_prefix_cache_window_larger_than_the_rest(llada, dream, family):
    """Five blocks: PrefixCache's windows are 5, 3, 2 and 1 blocks, so blocks 1 and 3 recompute a decoded block
    before them (its cached keys/values kept); still token-exact against Fast-dLLM's exact-size window."""
    ref, params = llada if family == "llada" else dream
    prompt = _prompts(1, P=6, seed=5)
    args = dict(gen_length=40, block_length=8, threshold=0.4)
    x, nfe = samplers.fastdllm_generate(ref, torch.as_tensor(prompt), mask_id=MASK_ID, cache="prefix",
                                        family=family, **args)
    strategy = S.fast_dllm(cache="prefix", family=family, **args)
    _check(x, nfe, jdlm.decode(params, prompt, strategy), prompt.shape[1])


@pytest.mark.parametrize("case", list(FAST_CASES))
def test_fast_dllm(llada, case):
    ref, params = llada
    rule_args, cache = FAST_CASES[case]
    prompt = _prompts(1, P=6, seed=3)
    args = dict(gen_length=24, block_length=8)
    x, nfe = samplers.fastdllm_generate(ref, torch.as_tensor(prompt), mask_id=MASK_ID, cache=cache, **args,
                                        **rule_args)
    strategy = S.fast_dllm(cache=cache or "none", **args, **rule_args)
    _check(x, nfe, jdlm.decode(params, prompt, strategy), prompt.shape[1])


# ---------------------------------------------------------------- Fast-dLLM (Dream block sampler)


@pytest.mark.parametrize("cache", [None, "prefix", "dual"], ids=["nocache", "prefix", "dual"])
def test_fast_dllm_dream(dream, cache):
    ref, params = dream
    prompt = _prompts(1, P=6, seed=4)
    args = dict(gen_length=24, block_length=8, threshold=0.4)
    x, nfe = samplers.fastdllm_generate(ref, torch.as_tensor(prompt), mask_id=MASK_ID, cache=cache,
                                        family="dream", **args)
    strategy = S.fast_dllm(cache=cache or "none", family="dream", **args)
    _check(x, nfe, jdlm.decode(params, prompt, strategy), prompt.shape[1])


# ---------------------------------------------------------------- DAWN and AXON (rules that read attention)

# The tiny random model's attention is nearly uniform (~1/L per key, so every key passes DAWN's sink bar 0.01) and
# its confidences sit around 0.5-0.8: thresholds chosen so that each of DAWN's sets and AXON's anchors take part.
DAWN_TAUS = dict(tau_sure=0.65, tau_induce=0.55, tau_low=0.5, tau_edge=0.035, tau_sink=0.05)
DAWN = S.Dawn(sure=0.65, induce=0.55, low=0.5, edge=0.035, sink=0.05)
ATTENTION_ARGS = dict(gen_length=24, block_length=8)

AXON_CASES = {  # prompt seed, AXON's settings (each seed picked so that the case's gate fires)
    "coverage_gap_fixed1": (3, dict(gate="coverage_gap", selector="fixed1")),
    "coverage_gap_cover": (3, dict(gate="coverage_gap", selector="cover")),
    "progress_stall_fixed1": (3, dict(gate="progress_stall", selector="fixed1", max_anchor_steps=8, pace_steps=4)),
    "threshold_base_cover": (4, dict(gate="coverage_gap", selector="cover", max_anchor_steps=8, base="threshold",
                                     threshold=0.6)),
}


def _attention_strategy(rule):
    return S.Strategy(schedule=S.Schedule(steps=24, **ATTENTION_ARGS), rule=rule)


def test_dawn(llada):
    ref, params = llada
    prompt = _prompts(1, P=6, seed=3)
    stats = {}
    x, nfe = samplers.attention_generate(ref, torch.as_tensor(prompt), mask_id=MASK_ID, dawn_args=DAWN_TAUS,
                                         stats=stats, **ATTENTION_ARGS)
    assert all(stats.get(k) for k in ("sure", "induced", "independent")), f"a DAWN set never took part: {stats}"
    _check(x, nfe, jdlm.decode(params, prompt, _attention_strategy(DAWN)), prompt.shape[1])


def test_dawn_padded_batch(llada):
    ref, params = llada
    prompts = [[5, 9, 14, 80], [7, 3, 22, 41, 8, 19]]
    ids, mask = jdlm.pad_prompts(prompts, pad_id=1, buckets=None)
    x, nfe = samplers.attention_generate(ref, torch.as_tensor(ids, dtype=torch.long), mask_id=MASK_ID,
                                         attention_mask=torch.as_tensor(mask), dawn_args=DAWN_TAUS, **ATTENTION_ARGS)
    _check(x, nfe, jdlm.decode(params, ids, _attention_strategy(DAWN), prompt_mask=mask), ids.shape[1])


@pytest.mark.parametrize("case", list(AXON_CASES))
def test_axon(llada, case):
    ref, params = llada
    seed, args = AXON_CASES[case]
    args = dict(args)
    prompt = _prompts(1, P=6, seed=seed)
    stats = {}
    x, nfe = samplers.attention_generate(ref, torch.as_tensor(prompt), mask_id=MASK_ID, rule="axon", axon_sink=0.05,
                                         dawn_args=DAWN_TAUS, stats=stats, **args, **ATTENTION_ARGS)
    assert stats.get("anchor_steps"), "AXON never revealed anchors: this case would test only its base"
    base = S.Threshold(threshold=args.pop("threshold")) if args.pop("base", "dawn") == "threshold" else DAWN
    rule = S.Axon(base=base, sink=0.05, **args)
    _check(x, nfe, jdlm.decode(params, prompt, _attention_strategy(rule)), prompt.shape[1])


@pytest.mark.parametrize("selector", ["fixed1", "cover"])
def test_axon_anchor_selection_on_random_attention(selector):
    """The selector alone against the reference's, on peaked random attention maps (the tiny model's are nearly
    uniform, so one anchor always covers as much as the base's set there, and "cover" never takes a second)."""
    from jdlm.decoding.rule import Context

    rng = np.random.default_rng(0)
    L, W, start = 14, 8, 4
    most = 0
    for _ in range(60):
        attention = rng.dirichlet(np.full(L, 0.5), size=L).astype(np.float32)
        conf = rng.uniform(0.1, 0.95, size=L)
        masked = np.zeros(L, bool)
        masked[start:start + W] = rng.uniform(size=W) < 0.8
        masked[start] = True
        target = float(rng.uniform(0, 0.3))
        ref = samplers.axon_anchors(torch.as_tensor(conf), torch.as_tensor(masked), torch.as_tensor(attention),
                                    target, selector=selector, tau_sink=0.1).numpy()[start:start + W]
        context = Context(attention=attention[None, start:start + W], column_mean=attention.mean(0)[None],
                          key_confidence=np.zeros((1, L), np.float32), masked=masked[None],
                          block_start=np.int32(start), step_in_block=np.int32(0))
        block = masked[None, start:start + W]
        c = np.where(block, conf[None, start:start + W], 0).astype(np.float32)
        ours = S.Axon(selector=selector, sink=0.1).anchors(c, block, context, np.float32([target]))
        np.testing.assert_array_equal(np.asarray(ours)[0], ref)
        most = max(most, int(ref.sum()))
    assert most == 1 if selector == "fixed1" else most > 2
