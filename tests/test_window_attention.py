"""The window-against-cache attention kernel (jdlm/kernels/window_attention.py), run by Pallas's interpreter on CPU:
against XLA's attention (float32 and bfloat16, one query head per kv head and grouped, masks that empty whole chunks
and whole rows), its chunk choice, when it declines, its lowering for CUDA, and the model's cached forward and a
dual-cache decode with it against without, and its place in a decode at LLaDA-8B shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdlm
from jdlm import strategies as S
from jdlm.config import llada_8b
from jdlm.decoding import loop
from jdlm.kernels import window_attention as W
from jdlm.model import KVCache, forward, init_params, param_shapes


def operands(B, T, N, K, H, S, dtype=jnp.float32, seed=0):
    """Random q [B, T, N, H], k, v [B, S, K, H] (scores of order 1-3, so the softmax is neither flat nor one-hot)."""
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal(s) * 1.5, dtype) for s in ((B, T, N, H), (B, S, K, H), (B, S, K, H)))
    return q, k, v


def padding_mask(B, T, S, lengths):
    """[B, 1, T, S]: row b's queries see keys [0, lengths[b]), as a left-to-right key mask; and each query q sees key
    S - T + q (its own position at the end of the cache), so no row is empty."""
    keys = np.arange(S)[None, :] < np.asarray(lengths)[:, None]  # [B, S]
    own = (S - T + np.arange(T))[:, None] == np.arange(S)[None, :]  # [T, S]
    return jnp.asarray(keys[:, None, None, :] | own[None, None])


def xla(q, k, v, mask):
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


CASES = [  # (B, T, N, K, H, S, mask lengths or None, kernel arguments)
    (2, 32, 2, 2, 64, 256, (100, 256), {}),  # N == K; chunks of 64: row 0 sees none of keys 128-191
    (2, 32, 4, 2, 64, 256, (40, 200), {"chunk": 64, "block_k": 32}),  # GQA; 4 chunks of 2 steps; empty chunks
    (1, 16, 4, 2, 32, 128, None, {"chunk": 32}),  # no mask, 4 chunks
    (2, 8, 2, 1, 16, 64, (30, 64), {"chunk": 16}),  # 8 queries padded to 16 rows; one kv head for both query heads
    (1, 24, 2, 2, 64, 96, (50,), {"chunk": 32, "block_k": 16}),  # T = 24 padded to 32; 3 chunks of 2 steps
    (1, 64, 2, 2, 128, 48, (20,), {}),  # T = 64 (the most), H = 128, S = 48: three chunks of 16
    (2, 16, 4, 2, 32, 128, (40, 128), {"chunk": 128, "block_k": 32}),  # one chunk of 4 steps, normalised in-kernel
]


def case_id(case):
    B, T, N, K, H, S, lengths, kwargs = case
    extra = "-".join(f"{a}{b}" for a, b in kwargs.items())
    return f"B{B}-T{T}-N{N}-K{K}-H{H}-S{S}-{'mask' if lengths else 'nomask'}{'-' + extra if extra else ''}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kernel_matches_xla_attention_in_float32(case):
    B, T, N, K, H, S, lengths, kwargs = case
    q, k, v = operands(B, T, N, K, H, S)
    mask = None if lengths is None else padding_mask(B, T, S, lengths)
    out = W.window_attention(q, k, v, mask, interpret=True, **kwargs)
    assert out.shape == q.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), np.asarray(xla(q, k, v, mask)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_matches_float32_attention_to_its_rounding(dtype):
    """bf16 / f16 operands: the kernel's output lies as close to float32 attention over the same (rounded) operands
    as XLA's half-precision attention does (its probabilities rounded to the dtype before the value product)."""
    B, T, N, K, H, S = 2, 32, 4, 2, 64, 256
    q, k, v = operands(B, T, N, K, H, S, dtype)
    mask = padding_mask(B, T, S, (70, 256))
    out = W.window_attention(q, k, v, mask, interpret=True, chunk=128, block_k=32)
    assert out.dtype == dtype
    wide = np.asarray(xla(*(a.astype(jnp.float32) for a in (q, k, v)), mask))
    ours = np.abs(np.asarray(out, np.float32) - wide).max()
    theirs = np.abs(np.asarray(xla(q, k, v, mask), np.float32) - wide).max()
    assert ours <= max(theirs, float(jnp.finfo(dtype).eps) * np.abs(wide).max())


