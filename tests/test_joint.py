"""Tests for jdlm.joint: the sampler head, its training (loss falls, resume is exact) and JointSampler in the loop
(k = 1 is the plain rule; token-exact with a NumPy version of ADJUST's inference)."""

import dataclasses
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdlm
from jdlm import strategies as S
from jdlm.decoding import decode
from jdlm.errors import CheckpointError, StrategyError
from jdlm.joint import JointSampler, head_logits, init_head, load_head, save_head
from jdlm.joint.head import base_fingerprint
from jdlm.joint.train import (
    SamplerState,
    SamplerTrainConfig,
    make_step,
    make_trajectories,
    optimizer,
    sample_batch,
    train_sampler,
)
from jdlm.model import Params, init_params, lm_head
from jdlm.training.presets import tiny_mdm_config
from tests.reference.adjust import adjust_greedy

SMALL = {"d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2, "head_dim": 16, "mlp_hidden": 64}
CONFIG = SamplerTrainConfig(tasks={"sudoku": 1.0}, trajectories=12, prompt_length=32, gen_length=16, block_length=8,
                            max_unroll=3, steps=4, batch_size=8, lr=1e-2, warmup=1, save_every=2, log_every=1,
                            trajectory_batch=12)


def peaked_base(family: str = "llada", seed: int = 0) -> Params:
    """Random weights scaled up (std 0.6) so that predictions are peaked, as a trained model's are."""
    config = dataclasses.replace(tiny_mdm_config(), **SMALL)
    if family == "dream":
        config = dataclasses.replace(config, family="dream", logits_shift=True, qkv_bias=True)
    params = init_params(config, jax.random.key(seed))
    return Params(config=config, weights=jax.tree.map(lambda w: w * 30 if w.ndim >= 2 else w, params.weights))


def active_head(config, seed: int = 1):
    """A head that changes the predictions (a new head is the identity: its output norm is zero)."""
    head = init_head(config, jax.random.key(seed), std=0.3)
    loud = jnp.full_like(head.weights["out_norm"], 100.0)
    return dataclasses.replace(head, weights=dict(head.weights, out_norm=loud))


@pytest.fixture(scope="module")
def base():
    return peaked_base()


@pytest.fixture(scope="module")
def tokenizer():
    return jdlm.load("tiny")[1]  # the small-model tokenizer; its ids fit the test model's vocabulary


@pytest.fixture(scope="module")
def trajectories(base, tokenizer):
    return make_trajectories(base, tokenizer, CONFIG)


# ---------------------------------------------------------------------------------------------- training


def test_trajectories_reveal_one_token_per_forward_block_by_block(trajectories):
    assert trajectories.tokens.shape == (12, 16) and trajectories.prompt.shape == (12, 32)
    for order in trajectories.order:
        assert sorted(order) == list(range(16))
        assert sorted(order[:8]) == list(range(8))  # the first block is decoded first
    assert (trajectories.tokens != jdlm.load("tiny")[0].config.mask_id).all()


def test_batches_are_a_function_of_seed_and_step(trajectories):
    a, b = sample_batch(trajectories, CONFIG, 3), sample_batch(trajectories, CONFIG, 3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["t"], sample_batch(trajectories, CONFIG, 4)["t"])
    big = sample_batch(trajectories, dataclasses.replace(CONFIG, batch_size=4000), 0)
    # s_{t+n} still has a masked position in t's block; short unrolls are the common ones
    assert ((big["t"] % 8) + big["n"] <= 7).all()
    counts = np.bincount(big["n"], minlength=4)[1:]
    assert counts[0] > counts[1] > counts[2] > 0


def test_a_training_step_lowers_the_loss_on_a_fixed_batch(base, trajectories):
    config = dataclasses.replace(CONFIG, steps=30, lr=3e-2)
    weights = init_head(base.config, jax.random.key(0)).weights
    state = SamplerState(step=jnp.int32(0), weights=weights, opt_state=optimizer(config).init(weights))
    step = make_step(config, base)
    batch = sample_batch(trajectories, CONFIG, 0)
    rows = batch["rows"]
    arrays = (trajectories.prompt[rows], trajectories.prompt_mask[rows], trajectories.tokens[rows],
              trajectories.order[rows], batch["t"], batch["n"])
    losses = []
    for _ in range(30):
        state, metrics = step(state, *arrays)
        losses.append(float(metrics["loss"]))
    assert losses[0] == pytest.approx(float(metrics["marginal_kl"]), rel=1e-5)  # a new head: the marginals
    assert losses[0] > 0.05
    assert all(later <= earlier + 1e-6 for earlier, later in itertools.pairwise(losses))
    assert losses[-1] < 0.95 * losses[0]


def test_an_interrupted_run_resumes_to_the_same_state(base, tokenizer, trajectories, tmp_path):
    whole = train_sampler(CONFIG, tmp_path / "whole", base=base, tokenizer=tokenizer, progress=False)
    assert int(whole.step) == CONFIG.steps

    def interrupt(step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    run = tmp_path / "interrupted"
    run.mkdir()
    (run / "trajectories.npz").hardlink_to(tmp_path / "whole" / "trajectories.npz")  # the same data, made once
    with pytest.raises(KeyboardInterrupt):
        train_sampler(CONFIG, run, base=base, tokenizer=tokenizer, progress=False, on_step=interrupt)
    resumed = train_sampler(CONFIG, run, base=base, tokenizer=tokenizer, progress=False)
    assert int(resumed.step) == CONFIG.steps
    for a, b in zip(jax.tree.leaves(whole.weights), jax.tree.leaves(resumed.weights)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, CONFIG.steps + 1))  # steps after the checkpoint logged once
    with pytest.raises(ValueError, match="different configuration"):
        train_sampler(dataclasses.replace(CONFIG, lr=0.5), run, base=base, tokenizer=tokenizer, progress=False)


def test_data_parallel_training_matches_one_device(base, tokenizer, tmp_path):
    """The same run on two (simulated) devices, the batch split over them, ends where one device does."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(root / "tests" / "sampler_dp_worker.py"), str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    two = json.loads(run.stdout.strip().splitlines()[-1])
    assert two["devices"] == 2 and two["held_on"] == ["2"] and two["step"] == CONFIG.steps
    one = train_sampler(CONFIG, tmp_path / "one", base=base, tokenizer=tokenizer, progress=False)
    for a, b in zip(jax.tree.leaves(one.weights), two["leaves"]):
        np.testing.assert_allclose(np.asarray(a, np.float64).ravel(), b, rtol=1e-4, atol=1e-6)


def test_head_files_round_trip_and_refuse_another_model(base, tmp_path):
    head = active_head(base.config)
    save_head(tmp_path / "head", head, extra={"note": "test"}, base=base)
    loaded = load_head(tmp_path / "head", base)
    for a, b in zip(jax.tree.leaves(head.weights), jax.tree.leaves(loaded.weights)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(CheckpointError, match="another model"):
        load_head(tmp_path / "head", dataclasses.replace(base.config, d_model=64))
    with pytest.raises(CheckpointError, match="other weights"):  # same shapes, retrained
        load_head(tmp_path / "head", peaked_base(seed=5))
    with pytest.raises(CheckpointError, match="no sampler head"):
        load_head(tmp_path / "missing")


def test_a_head_loads_with_the_base_in_either_dtype(base, tmp_path):
    """A head trained on a bfloat16 load of a float32 checkpoint (`train-sampler --dtype bfloat16`) belongs to its
    float32 load too, and the other way round; a head saved before the fingerprint's rounding still loads."""
    half = Params(config=base.config, weights=jax.tree.map(lambda w: w.astype(jnp.bfloat16), base.weights))
    assert base.dtype == jnp.float32 and not np.array_equal(np.asarray(half.weights["embed"], np.float32),
                                                            np.asarray(base.weights["embed"]))  # rounding changes it
    head = active_head(base.config)
    for saved_with, loaded_with in ((half, base), (base, half)):
        save_head(tmp_path / "head", head, base=saved_with)
        load_head(tmp_path / "head", loaded_with)
    path = tmp_path / "head" / "head.json"
    legacy = {**json.loads(path.read_text()), "base_fingerprint": base_fingerprint(base, jnp.float32)}
    path.write_text(json.dumps(legacy))
    load_head(tmp_path / "head", base)
    other = peaked_base(seed=1)
    with pytest.raises(CheckpointError, match="another model's weights"):
        load_head(tmp_path / "head", other)


def test_an_unreadable_head_json_is_a_checkpoint_error(base, tmp_path):
    save_head(tmp_path / "head", active_head(base.config), base=base)
    path = tmp_path / "head" / "head.json"
    info = json.loads(path.read_text())
    for text, match in (("{not json", "corrupt"), (json.dumps({"storage": "int8"}), "corrupt"),
                        (json.dumps({**info, "base_config": [1]}), "corrupt"),
                        (json.dumps({**info, "storage": "int4"}), "'int4'")):
        path.write_text(text)
        with pytest.raises(CheckpointError, match=match):
            load_head(tmp_path / "head", base)


def test_int8_storage_keeps_the_predictions(base, tmp_path):
    head = active_head(base.config)
    save_head(tmp_path / "float", head, base=base)
    save_head(tmp_path / "int8", head, base=base, storage="int8")
    # The arrays' bytes: orbax's data files (`d/` folders). The rest of a folder this small is ~40% metadata whose size
    # moves from one save to the next (the whole folders' ratio was 0.50-0.56, once 0.68; the data files' 0.36-0.42).
    size = {name: sum(f.stat().st_size for f in (tmp_path / name).rglob("*") if f.is_file() and f.parent.name == "d")
            for name in ("float", "int8")}
    assert size["int8"] < 0.6 * size["float"]
    loaded = load_head(tmp_path / "int8", base)
    assert jax.tree.structure(loaded.weights) == jax.tree.structure(head.weights)
    layer, got = head.weights["layer"], loaded.weights["layer"]
    for name in ("q", "o", "down"):  # round to nearest: within half a step of the channel's scale
        step = np.max(np.abs(np.asarray(layer[name])), axis=tuple(range(1 if name != "o" else 2))) / 127
        assert np.all(np.abs(np.asarray(got[name]) - np.asarray(layer[name])) <= step / 2 + 1e-7)
    hidden = jax.random.normal(jax.random.key(3), (2, 8, base.config.d_model))
    tokens = jnp.full((2, 8), base.config.mask_id).at[:, :3].set(7)
    positions = jnp.broadcast_to(jnp.arange(8), (2, 8))
    _, exact = head_logits(head, base, hidden, tokens, positions)
    _, stored = head_logits(loaded, base, hidden, tokens, positions)
    marginal = lm_head(base, hidden)  # what the head changes: the base's own predictions from `hidden`

    def kl(a, b):
        return float(jnp.mean(jnp.sum(jax.nn.softmax(a) * (jax.nn.log_softmax(a) - jax.nn.log_softmax(b)), -1)))

    assert 0 < kl(exact, stored) < 0.01 * kl(exact, marginal)
    with pytest.raises(ValueError, match="storage"):
        save_head(tmp_path / "bad", head, storage="int4")
    for stored in ("float", "int8"):  # uncommitted: a decode on a mesh may move them (committed ones it refuses)
        assert not any(leaf.committed for leaf in jax.tree.leaves(load_head(tmp_path / stored, base).weights))


def test_the_packaged_head_belongs_to_the_packaged_model():
    params, _ = jdlm.load("tiny", jnp.float32)
    sampler = JointSampler.load("tiny", k=4, base=params)  # checks the architecture and the weights' fingerprint
    assert sampler.head.weights["fuse"].dtype == jnp.float32
    half, _ = jdlm.load("tiny", jnp.bfloat16)
    assert half.dtype == jnp.bfloat16
    assert {w.dtype for w in jax.tree.leaves(JointSampler.load("tiny", k=4, base=half).head.weights)} == {half.dtype}
    assert float(jnp.abs(sampler.head.weights["out_norm"]).max()) > 0  # trained: a new head's is all zeros


# ---------------------------------------------------------------------------------------------- decoding

PROMPT = jnp.array([[5, 6, 7, 8, 9, 10, 11, 12]])


@pytest.mark.parametrize("rule,cache", [("entropy", "none"), ("threshold:0.5", "dual")])
def test_k1_is_the_plain_rule(base, rule, cache):
    """One round a step is the rule alone: same tokens, NFE and trace, sampled with the same keys."""
    plain = S.parse_strategy(f"{rule} {cache} gen_length=16 block_length=8 steps=8 temperature=1")
    joint = plain.replace(proposer=JointSampler(head=active_head(base.config), k=1))
    a, b = decode(base, PROMPT, plain, key=jax.random.key(3)), decode(base, PROMPT, joint, key=jax.random.key(3))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.nfe, b.nfe)
    np.testing.assert_array_equal(a.trace.step, b.trace.step)


