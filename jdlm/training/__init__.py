"""Training jdlm's own small models on the task suite: tokenizer, data, masked-diffusion and causal objectives."""
