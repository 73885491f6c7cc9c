"""Self-checks of the PyTorch reference (tests/reference/): the model against transformers, caches, samplers."""

from __future__ import annotations

import pytest
import torch

from tests.reference import samplers as S
from tests.reference.make_fixtures import (
    EOS_ID, MASK_ID, load_ref_model, load_state_dict, tiny_dream_checkpoint, tiny_llada_checkpoint)
from tests.reference.torch_dlm import RefModel, one_thread, padded_position_ids

FAMILIES = ["llada", "dream"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for fam, make in (("llada", tiny_llada_checkpoint), ("dream", tiny_dream_checkpoint)):
        d = tmp_path_factory.mktemp(fam)
        out[fam] = (d, make(d, seed=0))
    return out


@pytest.fixture(scope="module")
def models(checkpoints):
    return {fam: load_ref_model(d) for fam, (d, _) in checkpoints.items()}


def prompt(B=1, P=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, 200, (B, P), generator=g)


# --- model ------------------------------------------------------------------------------------------------------

def hf_bidirectional_logits(family: str, config: dict, state: dict, x: torch.Tensor) -> torch.Tensor:
    """transformers' own Llama / Qwen2 decoder layers, run with an all-zero additive mask (no causal mask)."""
    from transformers import LlamaConfig, LlamaModel, Qwen2Config, Qwen2Model

    if family == "llada":
        c = config
        cfg = LlamaConfig(vocab_size=c["embedding_size"], hidden_size=c["d_model"],
                          intermediate_size=c["mlp_hidden_size"], num_hidden_layers=c["n_layers"],
                          num_attention_heads=c["n_heads"], num_key_value_heads=c["n_kv_heads"],
                          rms_norm_eps=c["rms_norm_eps"], rope_theta=c["rope_theta"], attention_bias=False,
                          mlp_bias=False, max_position_embeddings=512, attn_implementation="eager")
        model = LlamaModel(cfg)
        t = "model.transformer"
        sd = {"embed_tokens.weight": state[f"{t}.wte.weight"], "norm.weight": state[f"{t}.ln_f.weight"]}
        for i in range(c["n_layers"]):
            b = f"{t}.blocks.{i}"
            sd.update({
                f"layers.{i}.input_layernorm.weight": state[f"{b}.attn_norm.weight"],
                f"layers.{i}.self_attn.q_proj.weight": state[f"{b}.q_proj.weight"],
                f"layers.{i}.self_attn.k_proj.weight": state[f"{b}.k_proj.weight"],
                f"layers.{i}.self_attn.v_proj.weight": state[f"{b}.v_proj.weight"],
                f"layers.{i}.self_attn.o_proj.weight": state[f"{b}.attn_out.weight"],
                f"layers.{i}.post_attention_layernorm.weight": state[f"{b}.ff_norm.weight"],
                f"layers.{i}.mlp.gate_proj.weight": state[f"{b}.ff_proj.weight"],
                f"layers.{i}.mlp.up_proj.weight": state[f"{b}.up_proj.weight"],
                f"layers.{i}.mlp.down_proj.weight": state[f"{b}.ff_out.weight"]})
        head = state[f"{t}.ff_out.weight"]
    else:
        c = config
        cfg = Qwen2Config(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                          intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"],
                          num_attention_heads=c["num_attention_heads"], num_key_value_heads=c["num_key_value_heads"],
                          rms_norm_eps=c["rms_norm_eps"], rope_theta=c["rope_theta"], max_position_embeddings=512,
                          attn_implementation="eager")
        model = Qwen2Model(cfg)
        sd = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        head = state["lm_head.weight"]
    model.load_state_dict(sd, strict=True)
    model.eval()
    B, T = x.shape
    with torch.no_grad(), one_thread():
        h = model.embed_tokens(x)
        pos = torch.arange(T)[None].expand(B, T)
        rope = model.rotary_emb(h, position_ids=pos)
        zero_mask = torch.zeros(B, 1, T, T)  # additive: nothing masked, so attention is bidirectional
        for layer in model.layers:
            h = layer(h, attention_mask=zero_mask, position_embeddings=rope, position_ids=pos)
            h = h[0] if isinstance(h, tuple) else h
        return model.norm(h) @ head.T


@pytest.mark.parametrize("family", FAMILIES)
def test_model_matches_transformers(family, checkpoints, models):
    d, config = checkpoints[family]
    x = prompt(B=2, P=24, seed=1)
    want = hf_bidirectional_logits(family, config, load_state_dict(d), x)
    got = models[family](x)
    assert (got - want).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_sharded_checkpoint_loads_identically(family, tmp_path, models):
    make = tiny_llada_checkpoint if family == "llada" else tiny_dream_checkpoint
    make(tmp_path, seed=0, shards=2)
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert (tmp_path / "model-00002-of-00002.safetensors").exists()
    x = prompt(B=1, P=10)
    assert torch.equal(load_ref_model(tmp_path)(x), models[family](x))


def test_loader_rejects_unknown_and_missing_tensors(checkpoints):
    d, config = checkpoints["llada"]
    state = load_state_dict(d)
    with pytest.raises(ValueError, match="not used"):
        RefModel.from_state_dict("llada", config, {**state, "extra.weight": torch.zeros(1)})
    missing = dict(state)
    missing.pop("model.transformer.ln_f.weight")
    with pytest.raises(KeyError, match="ln_f"):
        RefModel.from_state_dict("llada", config, missing)
    with pytest.raises(ValueError, match="alibi"):
        RefModel.from_state_dict("llada", {**config, "alibi": True}, state)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padding_with_relative_positions_matches_unpadded(family, models):
    m = models[family]
    x = prompt(B=1, P=12, seed=2)
    padded = torch.cat([torch.ones(1, 4, dtype=torch.long), x], dim=1)
    am = torch.cat([torch.zeros(1, 4), torch.ones(1, 12)], dim=1).bool()
    got = m(padded, attention_mask=am, position_ids=padded_position_ids(am))[:, 4:]
    assert torch.isfinite(m(padded, attention_mask=am)).all()
    assert (got - m(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_forwards_equal_full_forward_when_nothing_changed(family, models):
    m = models[family]
    x = prompt(B=2, P=32, seed=3)
    x[:, 20:] = MASK_ID
    full = m(x)
    logits, kv = m.forward_full_with_cache(x)
    assert torch.equal(logits, full)
    assert len(kv) == 2 and kv[0][0].shape == (2, m.config.n_kv_heads, 32, 16)
    start, W = 16, 8
    dual = m.forward_window(x[:, start:start + W], kv, mode="dual", start=start)
    prefix = m.forward_window(x[:, start:], kv, mode="prefix", start=start)
    assert (dual - full[:, start:start + W]).abs().max().item() <= 1e-5
    assert (prefix - full[:, start:]).abs().max().item() <= 1e-5


def test_windows_use_fresh_tokens(models):
    m = models["llada"]
    x = prompt(B=1, P=24, seed=4)
    x[:, 8:] = MASK_ID
    _, kv = m.forward_full_with_cache(x)
    x2 = x.clone()
    x2[:, 8:12] = torch.tensor([5, 6, 7, 8])
    exact = m(x2)
    # A window covering the whole sequence replaces every cached key/value: exact again.
    assert (m.forward_window(x2, kv, mode="prefix", start=0) - exact).abs().max().item() <= 1e-5
    assert (m.forward_window(x2, kv, mode="dual", start=0) - exact).abs().max().item() <= 1e-5
    # A block window sees the new tokens, but the suffix keys/values are stale: close to neither.
    dual = m.forward_window(x2[:, 8:16], kv, mode="dual", start=8)
    assert not torch.allclose(dual, exact[:, 8:16], atol=1e-4)
    assert not torch.allclose(dual, m(x)[:, 8:16], atol=1e-4)


# --- selection rules ----------------------------------------------------------------------------------------------

def test_count_schedule_example():
    assert S.count_schedule(10, 4) == [3, 3, 2, 2]
    assert S.count_schedule(3, 5) == [1, 1, 1, 0, 0]


def test_topk_stable_breaks_ties_by_lowest_index():
    conf = torch.tensor([0.5, 0.9, 0.5, 0.9, float("-inf")])
    assert S.topk_stable(conf, 3).tolist() == [1, 3, 0]


def test_threshold_rule_commits_at_least_one():
    masked = torch.tensor([True, True, True, False])
    conf = torch.tensor([0.2, 0.3, 0.1, float("-inf")], dtype=torch.float64)
    assert S.threshold_select(conf, masked, 0.9).tolist() == [False, True, False, False]
    conf = torch.tensor([0.95, 0.3, 0.91, float("-inf")], dtype=torch.float64)
    assert S.threshold_select(conf, masked, 0.9).tolist() == [True, False, True, False]


def _factor(confs, factor=1.0):
    conf = torch.tensor(confs, dtype=torch.float64)
    return int(S.factor_select(conf, torch.ones(len(confs), dtype=torch.bool), factor).sum())


def test_factor_rule_and_its_quirk():
    # thresholds for ranks 1..4 with factor 1: -1, 2/3, 3/4, 4/5
    assert _factor([0.99, 0.10, 0.10, 0.10]) == 1      # rank 2 fails
    assert _factor([0.99, 0.90, 0.10, 0.10]) == 2      # rank 3 fails
    assert _factor([0.99, 0.90, 0.80, 0.10]) == 4      # quirk: the last rank fails, yet all are committed
    assert _factor([0.99, 0.90, 0.80, 0.85]) == 4      # every rank passes
    assert _factor([0.30]) == 1
    assert _factor([0.99, 0.10]) == 2                  # N = 2: rank 2 is the last rank, so the quirk applies
    assert int(S.factor_select(torch.tensor([float("-inf")]), torch.tensor([False]), 1.0).sum()) == 0


# --- samplers -----------------------------------------------------------------------------------------------------

def assert_decoded(x, p):
    assert not (x == MASK_ID).any()
    assert torch.equal(x[:, :p.shape[1]], p)


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_llada_generate(models, remasking, cfg_scale):
    p = prompt(B=2, P=6)
    rand_fn = lambda step, start, bl, B: torch.rand(B, bl, generator=torch.Generator().manual_seed(step))  # noqa: E731
    x, nfe = S.llada_generate(models["llada"], p, steps=8, gen_length=16, block_length=8, mask_id=MASK_ID,
                              remasking=remasking, cfg_scale=cfg_scale, rand_fn=rand_fn)
    assert_decoded(x, p)
    assert nfe == 8


def test_llada_generate_steps_more_than_masks_and_eos_options(models):
    p = prompt(B=1, P=6)
    x, nfe = S.llada_generate(models["llada"], p, steps=12, gen_length=8, block_length=4, mask_id=MASK_ID)
    assert_decoded(x, p)
    assert nfe == 12  # s = 6 > m = 4: the last two steps of each block commit nothing but still run
    x, _ = S.llada_generate(models["llada"], p, steps=8, gen_length=8, block_length=8, mask_id=MASK_ID,
                            logits_eos_inf=True, eos_id=1)
    assert not (x[:, 6:] == 1).any()
    x, _ = S.llada_generate(models["llada"], p, steps=8, gen_length=8, block_length=8, mask_id=MASK_ID,
                            confidence_eos_eot_inf=True, eos_id=1, eot_id=2)
    assert_decoded(x, p)


def test_llada_generate_padded_batch_matches_single(models):
    m = models["llada"]
    short, long_ = prompt(B=1, P=5, seed=7), prompt(B=1, P=8, seed=8)
    batch = torch.cat([torch.cat([torch.ones(1, 3, dtype=torch.long), short], 1), long_])
    am = torch.ones(2, 8, dtype=torch.bool)
    am[0, :3] = False
    x, _ = S.llada_generate(m, batch, steps=8, gen_length=8, block_length=4, mask_id=MASK_ID, attention_mask=am,
                            pad_position_ids=True)
    x_short, _ = S.llada_generate(m, short, steps=8, gen_length=8, block_length=4, mask_id=MASK_ID)
    x_long, _ = S.llada_generate(m, long_, steps=8, gen_length=8, block_length=4, mask_id=MASK_ID)
    assert torch.equal(x[0, 3:], x_short[0]) and torch.equal(x[1], x_long[0])


def test_prompt_with_mask_is_rejected(models):
    p = prompt()
    p[0, 2] = MASK_ID
    with pytest.raises(ValueError, match="mask id"):
        S.llada_generate(models["llada"], p, steps=4, gen_length=4, block_length=4, mask_id=MASK_ID)


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy", "origin"])
def test_dream_sample(models, alg):
    p = prompt(B=2, P=6)
    x, nfe = S.dream_sample(models["dream"], p, steps=6, max_new_tokens=16, alg=alg, mask_id=MASK_ID)
    assert_decoded(x, p)
    assert nfe == 6


def test_dream_sample_filters_and_padding(models):
    m = models["dream"]
    p = prompt(B=1, P=6)
    x, _ = S.dream_sample(m, p, steps=8, max_new_tokens=8, top_p=0.9, top_k=5, mask_id=MASK_ID)
    assert_decoded(x, p)
    short, long_ = prompt(B=1, P=4, seed=9), prompt(B=1, P=6, seed=10)
    batch = torch.cat([torch.cat([torch.ones(1, 2, dtype=torch.long), short], 1), long_])
    am = torch.ones(2, 6, dtype=torch.long)
    am[0, :2] = 0
    x, _ = S.dream_sample(m, batch, steps=8, max_new_tokens=8, mask_id=MASK_ID, attention_mask=am)
    xs, _ = S.dream_sample(m, short, steps=8, max_new_tokens=8, mask_id=MASK_ID)
    xl, _ = S.dream_sample(m, long_, steps=8, max_new_tokens=8, mask_id=MASK_ID)
    assert torch.equal(x[0, 2:], xs[0]) and torch.equal(x[1], xl[0])


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
@pytest.mark.parametrize("rule", ["counts", "threshold", "factor"])
def test_fastdllm_llada(models, cache, rule):
    p = prompt(B=1, P=6)
    kw = {"counts": dict(steps=8), "threshold": dict(threshold=0.3), "factor": dict(factor=1.0)}[rule]
    x, nfe = S.fastdllm_generate(models["llada"], p, gen_length=16, block_length=8, cache=cache,
                                 mask_id=MASK_ID, **kw)
    assert_decoded(x, p)
    if rule == "counts":
        assert nfe == 8  # s = 4 <= m = 8: exactly s forwards per block (the first one full when cached)
    else:
        assert 2 <= nfe <= 16


def test_fastdllm_llada_counts_stops_when_block_is_full(models):
    p = prompt(B=1, P=6)
    _, nfe = S.fastdllm_generate(models["llada"], p, gen_length=8, block_length=4, steps=12, mask_id=MASK_ID)
    assert nfe == 8  # min(s = 6, m = 4) per block, where LLaDA generate would run 12


def test_fastdllm_threshold_commits_at_least_one_per_step(models):
    p = prompt(B=1, P=6)
    for cache in (None, "prefix", "dual"):
        x, nfe = S.fastdllm_generate(models["llada"], p, gen_length=8, block_length=4, threshold=1.01,
                                     cache=cache, mask_id=MASK_ID)
        assert_decoded(x, p)
        assert nfe == 8  # exactly one token per forward
    x, nfe = S.fastdllm_generate(models["dream"], p, gen_length=8, block_length=4, threshold=1.01,
                                 cache="dual", mask_id=MASK_ID, family="dream")
    assert_decoded(x, p)
    assert nfe == 8  # the block-start forward commits the first position, then one per forward


def test_fastdllm_counts_without_cache_matches_llada_generate_when_s_equals_m(models):
    # With counts, cache=None and s = m, Fast-dLLM's generate is LLaDA generate with float64 confidences.
    p = prompt(B=1, P=6, seed=11)
    a, _ = S.fastdllm_generate(models["llada"], p, gen_length=8, block_length=4, steps=8, mask_id=MASK_ID)
    b, _ = S.llada_generate(models["llada"], p, gen_length=8, block_length=4, steps=8, mask_id=MASK_ID)
    assert torch.equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_fastdllm_wasted_forward_flag(models, family, cache):
    p = prompt(B=1, P=6)
    # block_length 1: the block-start forward fills the block, so upstream's do-while runs one useless forward.
    kw = dict(gen_length=4, block_length=1, threshold=0.5, cache=cache, mask_id=MASK_ID, family=family)
    x1, nfe_skip = S.fastdllm_generate(models[family], p, **kw)
    x2, nfe_ref = S.fastdllm_generate(models[family], p, skip_wasted_forward=False, **kw)
    assert torch.equal(x1, x2)
    assert (nfe_skip, nfe_ref) == (4, 8)


def test_fastdllm_llada_counts_one_step_per_block(models):
    p = prompt(B=1, P=6)
    x, nfe = S.fastdllm_generate(models["llada"], p, gen_length=8, block_length=4, steps=2, cache="dual",
                                 mask_id=MASK_ID)
    assert_decoded(x, p)
    assert nfe == 2
    _, nfe = S.fastdllm_generate(models["llada"], p, gen_length=8, block_length=4, steps=2, cache="dual",
                                 mask_id=MASK_ID, skip_wasted_forward=False)
    assert nfe == 4  # upstream crashes here (it reads a second count); we count the empty forward


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
def test_fastdllm_dream(models, cache):
    p = prompt(B=2, P=6)
    x, nfe = S.fastdllm_generate(models["dream"], p, gen_length=16, block_length=8, threshold=0.4, cache=cache,
                                 mask_id=MASK_ID, family="dream")
    assert_decoded(x, p)
    assert 2 <= nfe <= 16


# --- LLaDA EOS options and Dream "origin" ------------------------------------------------------------------------

EOT_ID = 2
VOCAB = 256


class Recorded:
    """A reference model with a fixed [L, V] table added to its logits (every row); records every input x."""

    def __init__(self, model, bump=None):
        self.model, self.bump, self.inputs = model, bump, []

    def __call__(self, x, **kwargs):
        self.inputs.append(x.clone())
        logits = self.model(x, **kwargs)
        return logits if self.bump is None else logits + self.bump[:x.shape[1]]


def bump_table(L, *entries):
    """[L, V] zeros with `amount` at (position, token) for each (position or None = all, token, amount);
    the mask column is always at -1e30 so that random weights never propose the mask."""
    table = torch.zeros(L, VOCAB)
    table[:, MASK_ID] = -1e30
    for pos, token, amount in entries:
        table[slice(None) if pos is None else pos, token] += amount
    return table


def commit_step(inputs, row, pos):
    """The step at which (row, pos) was committed, from the inputs of consecutive steps (one block)."""
    for i in range(1, len(inputs)):
        if inputs[i][row, pos] != MASK_ID:
            return i - 1
    return len(inputs) - 1


def fixed_gumbel(value):
    """Gumbel-max uniforms all equal: the noised argmax is the plain argmax, yet the temperature > 0 path runs."""
    return lambda step, shape: torch.full(shape, value, dtype=torch.float64)


def seeded_gumbel(step, shape):
    return torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(step))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_llada_logits_eos_inf_never_proposes_eos(models, temperature, cfg_scale):
    p = prompt(B=2, P=6)
    kw = dict(steps=8, gen_length=8, block_length=4, mask_id=MASK_ID, temperature=temperature, cfg_scale=cfg_scale,
              gumbel_fn=seeded_gumbel, eos_id=EOS_ID)
    eos_everywhere = Recorded(models["llada"], bump_table(14, (None, EOS_ID, 30.0)))
    x, _ = S.llada_generate(eos_everywhere, p, **kw)
    assert (x[:, 6:] == EOS_ID).all()  # the bump works: without the option every proposal is EOS
    x, _ = S.llada_generate(eos_everywhere, p, logits_eos_inf=True, **kw)
    assert_decoded(x, p)
    assert not (x[:, 6:] == EOS_ID).any()


@pytest.mark.parametrize("token", [EOT_ID, EOS_ID])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_llada_confidence_eos_eot_inf_gives_confidence_zero_but_commits(models, token, temperature):
    p = prompt(B=1, P=6)
    j = 6 + 1  # the second generated position
    kw = dict(steps=4, gen_length=4, block_length=4, mask_id=MASK_ID, temperature=temperature,
              gumbel_fn=fixed_gumbel(0.5), eos_id=EOS_ID, eot_id=EOT_ID)
    plain = Recorded(models["llada"], bump_table(10, (j, token, 30.0)))
    x, _ = S.llada_generate(plain, p, **kw)
    assert x[0, j] == token and commit_step(plain.inputs, 0, j) == 0  # by far the most confident
    flagged = Recorded(models["llada"], plain.bump)
    x, _ = S.llada_generate(flagged, p, confidence_eos_eot_inf=True, **kw)
    assert_decoded(x, p)
    assert x[0, j] == token  # the proposal is kept: only its confidence changed
    if token == EOT_ID or temperature == 0:
        assert commit_step(flagged.inputs, 0, j) == 3  # confidence 0: last, when it is the only candidate left
    else:
        # Upstream quirk: at temperature > 0 the EOS column is cleared in the noised copy only.
        assert commit_step(flagged.inputs, 0, j) == 0


def test_llada_confidence_eos_eot_inf_every_proposal_eot(models):
    p = prompt(B=1, P=6)
    everywhere = Recorded(models["llada"], bump_table(10, (None, EOT_ID, 30.0)))
    x, _ = S.llada_generate(everywhere, p, steps=4, gen_length=4, block_length=4, mask_id=MASK_ID,
                            confidence_eos_eot_inf=True, eos_id=EOS_ID, eot_id=EOT_ID)
    assert (x[0, 6:] == EOT_ID).all()  # all confidences 0, all still committed (ties: lowest position first)
    assert [commit_step(everywhere.inputs, 0, 6 + g) for g in range(4)] == [0, 1, 2, 3]


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_llada_eos_options_change_only_their_columns(models, remasking, cfg_scale):
    # EOS and EOT already have probability 0 here, so the options must leave every output exactly as before.
    p = prompt(B=2, P=6)
    m = Recorded(models["llada"], bump_table(22, (None, EOS_ID, -1e30), (None, EOT_ID, -1e30)))

    def rand_fn(step, start, block_length, B):
        return torch.rand(B, block_length, generator=torch.Generator().manual_seed(step))

    kw = dict(steps=8, gen_length=16, block_length=8, mask_id=MASK_ID, remasking=remasking, cfg_scale=cfg_scale,
              rand_fn=rand_fn)
    base, _ = S.llada_generate(m, p, **kw)
    both, _ = S.llada_generate(m, p, logits_eos_inf=True, confidence_eos_eot_inf=True, eos_id=EOS_ID,
                               eot_id=EOT_ID, **kw)
    assert torch.equal(base, both)
    assert_decoded(base, p)


class MaskCounts:
    """A Dream `uniform` hook that returns a constant and records each step's mask_index."""

    def __init__(self, value):
        self.value, self.masks = value, []

    def __call__(self, step, mask_index):
        self.masks.append(mask_index.clone())
        return torch.full((int(mask_index.sum()),), self.value)

    def counts(self):
        return [int(m.sum()) for m in self.masks]


def dream_no_mask(models, L):
    return Recorded(models["dream"], bump_table(L))


BELOW_ONE = float(torch.tensor(1.0).nextafter(torch.tensor(0.0)))  # the largest float32 uniform in [0, 1)


def test_dream_origin_one_step_reveals_everything(models):
    p = prompt(B=2, P=6)
    hook = MaskCounts(BELOW_ONE)
    x, nfe = S.dream_sample(dream_no_mask(models, 14), p, steps=1, max_new_tokens=8, alg="origin", mask_id=MASK_ID,
                            uniform=hook)
    assert_decoded(x, p)
    assert nfe == 1 and hook.counts() == [16]
    x_default, _ = S.dream_sample(dream_no_mask(models, 14), p, steps=1, max_new_tokens=8, alg="origin",
                                  mask_id=MASK_ID)
    assert torch.equal(x, x_default)  # greedy tokens; the reveal decision is the only random part


def test_dream_origin_extreme_uniforms(models):
    p = prompt(B=2, P=6)
    kw = dict(steps=5, max_new_tokens=8, alg="origin", mask_id=MASK_ID)
    below_one = MaskCounts(BELOW_ONE)
    x_last, nfe = S.dream_sample(dream_no_mask(models, 14), p, uniform=below_one, **kw)
    assert_decoded(x_last, p)
    assert nfe == 5 and below_one.counts() == [16] * 5  # nothing before the last step, everything at it
    zeros = MaskCounts(0.0)
    x_first, _ = S.dream_sample(dream_no_mask(models, 14), p, uniform=zeros, **kw)
    assert_decoded(x_first, p)
    assert zeros.counts() == [16, 0, 0, 0, 0]  # everything at step 0 (p_0 = 1 - t_1 > 0)
    # Upstream compares u < 1 at the last step: a uniform of exactly 1 (never drawn) reveals nothing at all.
    x_none, _ = S.dream_sample(dream_no_mask(models, 14), p, uniform=MaskCounts(1.0), **kw)
    assert (x_none[:, 6:] == MASK_ID).all()


def test_dream_origin_maps_uniforms_row_major_over_masked_positions(models):
    p = prompt(B=2, P=6)
    G = 8
    early = {0: [1, 5], 1: [0, 6, 7]}  # per row: generated positions whose step-0 uniform is 0

    def grid(step):
        u = torch.full((2, G), 0.99)
        if step == 0:
            for row, cols in early.items():
                u[row, cols] = 0.0
        return u

    masks = []
    base = S.uniforms_from_grid(grid, start=6)

    def uniform(step, mask_index):
        masks.append(mask_index.clone())
        return base(step, mask_index)

    x, _ = S.dream_sample(dream_no_mask(models, 14), p, steps=4, max_new_tokens=G, alg="origin", mask_id=MASK_ID,
                          uniform=uniform)
    assert_decoded(x, p)
    for row, cols in early.items():
        revealed_at_0 = ~masks[1][row, 6:]
        assert revealed_at_0.nonzero()[:, 0].tolist() == cols
    # p_1, p_2 < 0.99: nothing else until the last step.
    assert torch.equal(masks[1], masks[2]) and torch.equal(masks[2], masks[3])


def test_dream_origin_reveal_fraction_matches_schedule():
    B, G, steps, V = 32, 64, 4, 16

    def stub(x, attention_mask=None, position_ids=None):
        logits = torch.zeros(x.shape[0], x.shape[1], V)
        logits[..., 5] = 1.0  # every proposal is token 5 (the mask id 15 is never proposed)
        return logits

    gen = torch.Generator().manual_seed(0)
    hook_masks = []

    def uniform(step, mask_index):
        hook_masks.append(int(mask_index.sum()))
        return torch.rand(hook_masks[-1], generator=gen)

    p = torch.randint(0, 15, (B, 3), generator=torch.Generator().manual_seed(1))
    x, _ = S.dream_sample(stub, p, steps=steps, max_new_tokens=G, alg="origin", mask_id=15, uniform=uniform)
    assert (x[:, 3:] == 5).all()
    ts = torch.linspace(1, 1e-3, steps + 1)
    masked = hook_masks + [0]
    assert masked[0] == B * G
    for i in range(steps - 1):
        want = float(1 - ts[i + 1] / ts[i])
        got = (masked[i] - masked[i + 1]) / masked[i]
        assert abs(got - want) <= 5 * (want * (1 - want) / masked[i]) ** 0.5, (i, got, want)
    assert masked[steps - 1] > 0  # the last step had something left, and revealed all of it


def test_dream_origin_default_stream_is_uniforms_then_tokens(models):
    p = prompt(B=2, P=6)
    kw = dict(steps=4, max_new_tokens=8, alg="origin", mask_id=MASK_ID, temperature=1.0, top_p=0.9)
    torch.manual_seed(3)
    x_default, _ = S.dream_sample(dream_no_mask(models, 14), p, **kw)
    torch.manual_seed(3)
    x_hook, _ = S.dream_sample(dream_no_mask(models, 14), p, uniform=lambda i, m: torch.rand(int(m.sum())), **kw)
    assert torch.equal(x_default, x_hook)
    torch.manual_seed(4)
    x_other, _ = S.dream_sample(dream_no_mask(models, 14), p, **kw)
    assert not torch.equal(x_default, x_other)  # the draws matter, so the equality above says something


def test_dream_origin_sample_hook_gets_revealed_positions(models):
    p = prompt(B=2, P=6)
    calls = []

    def sample(step, probs, revealed):
        calls.append((step, probs.shape, int(revealed.sum())))
        assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[0]))
        return torch.full((probs.shape[0],), 7, dtype=torch.long)

    x, _ = S.dream_sample(dream_no_mask(models, 14), p, steps=4, max_new_tokens=8, alg="origin", mask_id=MASK_ID,
                          temperature=1.0, uniform=S.uniforms_from_grid(lambda i: torch.full((2, 8), 0.5), 6),
                          sample=sample)
    assert (x[:, 6:] == 7).all()
    assert [c[0] for c in calls] == [0, 1, 2, 3]
    assert all(shape == (n, VOCAB) for _, shape, n in calls)
    assert sum(n for _, _, n in calls) == 16
    # top_k = 1 leaves one token per position: sampling then gives the greedy tokens.
    kw = dict(steps=4, max_new_tokens=8, alg="origin", mask_id=MASK_ID,
              uniform=S.uniforms_from_grid(lambda i: torch.full((2, 8), 0.4), 6))
    greedy, _ = S.dream_sample(dream_no_mask(models, 14), p, **kw)
    sampled, _ = S.dream_sample(dream_no_mask(models, 14), p, temperature=1.0, top_k=1, **kw)
    assert torch.equal(greedy, sampled)