@pytest.mark.parametrize("chunk", [32, 128], ids=["4-chunks", "1-chunk"])
def test_a_row_with_no_allowed_key_gets_the_mean_value_as_xla_does(chunk):
    """Fully masked rows and chunks stay finite: XLA's attention gives a row with no allowed key the mean of the
    values (every score at the same large negative); so does the kernel, through its combine or in one chunk."""
    B, T, N, K, H, S = 1, 16, 2, 2, 32, 128
    q, k, v = operands(B, T, N, K, H, S, seed=3)
    mask = np.zeros((B, 1, T, S), bool)
    mask[0, 0, :8, 60:70] = True  # queries 0-7 see keys 60-69 (chunk 1 of 4); queries 8-15 see nothing
    out = np.asarray(W.window_attention(q, k, v, jnp.asarray(mask), interpret=True, chunk=chunk, block_k=16))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, np.asarray(xla(q, k, v, jnp.asarray(mask))), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[0, 8:], np.broadcast_to(np.asarray(v).mean(axis=1), (8, N, H)), atol=1e-5)


def test_one_mask_shared_by_every_row():
    """A [1, 1, T, S] mask (as forward builds from a causal or shared attn_mask) applies to every batch row."""
    q, k, v = operands(3, 16, 2, 2, 32, 64, seed=4)
    mask = padding_mask(1, 16, 64, (20,))
    out = W.window_attention(q, k, v, mask, interpret=True, chunk=16)
    np.testing.assert_allclose(np.asarray(out), np.asarray(xla(q, k, v, mask)), rtol=1e-5, atol=1e-5)


def test_default_chunk_fills_an_h100_without_needless_partials():
    # LLaDA-8B, S = 512: 4 chunks x 32 kv heads = 128 programs at B = 1; at B = 8 one chunk: 256 programs.
    assert W.default_chunk(1, 32, 512) == 128 and W.default_chunk(8, 32, 512) == 512
    assert W.default_chunk(1, 32, 2304) == 256  # prompt 2048 + 256: 9 chunks x 32 = 288 programs
    assert W.default_chunk(1, 4, 512) == 64  # Dream-7B's 4 kv heads: not below 64 keys for more programs
    assert W.default_chunk(1, 2, 48) == 16  # only 16 divides 48
    assert W.default_chunk(1, 32, 520) is None  # no power-of-two chunk >= 16 divides 520
    for batch, heads, keys in [(1, 32, 512), (8, 32, 512), (1, 32, 2304)]:
        assert batch * heads * keys // W.default_chunk(batch, heads, keys) >= W.MIN_PROGRAMS


def test_bad_chunks_are_refused():
    q, k, v = operands(1, 16, 2, 2, 32, 64)
    for kwargs in ({"chunk": 48}, {"chunk": 32, "block_k": 64}, {"chunk": 32, "block_k": 8}, {"chunk": 24}):
        with pytest.raises(ValueError, match="chunk"):
            W.window_attention(q, k, v, interpret=True, **kwargs)


@pytest.fixture(autouse=True)
def kernel_mode_restored():
    with W.use_kernel("auto"):  # each test starts in "auto" and leaves the mode as it found it
        yield


def test_kernel_attention_declines_what_it_does_not_take():
    q, k, v = operands(1, 16, 4, 2, 32, 64)
    mask = padding_mask(1, 16, 64, (30,))
    assert W.kernel_attention(q, k, v, mask) is None  # auto: only on a GPU
    with W.use_kernel("on"):
        np.testing.assert_allclose(np.asarray(W.kernel_attention(q, k, v, mask)), np.asarray(xla(q, k, v, mask)),
                                   rtol=1e-5, atol=1e-5)
        long_q, long_k, long_v = operands(1, 65, 2, 2, 32, 80)
        assert W.kernel_attention(long_q, long_k, long_v, None) is None  # 65 queries: a prefill, not a window
        assert W.kernel_attention(*operands(1, 16, 2, 2, 48, 64), None) is None  # head dim 48
        assert W.kernel_attention(*operands(1, 16, 2, 2, 32, 40), None) is None  # no chunk divides S = 40
        assert W.kernel_attention(q, k.astype(jnp.bfloat16), v, mask) is None  # mixed dtypes
        assert W.kernel_attention(q, k, v, mask[:, :, :8]) is None  # a mask of another shape
    with W.use_kernel("off"):
        assert W.kernel_attention(q, k, v, mask) is None
    with pytest.raises(ValueError, match="unknown attention kernel mode"):
        W.set_mode("always")


@pytest.mark.parametrize("shape", [(1, 32, 32, 32, 512), (8, 32, 32, 32, 512), (8, 32, 28, 4, 2304)],
                         ids=["llada-8b-B1", "llada-8b-B8-one-chunk", "dream-7b-B8"])
