"""Hand-written kernels for the spots XLA leaves short of the hardware (Pallas; GPU through Triton).

weight_only_matmul: x @ (w * scale) for few rows of x and int8 / fp8 weights (or x @ w for float ones), one weight,
grouped weights or SwiGLU.
quantized_linear: when jdlm/model.py's quantised linear layers use them (`set_mode`).
float_linear: when its float linear layers do (its own `set_mode`; on by default on Hopper GPUs).
window_attention: a cached step's window of queries against the whole KV cache, the keys split over the grid
(flash-decoding), and when jdlm/model.py's cached forward uses it (its own `set_mode`).
switch: the mode switch each has (`KernelSwitch`)."""
