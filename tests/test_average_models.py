"""scripts/average_models.py: the weighted average of two checkpoints of one model, and its refusals."""

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from jdlm.checkpoint import load, packaged_model_dir, save
from jdlm.config import tiny
from jdlm.errors import UserError
from jdlm.model import init_params
from tests.script_module import load_script


def _checkpoint(path: Path, seed: int, tokenizer_dir: Path, **overrides) -> Path:
    params = init_params(tiny(**overrides), jax.random.PRNGKey(seed))
    return save(path, params, tokenizer_files=[tokenizer_dir / n for n in ("tokenizer.json", "tokenizer_config.json")])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("avg")
    tok = packaged_model_dir("tiny")
    return _checkpoint(root / "a", 0, tok), _checkpoint(root / "b", 1, tok), root


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_average_is_the_weighted_mean_of_every_weight(pair, weight):
    a_path, b_path, root = pair
    out = load_script("average_models").average(a_path, b_path, weight, root / f"mix{weight}")
    a, _ = load(a_path)
    b, _ = load(b_path)
    mixed, _ = load(out)
    expected = jax.tree.map(lambda x, y: (1 - weight) * np.asarray(x) + weight * np.asarray(y), a.weights, b.weights)
    for got, want in zip(jax.tree.leaves(mixed.weights), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)
    assert mixed.config == a.config


def test_average_refuses_other_architectures_tokenizers_and_weights(pair, tmp_path):
    a_path, b_path, _ = pair
    script = load_script("average_models")
    wider = _checkpoint(tmp_path / "wide", 2, packaged_model_dir("tiny"), d_model=32, head_dim=8)
    with pytest.raises(UserError, match="different architectures"):
        script.average(a_path, wider, 0.5, tmp_path / "x")
    tok_dir = tmp_path / "tok"
    shutil.copytree(packaged_model_dir("tiny"), tok_dir)
    (tok_dir / "tokenizer_config.json").write_text("{}")
    other_tok = _checkpoint(tmp_path / "b2", 1, tok_dir)
    with pytest.raises(UserError, match="different tokenizers"):
        script.average(a_path, other_tok, 0.5, tmp_path / "y")
    with pytest.raises(UserError, match="outside"):
        script.average(a_path, b_path, 1.5, tmp_path / "z")
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()
