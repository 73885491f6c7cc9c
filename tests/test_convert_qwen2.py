"""Qwen2 causal checkpoints (a guide for Dream) convert and run: logits equal Hugging Face's Qwen2ForCausalLM."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

import jdlm
from jdlm.convert import convert_checkpoint
from jdlm.errors import ConversionError
from jdlm.model import forward
from tests.hf_fixtures import write_tokenizer


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_logits_match_transformers(tmp_path, tied):
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=tied, eos_token_id=1,
                         pad_token_id=1)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # spread the weights so that a wrong layout shows
        for p in model.parameters():
            p.normal_(0.0, 0.3 if p.dim() > 1 else 0.1)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    path = tmp_path / "hf" / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"mask_token_id": 250}))
    write_tokenizer(tmp_path / "hf")
    params = jdlm.load_params(convert_checkpoint("qwen2", tmp_path / "hf", tmp_path / "jdlm"), jnp.float32)
    assert params.config.causal and not params.config.logits_shift and params.config.tie_embeddings == tied
    ids = np.random.default_rng(0).integers(2, 240, size=(2, 12))
    with torch.no_grad():
        want = model(torch.tensor(ids)).logits.numpy()
    got = np.asarray(forward(params, jnp.asarray(ids, jnp.int32), causal=True).logits)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    with pytest.raises(ConversionError, match="describes a 'qwen2' model"):
        convert_checkpoint("dream", tmp_path / "hf", tmp_path / "other")