@pytest.mark.parametrize("k", [4])
def test_an_identity_head_in_k_rounds_reveals_what_the_rule_reveals_at_once(base, k):
    """A new head does not change the predictions, so greedy rounds of one token pick the rule's top k."""
    plain = S.parse_strategy(f"entropy gen_length=16 block_length=8 steps={16 // k}")
    joint = plain.replace(proposer=JointSampler(head=init_head(base.config, jax.random.key(0)), k=k))
    a, b = decode(base, PROMPT, plain), decode(base, PROMPT, joint)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.trace.step, b.trace.step)
    assert int(b.nfe[0]) == 16 // k


@pytest.mark.parametrize("family,k", [("llada", 2), ("dream", 4)])
def test_token_exact_with_the_numpy_adjust_reference(family, k):
    base = peaked_base(family, seed=2)
    head = active_head(base.config, seed=3)
    strategy = S.Strategy(schedule=S.Schedule(gen_length=16, block_length=16, steps=16 // k), rule=S.Entropy(),
                          proposer=JointSampler(head=head, k=k))
    out = decode(base, PROMPT, strategy)
    want, nfe = adjust_greedy(base, head.weights, np.asarray(PROMPT[0]), 16, k)
    np.testing.assert_array_equal(np.asarray(out.tokens[0]), want)
    assert int(out.nfe[0]) == nfe == 16 // k
    marginal, _ = adjust_greedy(base, head.weights, np.asarray(PROMPT[0]), 16, k, use_head=False)
    assert not np.array_equal(marginal, want), "the head must matter for this check to mean anything"


def test_joint_sampler_errors_are_strategy_errors(base):
    head = init_head(base.config, jax.random.key(0))
    with pytest.raises(StrategyError, match="positive whole number"):
        JointSampler(head=head, k=0)
    with pytest.raises(StrategyError, match="SamplerHead"):
        JointSampler(head="runs/head", k=2)
    with pytest.raises(StrategyError, match="without guidance"):
        S.parse_strategy("low_confidence cfg_scale=1.5").replace(proposer=JointSampler(head=head))
    with pytest.raises(StrategyError, match="does not read attention"):
        decode(base, PROMPT, S.parse_strategy("dawn gen_length=16 block_length=8").replace(
            proposer=JointSampler(head=head)))
    other = init_head(dataclasses.replace(base.config, d_model=64, head_dim=32), jax.random.key(0))
    with pytest.raises(StrategyError, match="another model"):
        decode(base, PROMPT, S.parse_strategy("entropy gen_length=16 block_length=16").replace(
            proposer=JointSampler(head=other)))
    joint = S.parse_strategy("entropy gen_length=16 block_length=16").replace(proposer=JointSampler(head=head, k=4))
    assert joint.spec.endswith("joint:4") and joint.to_dict()["proposer"] == {"name": "joint", "k": 4}
    with pytest.raises(StrategyError, match="trained head"):
        S.parse_strategy(joint.spec)
    with pytest.raises(StrategyError, match="trained head"):
        S.Strategy.from_dict(joint.to_dict())


# ---------------------------------------------------------------------------------------------- command line


def test_train_sampler_command_help_and_usage_errors(capsys):
    from jdlm.cli import main

    with pytest.raises(SystemExit):
        main(["train-sampler", "--help"])
    assert "jdlm train-sampler" in capsys.readouterr().out
    for argv, message in ((["--tasks", "chess=1"], "unknown task 'chess'"),
                          (["--block-length", "7"], "must divide gen_length"),
                          (["--max-unroll", "16"], "max_unroll must be in"),
                          (["--steps", "0"], "positive integer")):
        assert main(["train-sampler", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err and err.count("\n") == 1, err
