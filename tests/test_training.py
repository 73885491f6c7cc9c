"""Training the small models: the objectives learn, an interrupted run resumes exactly, exports load."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdlm
from jdlm.training import trainer
from jdlm.training.objectives import ar_loss, mdm_loss

SMALL = dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=16, mlp_hidden=64)


def _config(objective="mdm", **changes):
    base = trainer.TrainConfig(objective=objective, model="tiny" if objective == "mdm" else "tiny-ar",
                               model_overrides=SMALL, seq_len=112, batch_size=8, steps=6, lr=3e-3, warmup=1,
                               compute_dtype="float32", examples={"sudoku": 300, "countdown": 300},
                               weights={"sudoku": 0.5, "countdown": 0.5}, save_every=2, log_every=1)
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("objective", ["mdm", "ar"])
def test_train_step_reduces_loss_on_a_fixed_batch(objective):
    config = _config(objective, lr=1e-2, steps=1000)  # long schedule: the learning rate stays up
    model = config.model_config()
    tx = trainer.optimizer(config)
    weights = jdlm.init_params(model, jax.random.key(0)).weights
    state = trainer.TrainState(step=jnp.int32(0), weights=weights, opt_state=tx.init(weights))
    step = trainer.make_train_step(config, model, tx)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(5, 200, size=(8, 24)), jnp.int32)
    prompt_len = jnp.full((8,), 8, jnp.int32)
    answer_len = jnp.full((8,), 16, jnp.int32)
    key = jax.random.key(1)  # the same noise every step: a fixed problem whose loss must fall
    losses = []
    for _ in range(30):
        state, metrics = step(state, tokens, prompt_len, answer_len, key)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0]


def test_mdm_loss_never_masks_the_prompt():
    model = dataclasses.replace(jdlm.training.presets.tiny_mdm_config(), **SMALL)
    params = jdlm.init_params(model, jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(5, 200, size=(4, 16)), jnp.int32)
    prompt_len = jnp.full((4,), 16, jnp.int32)  # everything is prompt: nothing to predict
    loss, _ = mdm_loss(params, tokens, prompt_len, jnp.ones((4,), jnp.int32), jax.random.key(0))
    assert float(loss) == 0.0
    loss, _ = ar_loss(params, tokens, jnp.full((4,), 4, jnp.int32), jnp.full((4,), 12, jnp.int32), jax.random.key(0))
    assert float(loss) > 0.0


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    config = _config()
    straight = trainer.train(config, tmp_path / "straight", progress=False)

    def interrupt(step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.train(config, tmp_path / "resumed", on_step=interrupt, progress=False)
    resumed = trainer.train(config, tmp_path / "resumed", progress=False)
    assert int(resumed.step) == int(straight.step) == config.steps
    for a, b in zip(jax.tree.leaves(straight.weights), jax.tree.leaves(resumed.weights)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    with pytest.raises(ValueError, match="different configuration"):
        trainer.train(dataclasses.replace(config, lr=1e-4), tmp_path / "resumed", progress=False)

    dst = trainer.export(config, resumed, tmp_path / "resumed", tmp_path / "model")
    params, tok = jdlm.load(dst)
    assert params.config.d_model == SMALL["d_model"] and params.dtype == jnp.bfloat16
    ids = tok.encode_chat([{"role": "user", "content": "sudoku:\n1234\n0000\n0000\n0000\n"}])
    out = jdlm.decode(params, np.array([ids]), jdlm.strategies.llada(gen_length=8, steps=8, block_length=8))
    assert out.tokens.shape == (1, 8)
