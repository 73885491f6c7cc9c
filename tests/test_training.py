"""Training the small models: the objectives learn, an interrupted run resumes exactly, exports load."""

import dataclasses
import json
import runpy
import shutil
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdlm
from jdlm.errors import CheckpointError
from jdlm.training import data, trainer
from jdlm.training.objectives import ar_loss, mdm_loss, mdm_noise

ROOT = Path(__file__).resolve().parents[1]

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
    with warnings.catch_warnings(record=True) as caught:  # the first call traces the step
        warnings.simplefilter("always")
        for _ in range(30):
            state, metrics = step(state, tokens, prompt_len, answer_len, key)
            losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0]
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning) and "optax" in str(w.message)]
    assert float(metrics["grad_norm"]) > 0.0


def test_mdm_loss_never_masks_the_prompt():
    model = dataclasses.replace(jdlm.training.presets.tiny_mdm_config(), **SMALL)
    params = jdlm.init_params(model, jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(5, 200, size=(4, 16)), jnp.int32)
    prompt_len = jnp.full((4,), 16, jnp.int32)  # everything is prompt: nothing to predict
    loss, _ = mdm_loss(params, tokens, prompt_len, jnp.ones((4,), jnp.int32), jax.random.key(0))
    assert float(loss) == 0.0
    loss, _ = ar_loss(params, tokens, jnp.full((4,), 4, jnp.int32), jnp.full((4,), 12, jnp.int32), jax.random.key(0))
    assert float(loss) > 0.0


def test_mdm_noise_ragged_ends_hide_what_lies_past_a_rows_end():
    B, T = 256, 40
    prompt_len, answer_len = jnp.full((B,), 10, jnp.int32), jnp.full((B,), 6, jnp.int32)
    masked, _, real = mdm_noise(jax.random.key(1), prompt_len, answer_len, T, ragged_ends=True)
    masked, real = np.asarray(masked), np.asarray(real)
    ends = real.sum(axis=1)
    assert (ends >= 16).all() and (ends <= T).all() and ends.min() < 20 and ends.max() > 30
    assert (real == (np.arange(T)[None] < ends[:, None])).all()  # a prefix of each row
    assert not (masked & ~real).any() and not masked[:, :10].any()
    assert (np.median(ends) - 16) < (T - 16) / 2  # biased towards short rows
    _, _, full = mdm_noise(jax.random.key(1), prompt_len, answer_len, T)
    assert np.asarray(full).all()


def test_mdm_noise_suffix_rows_mask_everything_after_their_cut():
    B, T = 2048, 32
    prompt_len, answer_len = jnp.full((B,), 8, jnp.int32), jnp.full((B,), 24, jnp.int32)

    def noise(share):
        masked, weight, _ = mdm_noise(jax.random.key(2), prompt_len, answer_len, T, suffix_share=share)
        return np.asarray(masked), np.asarray(weight)

    masked, weight = noise(1.0)  # every row: a masked run from its cut to the end, each surely masked (weight 1)
    assert masked[:, -1].all() and (weight[:, -1] == 1.0).all() and not masked[:, :8].any()
    first_suffix = T - np.argmin(masked[:, ::-1], axis=1)
    assert 8 <= first_suffix.min() and np.median(first_suffix) < 24  # cuts spread over the answer
    masked, weight = noise(0.0)  # independent masking alone: the last position masked with probability E[t] = 1/2
    assert 0.45 < masked[:, -1].mean() < 0.55 and (weight[masked] > 1.0).all()
    masked, _ = noise(0.5)
    assert 0.7 < masked[:, -1].mean() < 0.8


def test_mdm_loss_ignores_tokens_past_a_rows_end():
    model = dataclasses.replace(jdlm.training.presets.tiny_mdm_config(), **SMALL)
    params = jdlm.init_params(model, jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(5, 200, size=(4, 24)), jnp.int32)
    prompt_len, answer_len = jnp.full((4,), 6, jnp.int32), jnp.full((4,), 4, jnp.int32)
    key = jax.random.key(3)
    _, _, real = mdm_noise(key, prompt_len, answer_len, 24, ragged_ends=True)
    changed = jnp.where(real, tokens, 7)
    a, _ = mdm_loss(params, tokens, prompt_len, answer_len, key, ragged_ends=True)
    b, _ = mdm_loss(params, changed, prompt_len, answer_len, key, ragged_ends=True)
    c, _ = mdm_loss(params, changed, prompt_len, answer_len, key)
    assert not bool(real.all()) and float(a) == pytest.approx(float(b), rel=1e-6) and float(c) != float(a)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run of `_config()`: its folder and final state."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    return run_dir, trainer.train(_config(), run_dir, progress=False)