def test_kernel_lowers_to_one_triton_call_for_a_gpu(shape):
    """Lowered for CUDA on this CPU-only machine: Pallas's Triton lowering accepts the kernel at 8B shapes (bf16,
    head dim 128, a mask; Dream's 7 query heads per kv head), one program per (row, kv head, chunk)."""
    B, T, N, K, S = shape
    q = jax.ShapeDtypeStruct((B, T, N, 128), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((B, S, K, 128), jnp.bfloat16)
    mask = jax.ShapeDtypeStruct((B, 1, T, S), jnp.bool_)
    fn = jax.jit(lambda q, k, v, m: W.window_attention(q, k, v, m, interpret=False))
    h100 = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=h100)):
        text = fn.trace(q, kv, kv, mask).lower(lowering_platforms=("cuda",)).as_text()
    calls = [line for line in text.splitlines() if "custom_call" in line and "triton" in line]
    chunks = S // W.default_chunk(B, K, S)
    assert len(calls) == 1
    for attribute in (f"grid_x = {B} ", f"grid_y = {K} ", f"grid_z = {chunks} ", "num_warps = 4 "):
        assert attribute in calls[0]


# ---------------------------------------------------------------- in the model


@pytest.fixture(scope="module")
def dream_params():
    """Dream's layout: biases, grouped kv heads (4 query heads on 2), shifted logits."""
    cfg = jdlm.tiny(family="dream", n_kv_heads=2, qkv_bias=True, logits_shift=True)
    return init_params(cfg, jax.random.key(4), jnp.float32, std=0.3)


def _cached_logits(params, tokens, key_mask, mode):
    """Logits of a window of 8 at position 16 against a cache of 32 built by a full forward, with the kernel `mode`
    (traced afresh: the mode is read at trace time), and the jaxpr."""
    def step(p, t, m):
        cache = forward(p, t, key_mask=m, return_cache=True).cache
        window = jax.lax.dynamic_slice_in_dim(t, 16, 8, axis=1)
        return forward(p, window, key_mask=m, cache=KVCache(k=cache.k, v=cache.v), window_start=16).logits

    with W.use_kernel(mode):
        fn = jax.jit(step)
        return np.asarray(fn(params, tokens, key_mask)), str(jax.make_jaxpr(fn)(params, tokens, key_mask))


def test_cached_forward_runs_the_kernel_once_a_layer_and_matches_the_fused_attention(dream_params):
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, 250, (2, 32)), jnp.int32)
    key_mask = jnp.arange(32)[None] >= jnp.asarray([[0], [5]])  # row 1 left-padded by 5
    on, jaxpr_on = _cached_logits(dream_params, tokens, key_mask, "on")
    off, jaxpr_off = _cached_logits(dream_params, tokens, key_mask, "off")
    assert jaxpr_on.count("pallas_call") == dream_params.config.n_layers and "pallas_call" not in jaxpr_off
    np.testing.assert_allclose(on, off, rtol=1e-5, atol=1e-5 * np.abs(off).max())
    assert np.abs(off).max() > 1  # logits of substance


def test_full_forward_keeps_the_fused_attention(dream_params):
    tokens = jnp.zeros((1, 16), jnp.int32)
    with W.use_kernel("on"):
        assert "pallas_call" not in str(jax.make_jaxpr(lambda p, t: forward(p, t).logits)(dream_params, tokens))


def test_dual_cache_decode_with_the_kernel_gives_the_same_tokens(dream_params):
    """The whole decode loop (dual cache: cached steps of a window of 8 against 32 keys, one row left-padded) writes
    the same tokens with the kernel in every cached step as without."""
    prompt = np.random.default_rng(6).integers(3, 240, (2, 16)).astype(np.int32)
    prompt_mask = np.arange(16)[None] >= np.array([[0], [4]])
    strategy = S.parse_strategy("low_confidence dual gen_length=16 block_length=8 steps=16")
    tokens = {}
    for mode in ("off", "on"):
        loop._decode_loop.clear_cache()  # the kernel mode is read when the loop is traced
        with W.use_kernel(mode):
            tokens[mode] = np.asarray(jdlm.decode(dream_params, prompt, strategy, prompt_mask=prompt_mask).tokens)
            traced = loop._decode_loop.trace(*loop._arguments(dream_params, prompt, strategy, None, prompt_mask))
            assert ("pallas_call" in str(traced.jaxpr)) == (mode == "on")
    loop._decode_loop.clear_cache()
    np.testing.assert_array_equal(tokens["on"], tokens["off"])
    assert len(np.unique(tokens["on"][:, -16:])) > 2  # a decode of varied tokens, not one repeated id


