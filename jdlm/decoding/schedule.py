"""Schedule: how long to generate, in which blocks, and how many tokens each step reveals."""

from __future__ import annotations

import dataclasses
import functools

import flax.struct
import jax
import numpy as np

from jdlm.decoding.part import derived, knob, part
from jdlm.errors import StrategyError

COUNT_POLICIES = ("llada", "dream")


@part
class Schedule:
    """Generation length, semi-autoregressive blocks and the per-step reveal counts.

    Attributes:
      gen_length: number of tokens to generate (G).
      block_length: tokens per block (W); blocks are decoded left to right. None means one block of `gen_length`
        (stored as gen_length).
      steps: forward passes budgeted over the whole generation (split evenly over blocks); rules that decide their
        own count (Threshold, Factor) ignore it. Traced unless `keep_idle_steps` (then it sets the loop's length).
      temperature: 0 is greedy; > 0 samples proposals (each rule says how). Traced; greedy or sampled is static
        (`sampled`), so 0.5 and 0.7 share a compiled program and 0 has its own.
      counts: how a block's masked tokens are spread over its steps: "llada" (LLaDA `generate`: `m // s` per step,
        one more in the first `m % s` steps) or "dream" (Dream `_sample`: `int(m * (1 - s/t))` on
        `linspace(1, eps, s + 1)`, the rest at the last step).
      eps: Dream's final time (counts="dream" only).
      keep_idle_steps: also run steps whose count is 0, as LLaDA `generate` (steps > gen_length) and Dream do;
        their forward passes change nothing under greedy decoding, so jdlm skips them by default.
      first_token_at_block_start: the first step of every block reveals only the block's first position (Fast-dLLM's
        Dream block sampler, whose shifted prediction for it comes from the already decoded position before it);
        the rule takes over from the block's second step.
      stop_at_eos: once a row has an end token (EOS or end-of-turn) with every position before it revealed, fill
        the rest of its generation with EOS and stop decoding that row. Changes only tokens after the end, which
        no text shows; off by default for token-exact parity with the references.
    """

    gen_length: int = 128
    block_length: int | None = 32
    steps: int = knob(128)
    temperature: float = knob(0.0)
    counts: str = "llada"
    eps: float = knob(1e-3)
    keep_idle_steps: bool = False
    first_token_at_block_start: bool = False
    stop_at_eos: bool = False
    sampled: bool = derived()  # temperature > 0
    table_length: int = derived()  # entries of the per-step tables (`tables`)

    def __post_init__(self):
        if self.gen_length <= 0:
            raise StrategyError(f"gen_length must be positive, got {self.gen_length}")
        if self.block_length is None:
            object.__setattr__(self, "block_length", self.gen_length)
        if self.block_length <= 0:
            raise StrategyError(f"block_length must be positive, got {self.block_length}")
        if self.block_length > self.gen_length:
            raise StrategyError(f"block_length ({self.block_length}) is larger than gen_length "
                                f"({self.gen_length}); use block_length <= gen_length")
        if self.gen_length % self.block_length:
            raise StrategyError(f"block_length ({self.block_length}) must divide gen_length "
                                f"({self.gen_length})")
        if self.steps <= 0:
            raise StrategyError(f"steps must be positive, got {self.steps}")
        if self.steps % self.n_blocks:
            raise StrategyError(f"steps ({self.steps}) must be a multiple of the number of blocks "
                                f"({self.n_blocks} = gen_length / block_length)")
        if not 0 <= self.temperature < float("inf"):
            raise StrategyError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.counts not in COUNT_POLICIES:
            raise StrategyError(f"counts must be one of {COUNT_POLICIES}, got {self.counts!r}")
        if not 0 < self.eps < 1:
            raise StrategyError(f"eps must be in (0, 1), got {self.eps}")
        object.__setattr__(self, "sampled", self.temperature > 0)
        # Idle steps kept: the loop runs every budgeted step, so their number is structure. Otherwise every step
        # reveals at least one token, so a block never needs more than its length.
        object.__setattr__(self, "table_length", self.steps_per_block if self.keep_idle_steps else self.block_length)

    @property
    def n_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.n_blocks

    def block_counts(self) -> np.ndarray:
        """Tokens revealed at each step of a block, int32 [n] (idle steps dropped unless `keep_idle_steps`).

        Every block starts fully masked, so the table is the same for every block and is computed on the host.
        """
        counts = llada_counts(self.block_length, self.steps_per_block) if self.counts == "llada" else \
            dream_counts(self.block_length, self.steps_per_block, self.eps)
        if not self.keep_idle_steps:
            counts = counts[counts > 0]
        return counts.astype(np.int32)

    def tables(self) -> "StepTables":
        """The per-step tables of one block, computed on the host and passed to the compiled loop as arrays (so
        `steps` and `eps` are values, not structure), padded to `table_length`. Made once per distinct schedule
        (read-only arrays): a decode call at batch 1 on a GPU is short enough for their making to show."""
        return _tables(dataclasses.replace(self, steps=int(self.steps), eps=float(self.eps)))


