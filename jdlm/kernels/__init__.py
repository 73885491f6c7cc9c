"""Hand-written kernels for the spots XLA leaves short of the hardware (Pallas; GPU through Triton).

weight_only_matmul: x @ (w * scale) for few rows of x and int8 / fp8 weights (jdlm/model.py's `linear`)."""