def assert_same_weights(a, b):
    for x, y in zip(jax.tree.leaves(a.weights), jax.tree.leaves(b.weights), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def logged_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_interrupted_run_resumes_to_the_same_weights(straight, tmp_path):
    config = _config()
    _, straight = straight

    def interrupt(step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.train(config, tmp_path / "resumed", on_step=interrupt, progress=False)
    resumed = trainer.train(config, tmp_path / "resumed", progress=False)
    assert int(resumed.step) == int(straight.step) == config.steps
    assert_same_weights(straight, resumed)

    with pytest.raises(ValueError, match="different configuration"):
        trainer.train(dataclasses.replace(config, lr=1e-4), tmp_path / "resumed", progress=False)

    dst = trainer.export(config, resumed, tmp_path / "resumed", tmp_path / "model")
    params, tok = jdlm.load(dst)
    assert params.config.d_model == SMALL["d_model"] and params.dtype == jnp.bfloat16
    ids = tok.encode_chat([{"role": "user", "content": "sudoku:\n1234\n0000\n0000\n0000\n"}])
    out = jdlm.decode(params, np.array([ids]), jdlm.strategies.llada(gen_length=8, steps=8, block_length=8))
    assert out.tokens.shape == (1, 8)


def test_a_resumed_run_logs_each_step_once(tmp_path):
    """A crash after step 3 is logged, with the last checkpoint at step 2: steps 3+ are logged again on resume."""
    def crash(step, metrics):
        if step == 3:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        trainer.train(_config(), tmp_path, on_step=crash, progress=False)
    assert logged_steps(tmp_path) == [1, 2, 3]
    trainer.train(_config(), tmp_path, progress=False)
    assert logged_steps(tmp_path) == [1, 2, 3, 4, 5, 6]


def _damage(step_dir: Path) -> None:
    for f in step_dir.rglob("*"):
        if f.is_file() and f.stat().st_size > 10_000:  # the weights' data files
            f.write_bytes(b"not a checkpoint")


def test_an_unreadable_latest_checkpoint_falls_back_to_the_one_before(straight, tmp_path, capsys):
    run_dir, done = straight
    copy = shutil.copytree(run_dir, tmp_path / "run")
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["4", "6"]
    _damage(copy / "checkpoints" / "6")
    capsys.readouterr()
    again = trainer.train(_config(), copy, progress=False)
    out = capsys.readouterr().out
    assert "warning: checkpoint 6 cannot be read" in out and "resumed from step 4" in out
    assert (copy / "unreadable-checkpoints" / "6").is_dir()
    assert_same_weights(done, again)  # steps 5 and 6 redone exactly
    assert logged_steps(copy) == [1, 2, 3, 4, 5, 6]

    _damage(copy / "checkpoints" / "4")
    _damage(copy / "checkpoints" / "6")
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* can be read \(steps \[4, 6\]\)"):
        trainer.train(_config(), copy, progress=False)


def test_examples_are_generated_in_spawned_processes_not_forked(monkeypatch):
    jnp.zeros(1).block_until_ready()  # JAX's threads are running
    monkeypatch.setattr(data, "CHUNK", 50)
    counts = {"sudoku": 120, "countdown": 80}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pooled = data.generate_examples(counts, seed=3, workers=2)
    assert not [w for w in caught if "fork" in str(w.message)]
    assert pooled == data.generate_examples(counts, seed=3, workers=1)
    assert {k: len(v) for k, v in pooled.items()} == counts


def test_pool_tokenised_in_workers_equals_the_pool_of_the_examples(monkeypatch, tmp_path):
    from jdlm.tokenizer import Tokenizer
    from jdlm.training import presets

    monkeypatch.setattr(data, "CHUNK", 50)
    presets.build_task_tokenizer(tmp_path)
    config = presets.tiny_mdm_config()
    counts = {"sudoku": 70, "countdown": 60, "multistep": 30}
    pool = data.generate_pool(counts, tmp_path, config, 48, seed=3, workers=2)
    expected = data.build_pool(Tokenizer.from_dir(tmp_path, config), data.generate_examples(counts, seed=3), 48)
    assert pool.task_names == expected.task_names
    for field in ("tokens", "prompt_len", "answer_len", "task"):
        np.testing.assert_array_equal(getattr(pool, field), getattr(expected, field))
    assert 0 < len(pool) < sum(counts.values())  # multistep rows do not fit 48 tokens: dropped in both


TRAIN_FLAGS = ["--run-dir", "run", "--steps", "2", "--batch-size", "8", "--warmup", "1", "--save-every", "2",
               "--log-every", "1", "--examples", "sudoku=100,countdown=100", "--weights", "sudoku=0.5,countdown=0.5",
               "--model-overrides", json.dumps(SMALL), "--compute-dtype", "float32"]


def run_script(monkeypatch, name: str, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(ROOT / "scripts" / name), run_name="__main__")


def test_training_script_exports_to_its_run_folder_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    run_script(monkeypatch, "train_mdm.py", *TRAIN_FLAGS)
    out = capsys.readouterr().out
    assert "exported run/model\n" in out
    assert out.count('note: no loss plot: matplotlib is not installed (pip install "jdlm[plot]")') == 1
    assert not (tmp_path / "jdlm").exists() and not (tmp_path / "run" / "loss.png").exists()
    params, _ = jdlm.load(tmp_path / "run" / "model")
    assert params.config.d_model == SMALL["d_model"]


def test_a_run_stopped_by_its_time_limit_exports_only_when_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flags = TRAIN_FLAGS + ["--steps", "6", "--time-limit-minutes", "0"]  # stops at the first checkpoint: 2 steps on
    run_script(monkeypatch, "train_mdm.py", *flags)
    assert "stopped at step 2 of 6" in capsys.readouterr().out
    assert not (tmp_path / "run" / "model").exists()
    run_script(monkeypatch, "train_mdm.py", *flags, "--export-unfinished")
    assert "exported run/model (unfinished: step 4)" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "run" / "model" / "manifest.json").read_text())
    assert manifest["steps"] == 4 and manifest["unfinished"] is True


@pytest.mark.parametrize("script", ["train_mdm.py", "train_ar.py"])
def test_writing_over_a_shipped_model_needs_ship(script, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = "tiny" if script == "train_mdm.py" else "tiny-ar"
    with pytest.raises(SystemExit) as exit_:
        run_script(monkeypatch, script, *TRAIN_FLAGS, "--export", f"jdlm/models/{model}")
    assert exit_.value.code == 2
    assert f"error: --export jdlm/models/{model} is inside a jdlm/models folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        run_script(monkeypatch, script, *TRAIN_FLAGS, "--export", "out", "--ship")
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing was trained


def test_loss_plot(straight, tmp_path):
    pytest.importorskip("matplotlib")
    run_dir, _ = straight
    trainer.plot_loss(run_dir, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