@functools.lru_cache(maxsize=64)
def _tables(schedule: Schedule) -> "StepTables":
    counts = schedule.block_counts()
    n = len(counts)
    fraction = np.ones(schedule.table_length, np.float32)
    if schedule.counts == "dream" and schedule.keep_idle_steps:  # Dream's 1 - s/t at step i; all at the last step
        t = torch_linspace_f32(1.0, schedule.eps, schedule.steps_per_block + 1)
        fraction[:-1] = (np.float32(1) - t[1:-1] / t[:-2]).astype(np.float32)
    padded = np.zeros(schedule.table_length, np.int32)
    padded[:n] = counts
    for array in (padded, fraction):
        array.setflags(write=False)
    return StepTables(counts=padded, fraction=fraction, steps_in_block=np.int32(n))


@flax.struct.dataclass
class StepTables:
    """What each step of a block may reveal, by its index s in the block. S = `Schedule.table_length`.

    counts:         [S] int32   tokens to reveal at step s (counted rules).
    fraction:       [S] float32 probability of revealing each masked position at step s, for rules that reveal
                                positions independently: Dream's `1 - s/t` (counts="dream" with idle steps kept),
                                1 at the last step; all ones otherwise.
    steps_in_block: [] int32    steps a block runs for counted rules (entries of `counts` in use).
    """

    counts: jax.Array
    fraction: jax.Array
    steps_in_block: jax.Array


def llada_counts(masked: int, steps: int) -> np.ndarray:
    """LLaDA `get_num_transfer_tokens`: 10 masks over 4 steps -> [3, 3, 2, 2]."""
    counts = np.full(steps, masked // steps, dtype=np.int64)
    counts[: masked % steps] += 1
    return counts


def torch_linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    """float32 `torch.linspace`, bit-exact with torch's CPU kernel.

    torch fills the first half as `start + step * i` and the second as `end - step * (n - 1 - i)`, each a fused
    multiply-add (one rounding), with `step = (end - start) / (n - 1)` rounded to float32. The float64 product of a
    float32 and a small integer is exact, so float64 arithmetic rounded once to float32 reproduces the FMA.
    """
    start32, end32 = np.float32(start), np.float32(end)
    if n == 1:
        return np.array([start32], np.float32)
    step = np.float64(np.float32((end32 - start32) / np.float32(n - 1)))
    i = np.arange(n, dtype=np.float64)
    head = np.float64(start32) + step * i
    tail = np.float64(end32) - step * (n - 1 - i)
    return np.where(i < n // 2, head, tail).astype(np.float32)


def dream_counts(masked: int, steps: int, eps: float) -> np.ndarray:
    """Dream `_sample`: at step i, reveal `int(m_i * (1 - s/t))` (float32), all that is left at the last step."""
    t = torch_linspace_f32(1.0, eps, steps + 1)
    counts, left = [], masked
    for i in range(steps):
        if i == steps - 1:
            n = left
        else:
            ratio = np.float32(1) - np.float32(t[i + 1] / t[i])
            n = int(np.float32(left) * ratio)
        counts.append(n)
        left -= n
    return np.asarray(counts, dtype=np.int64)