def test_llada_8b_dual_cache_decode_takes_the_kernel_in_every_layer():
    """At LLaDA-8B's shapes (parameters as shapes only: nothing allocated), prompt 256 and 256 tokens in blocks of
    32, the decode's cached step (32 queries against 512 keys) runs the kernel once a layer; the full forwards
    (512 queries) keep the fused attention."""
    params = param_shapes(llada_8b())
    strategy = S.parse_strategy("low_confidence dual gen_length=256 block_length=32 steps=256")
    arguments = loop._arguments(params, np.zeros((1, 256), np.int32), strategy, None, None)
    for mode, calls in (("off", 0), ("on", 32)):
        loop._decode_loop.clear_cache()
        with W.use_kernel(mode):
            assert str(loop._decode_loop.trace(*arguments).jaxpr).count("pallas_call") == calls
    loop._decode_loop.clear_cache()


def test_the_cli_runs_the_kernel_unless_told_not_to(dream_params):
    """"auto" is the default (the fixture sets it, as a fresh process has it); every model command's
    --no-attention-kernel turns it off for the process."""
    from jdlm.cli import build_parser
    from jdlm.cli.common import runtime_layout

    parser = build_parser()
    for command in ("generate", "chat", "eval", "bench"):
        assert parser.parse_args([command]).attention_kernel
        assert not parser.parse_args([command, "--no-attention-kernel"]).attention_kernel
    runtime_layout(parser.parse_args(["bench"]), dream_params)
    assert W.current_mode() == "auto"
    runtime_layout(parser.parse_args(["bench", "--no-attention-kernel"]), dream_params)
    assert W.current_mode() == "off"


def test_generate_turns_the_kernel_off_before_it_prefetches_its_decode(monkeypatch, tmp_path):
    """`jdlm generate --no-attention-kernel` looks its decode up in the store of compiled decodes (whose keys hold
    the kernels' modes) with the kernel already off, not under "auto" (the program of the other mode)."""
    from jdlm import decoding
    from jdlm.cli import build_parser
    from jdlm.cli.common import build_strategy, prefetch_for_prompt

    modes = []
    monkeypatch.setattr(decoding, "prefetch", lambda *args, **kwargs: modes.append(W.current_mode()))
    monkeypatch.setenv("JDLM_COMPILATION_CACHE", str(tmp_path))
    args = build_parser().parse_args(["generate", "-m", "tiny", "--no-attention-kernel", "hi"])
    try:
        tokenizer = prefetch_for_prompt(args, build_strategy(args), [{"role": "user", "content": "hi"}], steps=False)
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
    assert tokenizer is not None and modes == ["off"]


def test_generate_keeps_the_tokenizer_when_its_prefetch_fails(monkeypatch, tmp_path):
    """A prompt too long for the model fails the prefetch (the decode after the load says so, as before); the
    tokenizer it loaded is still handed to `load_model` rather than loaded a second time."""
    from jdlm.cli import build_parser
    from jdlm.cli.common import build_strategy, prefetch_for_prompt

    monkeypatch.setenv("JDLM_COMPILATION_CACHE", str(tmp_path))
    args = build_parser().parse_args(["generate", "-m", "tiny", "hi"])
    try:
        tokenizer = prefetch_for_prompt(args, build_strategy(args), [{"role": "user", "content": "hi " * 400}],
                                        steps=False)
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
    assert tokenizer is not None and tokenizer.encode("sudoku:") == jdlm.load("tiny")[1].encode("sudoku:")


def test_auto_takes_the_kernel_on_a_gpu_only_without_grouped_query_attention(monkeypatch):
    """Measured on an H100: faster than cuDNN for LLaDA-8B (32 kv heads for 32 query heads), slower for Dream-7B
    (4 for 28). "auto" on a (faked) GPU runs it for the first kind only; "on" runs it for both."""
    monkeypatch.setattr(W.SWITCH, "auto_applies", lambda: True)
    one_kv_head_each = operands(1, 16, 4, 4, 32, 64)
    grouped = operands(1, 16, 4, 2, 32, 64)
    assert W.kernel_attention(*one_kv_head_each, None) is not None  # Pallas's interpreter here
    assert W.kernel_attention(*grouped, None) is None
    with W.use_kernel("on"):
        assert W.kernel_attention(*grouped, None) is not None
