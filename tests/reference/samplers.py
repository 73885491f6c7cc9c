"""Straightforward PyTorch versions of the reference diffusion samplers (test reference for jdlm.decode).

Each function mirrors one public upstream function step for step (see its docstring), rewritten plainly:
  - `llada_generate`      ML-GSAI/LLaDA `generate.py::generate`                      (REFERENCE.md §2.1)
                          with `prophet=True`: pixeli99/Prophet `generate_earlyexit.py::generate`   (§2.4)
  - `dream_sample`        Dream-org/Dream-v0-* `generation_utils.py::DreamGenerationMixin._sample`   (§2.3)
  - `fastdllm_generate`   NVlabs/Fast-dLLM `llada/generate.py::generate`, `generate_with_prefix_cache`,
                          `generate_with_dual_cache`, and `dream/model/generation_utils_block.py::_sample`  (§2.2)
  - `attention_generate`  lizhuo-luo/DAWN `generate(dawn=True)`, and Jerryaa98/AXON `generate(unlock=True)` on a
                          DAWN or threshold base                                     (§3.1)
`model` is a `tests.reference.torch_dlm.RefModel` (or anything with the same forwards). Every model call counts
as one NFE (a classifier-free-guidance call on the doubled batch counts once).

Deliberate deviations shared by all samplers:
  - Top-k is a stable sort by (-confidence, position): equal confidences commit the lowest position first.
    (`torch.topk` leaves the order of ties unspecified.)
  - A prompt that contains the mask id is rejected (the references would silently decode it).
  - Randomness is injectable (`rand_fn`, `gumbel_fn`; Dream origin: `uniform`, `sample`) so tests can feed the
    same numbers to jdlm; when absent the global torch RNG is used as upstream does.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from tests.reference.torch_dlm import padded_position_ids

NEG_INF = float("-inf")


# --- small shared pieces -----------------------------------------------------------------------------------------

def check_prompt(prompt: Tensor, mask_id: int) -> None:
    if prompt.dim() != 2:
        raise ValueError(f"prompt must be [B, P], got shape {tuple(prompt.shape)}")
    if bool((prompt == mask_id).any()):
        raise ValueError(f"prompt contains the mask id {mask_id}; the samplers would decode it as a blank")


def topk_stable(conf: Tensor, k: int) -> Tensor:
    """Indices of the k largest entries of a 1-D tensor, ties broken by the lowest index."""
    k = int(k)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.sort(conf, descending=True, stable=True).indices[:k]


def count_schedule(num_masked: int, steps: int) -> list[int]:
    """LLaDA `get_num_transfer_tokens`: m // s per step, plus one for each of the first m % s steps."""
    base, extra = divmod(int(num_masked), steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def threshold_select(conf: Tensor, masked: Tensor, threshold: float) -> Tensor:
    """Fast-dLLM threshold rule for one row: the most confident masked position, plus every other masked
    position with conf >= threshold. conf: [N] (-inf where not masked), masked: [N] bool -> [N] bool.

    The comparison is `conf < threshold` with a Python float, so it runs in conf's dtype (float64 for Fast-dLLM
    LLaDA, float32 for Fast-dLLM Dream, where the threshold is thus rounded to float32 first)."""
    n = int(masked.sum())
    chosen = torch.zeros_like(masked)
    order = topk_stable(conf, n)  # the n masked positions, most confident first
    for rank, pos in enumerate(order.tolist()):
        if rank == 0 or not bool(conf[pos] < threshold):
            chosen[pos] = True
    return chosen


def factor_select(conf: Tensor, masked: Tensor, factor: float) -> Tensor:
    """Fast-dLLM `get_transfer_index_dynamic` for one row (float64 thresholds).

    With the N masked confidences sorted descending c(1) >= c(2) >= ..., rank n (1-based) passes when
    c(n) >= 1 - factor / (n + 1); rank 1 always passes. Walk from rank 1, stop at the first failing rank and
    commit the ranks before it. Upstream quirk kept: if the walk reaches the last rank (it fails, or every rank
    passes) all N are committed. Upstream crashes when N == 0; here nothing is committed.
    """
    n = int(masked.sum())
    chosen = torch.zeros_like(masked)
    if n == 0:
        return chosen
    thresholds = [-1.0] + [1.0 - factor / (r + 1) for r in range(2, n + 1)]  # index r-1 holds rank r
    sorted_conf = torch.sort(conf[masked].double(), descending=True).values
    stop = 0
    for stop in range(n):  # as upstream: `stop` ends at the first failing index, or n - 1 if none fails
        if bool(sorted_conf[stop] < thresholds[stop]):
            break
    count = stop + 1 if stop in (0, n - 1) else stop
    chosen[topk_stable(conf, count)] = True
    return chosen


def shift_logits(logits: Tensor) -> Tensor:
    """Dream: the prediction for position i is the output at i - 1 (position 0 keeps its own output)."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def block_is_full(x: Tensor, start: int, end: int, mask_id: int) -> bool:
    return not bool((x[:, start:end] == mask_id).any())


# --- ML-GSAI LLaDA generate ----------------------------------------------------------------------------------------

# Upstream followed: ML-GSAI/LLaDA generate.py::generate at commit b7e6c35 (file last changed in 65cbed2), with its
# two EOS options `logits_eos_inf` / `confidence_eos_eot_inf` (ids 126081 / 126348 there, eos_id / eot_id here).
@torch.no_grad()
def llada_generate(model, prompt: Tensor, *, steps: int, gen_length: int, block_length: int,
                   temperature: float = 0.0, cfg_scale: float = 0.0, remasking: str = "low_confidence",
                   mask_id: int, attention_mask: Optional[Tensor] = None,
                   rand_fn: Optional[Callable[[int, int, int, int], Tensor]] = None,
                   gumbel_fn: Optional[Callable[[int, tuple], Tensor]] = None,
                   logits_eos_inf: bool = False, confidence_eos_eot_inf: bool = False,
                   eos_id: Optional[int] = None, eot_id: Optional[int] = None,
                   pad_position_ids: bool = False, prophet: bool = False, answer_start: int = 0,
                   answer_length: int = 5, exit_thresholds: Optional[dict] = None) -> tuple[Tensor, int | list[int]]:
    """LLaDA semi-autoregressive sampling; mirrors ML-GSAI/LLaDA `generate.py::generate` (commit b7e6c35).

    Args:
      prompt: [B, P] token ids (left-padded when attention_mask is given).
      steps: total steps, divisible by the number of blocks gen_length / block_length.
      remasking: "low_confidence" (softmax prob of the proposal, in the logits' dtype) or "random".
      attention_mask: optional [B, P], 1 at real prompt tokens; generated positions count as real.
      rand_fn(step, block_start, block_length, B) -> [B, block_length] uniforms for remasking="random"
        (step counts from 0 across blocks); default torch.rand.
      gumbel_fn(step, shape) -> float64 uniforms of `shape` ([B, L, V]) for temperature > 0; default torch.rand.
      logits_eos_inf: set the EOS logit to -inf right after the model (after the CFG combination), before the
        proposal and the softmax: EOS is never proposed, at any temperature.
      confidence_eos_eot_inf: after the proposal, set the EOT logit to -inf and, at temperature 0 only, the EOS
        logit too (upstream's chained assignment writes EOS into the Gumbel-noised copy, which at temperature 0 is
        the logits tensor itself). A proposal of a cleared token keeps its token but gets softmax confidence 0: it
        ranks below every positive confidence yet above -inf, so it is still committed when the count needs it.
        No effect with remasking="random".
      eos_id, eot_id: the ids that upstream hard-codes (126081, 126348) for the two EOS options.
      pad_position_ids: with an attention mask, use rotary positions counted from each row's first real token
        (HKUNLP rule) instead of the absolute positions that ML-GSAI's LLaDA model uses. RoPE scores depend only
        on position differences, so the two agree up to float rounding.
      prophet: Prophet's early exit (pixeli99/Prophet `generate_earlyexit.py::generate` and `should_early_exit`,
        commit 460afe4): after the forward and the proposal, before the commit, the row's gap is the mean of
        top1 - top2 of the raw (CFG-combined) logits over positions P + answer_start ... + answer_length (clipped
        to the sequence); with progress = g / steps (g the 1-based global step), the row exits when the gap is
        >= exit_thresholds["early"] (progress < 0.33), ["mid"] (< 0.67) or ["late"] (default 7.5, 5.0, 2.5): every
        masked position of the row gets its x0 from this step, the step's commit is skipped, the row stops.
        Upstream is batch 1 with an absolute answer_start_pos; here each row exits on its own, the others go on.
    Returns:
      (x [B, P + gen_length], nfe == steps); with prophet, nfe is a list with each row's forward passes.

    Deviations: ties commit the lowest position first; prompts containing mask_id are rejected; with
    cfg_scale > 0 and no attention mask upstream raises NameError (`attention_mask_` is unbound), here it runs.
    """
    check_prompt(prompt, mask_id)
    if remasking not in ("low_confidence", "random"):
        raise ValueError(f"remasking must be 'low_confidence' or 'random', got {remasking!r}")
    if (logits_eos_inf or confidence_eos_eot_inf) and eos_id is None:
        raise ValueError("logits_eos_inf / confidence_eos_eot_inf need eos_id")
    if confidence_eos_eot_inf and eot_id is None:
        raise ValueError("confidence_eos_eot_inf needs eot_id")
    B, P = prompt.shape
    L = P + gen_length
    x = torch.full((B, L), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    am = positions = None
    if attention_mask is not None:
        am = torch.cat([attention_mask.bool(), torch.ones(B, gen_length, dtype=torch.bool)], dim=1)
        if pad_position_ids:
            positions = padded_position_ids(am)
    prompt_index = x != mask_id  # every non-mask position at the start, pads included (used by CFG)

    if gen_length % block_length:
        raise ValueError("gen_length must be divisible by block_length")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError("steps must be divisible by the number of blocks")
    s = steps // num_blocks

    nfe = 0
    row_nfe, exited = [0] * B, [False] * B  # Prophet: each row's forward passes, and whether it has exited
    for b in range(num_blocks):
        start = P + b * block_length
        end = start + block_length
        counts = [count_schedule(int(n), s) for n in (x[:, start:end] == mask_id).sum(1)]
        for i in range(s):
            if all(exited):
                break
            mask_index = x == mask_id
            if cfg_scale > 0:
                # Unconditional branch: every original prompt position (pads too) becomes a mask.
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                both = model(torch.cat([x, un_x]),
                             attention_mask=None if am is None else torch.cat([am, am]),
                             position_ids=None if positions is None else torch.cat([positions, positions]))
                cond, un = both.chunk(2, dim=0)
                logits = un + (cfg_scale + 1) * (cond - un)
            else:
                logits = model(x, attention_mask=am, position_ids=positions)
            nfe += 1
            row_nfe = [n + (not e) for n, e in zip(row_nfe, exited)]
            exiting = [prophet and not exited[j] and
                       prophet_exits(logits[j], P + answer_start, answer_length, b * s + i + 1, steps, exit_thresholds)
                       for j in range(B)]

            if logits_eos_inf:
                logits[:, :, eos_id] = NEG_INF
            if temperature > 0:
                # Gumbel-max in float64: argmax exp(logits) / (-log u)^T.
                shape = tuple(logits.shape)
                u = gumbel_fn(b * s + i, shape) if gumbel_fn is not None else torch.rand(shape, dtype=torch.float64)
                x0 = torch.argmax(logits.double().exp() / (-torch.log(u.double())) ** temperature, dim=-1)
            else:
                x0 = torch.argmax(logits, dim=-1)
            if confidence_eos_eot_inf:
                # Upstream: `logits_with_noise[:, :, EOS] = logits[:, :, EOT] = -inf`, after the argmax. At T = 0
                # logits_with_noise *is* logits, so both columns of the softmax input go; at T > 0 only EOT.
                logits[:, :, eot_id] = NEG_INF
                if temperature == 0:
                    logits[:, :, eos_id] = NEG_INF

            if remasking == "low_confidence":
                p = F.softmax(logits, dim=-1)
                x0_p = torch.gather(p, -1, x0[..., None])[..., 0]
            else:
                # Only the current block's uniforms matter: earlier positions are never masked, later are -inf.
                x0_p = torch.full((B, L), NEG_INF)
                r = rand_fn(b * s + i, start, block_length, B) if rand_fn is not None else torch.rand(B, block_length)
                x0_p[:, start:end] = r.to(x0_p.dtype)
            x0_p[:, end:] = NEG_INF

            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, torch.full_like(x0_p, NEG_INF))
            for j in range(B):
                if exited[j]:
                    continue
                if exiting[j]:  # fill every remaining mask of the row, skip this step's commit
                    x[j, mask_index[j]] = x0[j, mask_index[j]]
                    exited[j] = True
                    continue
                idx = topk_stable(confidence[j], counts[j][i])
                x[j, idx] = x0[j, idx]
    return x, (row_nfe if prophet else nfe)


def prophet_exits(logits: Tensor, answer_start: int, answer_length: int, global_step: int, max_steps: int,
                  thresholds: Optional[dict] = None) -> bool:
    """Prophet `should_early_exit` on one row's logits [L, V]: the mean top1 - top2 gap over the absolute answer
    positions [answer_start, answer_start + answer_length) within the sequence, against the phase's threshold."""
    thresholds = thresholds or {"early": 7.5, "mid": 5.0, "late": 2.5}
    positions = range(answer_start, min(logits.shape[0], answer_start + answer_length))
    gaps = []
    for pos in positions:
        top2 = torch.topk(logits[pos], k=2).values
        gaps.append((top2[0] - top2[1]).item())
    if not gaps:
        return False
    gap = sum(gaps) / len(gaps)
    progress = global_step / max_steps
    phase = "early" if progress < 0.33 else "mid" if progress < 0.67 else "late"
    return gap >= thresholds[phase]


# --- HKUNLP Dream diffusion_generate ------------------------------------------------------------------------------

def dream_sample_tokens(logits: Tensor, temperature: float = 0.0, top_p: Optional[float] = None,
                        top_k: Optional[int] = None, margin_confidence: bool = False,
                        neg_entropy: bool = False,
                        sample: Optional[Callable[[Tensor], Tensor]] = None) -> tuple[Tensor, Tensor]:
    """Dream `sample_tokens` on [N, V] logits -> (confidence [N], x0 [N]).

    sample(probs [N, V]) -> tokens [N]: the categorical draw at temperature > 0, given the filtered probabilities;
    default torch Categorical, with upstream's fall-back to the argmax when it raises (a hook's errors propagate).
    """
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        # Keep a token iff the probability mass strictly before it (in descending order) is <= top_p.
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        cum = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        remove_sorted = cum > top_p
        remove_sorted[..., 1:] = remove_sorted[..., :-1].clone()
        remove_sorted[..., 0] = False
        remove = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, torch.finfo(logits.dtype).min)
    if top_k is not None:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k).values[..., -1:]
        logits = logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)  # ties with the k-th stay
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0 and sample is not None:
        x0 = sample(probs)
        confidence = torch.gather(probs, -1, x0[:, None])[:, 0]
    elif temperature > 0:
        try:
            x0 = torch.distributions.Categorical(probs=probs).sample()
            confidence = torch.gather(probs, -1, x0[:, None])[:, 0]
        except Exception:  # upstream falls back to greedy when sampling fails
            confidence, x0 = probs.max(dim=-1)
    else:
        # Note: the argmax of the *probabilities* (first index of the max), not of the logits.
        confidence, x0 = probs.max(dim=-1)
    if margin_confidence:
        top2 = torch.sort(probs, dim=-1, descending=True).values
        confidence = top2[:, 0] - top2[:, 1]
    if neg_entropy:
        confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return confidence, x0


def uniforms_from_grid(grid: Callable[[int], Tensor], start: int) -> Callable[[int, Tensor], Tensor]:
    """Adapt per-step uniforms over the generation to `dream_sample`'s `uniform` hook.

    grid(step) -> [B, G] uniforms, one per generated position (absolute position start + g). The hook returns the
    entries at the positions still masked at that step, row 0's left to right, then row 1's, ...: the order in
    which upstream's torch.rand(N) is consumed. Entries at committed positions are never read.
    """
    def uniform(step: int, mask_index: Tensor) -> Tensor:
        return grid(step)[mask_index[:, start:]]
    return uniform


# Upstream followed: Dream-org/Dream-v0-Instruct-7B `generation_utils.py::DreamGenerationMixin._sample` (HKUNLP;
# published on the Hugging Face hub, not on GitHub), read through two copies whose `_sample` is unchanged:
# NVlabs/Fast-dLLM dream/model/generation_utils.py at commit 24cc59e and ZHZisZZ/dllm
# dllm/pipelines/dream/models/generation_utils.py at commit 81c8016.
@torch.no_grad()
def dream_sample(model, prompt: Tensor, *, steps: int, max_new_tokens: int, eps: float = 1e-3,
                 alg: str = "maskgit_plus", alg_temp: Optional[float] = 0.0, temperature: float = 0.0,
                 top_p: Optional[float] = None, top_k: Optional[int] = None, mask_id: int,
                 attention_mask: Optional[Tensor] = None,
                 uniform: Optional[Callable[[int, Tensor], Tensor]] = None,
                 sample: Optional[Callable[[int, Tensor, Tensor], Tensor]] = None) -> tuple[Tensor, int]:
    """Dream `diffusion_generate`; mirrors Dream-org/Dream-v0-*-7B `generation_utils.py::_sample` (HKUNLP).

    One block over the whole generation, exactly `steps` forwards, shifted logits.
      - timesteps = torch.linspace(1, eps, steps + 1) (float32, torch's two-sided formula); t = ts[i], s = ts[i+1].
      - "origin": each masked position is revealed independently when u < p, p = 1 - s/t (a float32 tensor, so a
        float32 comparison) before the last step and the Python int 1 at the last step (u < 1: everything left,
        for u in [0, 1)). The N masked positions of the whole batch are flattened row-major (row 0 left to right,
        then row 1, ...) and get one uniform each, drawn first; then tokens are drawn for the revealed ones only,
        with `dream_sample_tokens` (temperature, top_p, top_k; the argmax of the filtered probabilities at
        temperature 0). Confidences are unused, alg_temp is ignored; a step that reveals nothing still counts.
          uniform(step, mask_index [B, L] bool) -> [N] uniforms for the masked positions in that order; default
            torch.rand(N), upstream's draw (see `uniforms_from_grid` for per-position uniforms).
          sample(step, probs [n, V], revealed [B, L] bool) -> [n] token ids, the draw at temperature > 0; probs
            are the filtered probabilities of the n revealed positions in the same row-major order; default
            torch Categorical (upstream's draw, after all the uniforms of the step).
      - "maskgit_plus" / "topk_margin" / "entropy": n = int(num_masked * (1 - s/t)) in float32 tensor arithmetic
        (num_masked = mask count / B, i.e. the per-row count), n = int(num_masked) at the last step; commit the
        top-n confidences (alg_temp 0/None) or n positions drawn without replacement from
        softmax(confidence / alg_temp).
      - With a padded attention mask (any 0): positions cumsum - 1 with pads at 1, attention only between real
        tokens (the RefModel lets a pad query attend to itself, which changes no real row).
    Returns (x [B, P + max_new_tokens], nfe == steps).
    Deviations: ties commit the lowest position first; prompts containing mask_id are rejected.
    """
    check_prompt(prompt, mask_id)
    if alg not in ("origin", "maskgit_plus", "topk_margin", "entropy"):
        raise ValueError(f"unknown alg {alg!r}")
    B, P = prompt.shape
    L = P + max_new_tokens
    x = torch.full((B, L), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    am = positions = None
    if attention_mask is not None and bool((attention_mask == 0).any()):
        am = torch.cat([attention_mask.bool(), torch.ones(B, max_new_tokens, dtype=torch.bool)], dim=1)
        positions = padded_position_ids(am)

    timesteps = torch.linspace(1, eps, steps + 1)
    nfe = 0
    for i in range(steps):
        mask_index = x == mask_id
        logits = shift_logits(model(x, attention_mask=am, position_ids=positions))
        nfe += 1
        mask_logits = logits[mask_index]  # [N, V], row-major over (batch, position)
        t, s = timesteps[i], timesteps[i + 1]

        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1  # float32 0-d tensor, or the int 1 at the last step
            n_masked = mask_logits.shape[0]
            u = uniform(i, mask_index) if uniform is not None else torch.rand(n_masked)
            if u.shape != (n_masked,):
                raise ValueError(f"uniform hook gave shape {tuple(u.shape)} at step {i}, want ({n_masked},)")
            reveal = u.to(torch.float32) < p_transfer  # [N] bool, row-major over the masked positions
            revealed = torch.zeros_like(mask_index)
            revealed[mask_index] = reveal
            draw = None if sample is None else (lambda probs, i=i, revealed=revealed: sample(i, probs, revealed))
            x0 = torch.full((n_masked,), mask_id, dtype=torch.long)
            _, x0[reveal] = dream_sample_tokens(mask_logits[reveal], temperature, top_p, top_k, sample=draw)
            x[mask_index] = x0
            continue

        confidence, x0 = dream_sample_tokens(mask_logits, temperature, top_p, top_k,
                                             margin_confidence=alg == "topk_margin", neg_entropy=alg == "entropy")
        num_mask_token = mask_index.sum() / mask_index.shape[0]  # float32 tensor
        n = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
        full_conf = torch.full((B, L), NEG_INF, dtype=logits.dtype)
        full_conf[mask_index] = confidence
        if n > 0:
            proposal = torch.full_like(x, mask_id)
            proposal[mask_index] = x0
            for j in range(B):
                if alg_temp is None or alg_temp == 0:
                    idx = topk_stable(full_conf[j], n)
                else:
                    idx = torch.multinomial(F.softmax(full_conf[j] / alg_temp, dim=-1), num_samples=n)
                x[j, idx] = proposal[j, idx]
    return x, nfe


# --- Fast-dLLM ----------------------------------------------------------------------------------------------------

def _llada_commit(logits: Tensor, window: Tensor, in_block: Tensor, mask_id: int, rule: str,
                  counts: Optional[list[int]], threshold: Optional[float], factor: Optional[float]) -> None:
    """Fast-dLLM `get_transfer_index` / `get_transfer_index_dynamic` (greedy, low_confidence), in place.

    logits: [B, W, V] raw logits of the window; window: [B, W] view into x (written in place);
    in_block: [B, W] bool, True at window positions inside the current block.
    """
    masked = (window == mask_id) & in_block
    x0 = torch.argmax(logits, dim=-1)
    p = F.softmax(logits.to(torch.float64), dim=-1)  # Fast-dLLM LLaDA: float64 confidence
    conf = torch.where(masked, torch.gather(p, -1, x0[..., None])[..., 0], torch.tensor(NEG_INF, dtype=p.dtype))
    for j in range(window.shape[0]):
        if rule == "counts":
            chosen = torch.zeros_like(masked[j])
            chosen[topk_stable(conf[j], counts[j])] = True
        elif rule == "threshold":
            chosen = threshold_select(conf[j], masked[j], threshold)
        else:
            chosen = factor_select(conf[j], masked[j], factor)
        window[j][chosen] = x0[j][chosen]


def _dream_commit(raw_logits: Tensor, window: Tensor, in_block: Tensor, mask_id: int, threshold: float) -> None:
    """Fast-dLLM Dream block sampler commit (alg="confidence_threshold", greedy), in place.

    Logits are shifted inside the window; confidence is the max softmax prob in the logits' dtype; threshold rule
    over the block's masked positions (at least the single best)."""
    masked = (window == mask_id) & in_block
    probs = torch.softmax(shift_logits(raw_logits), dim=-1)
    conf, x0 = probs.max(dim=-1)
    conf = torch.where(masked, conf, torch.tensor(NEG_INF, dtype=conf.dtype))
    for j in range(window.shape[0]):
        chosen = threshold_select(conf[j], masked[j], threshold)
        window[j][chosen] = x0[j][chosen]


@torch.no_grad()
def fastdllm_generate(model, prompt: Tensor, *, gen_length: int, block_length: int, steps: Optional[int] = None,
                      threshold: Optional[float] = None, factor: Optional[float] = None,
                      cache: Optional[str] = None, mask_id: int, family: str = "llada",
                      skip_wasted_forward: bool = True) -> tuple[Tensor, int]:
    """Fast-dLLM parallel decoding (greedy), with no cache, a prefix cache or a dual cache.

    family "llada" mirrors NVlabs/Fast-dLLM `llada/generate.py`: `generate` (cache=None),
    `generate_with_prefix_cache` ("prefix"), `generate_with_dual_cache` ("dual"), with `get_transfer_index`
    (counts when threshold and factor are None, else the threshold rule) and `get_transfer_index_dynamic`
    (factor). Confidence is the float64 softmax probability of the argmax.
      - cache=None: each block loops until it has no mask: min(s, m) forwards per block with counts.
      - "prefix"/"dual": one full forward at block start (one NFE) whose logits give the block's first commit
        (step-0 count), then cached forwards (x[start:] over the prefix keys/values [0, start), or only the block
        over the full cache with its keys/values replaced) until the block has no mask.
    family "dream" mirrors `dream/model/generation_utils_block.py::DreamGenerationMixin._sample` with
    alg="confidence_threshold" (`threshold` required; counts and factor are not part of that sampler): one full
    forward per block commits the block's first position unconditionally (its prediction comes from the last
    position before the block), then cached forwards with shifted window logits and the threshold rule on the
    float32 max probability. cache=None here is NOT an upstream function: it is the same sampler with every cached
    forward replaced by a full forward (the exact-cache limit), useful to compare caches against.

    skip_wasted_forward: the upstream cached loop (LLaDA at Fast-dLLM commit 24cc59e, Dream at every version
    seen) is do-while: it runs one more cached forward even when the block-start commit already filled the block
    (it commits nothing). True (default, jdlm's behaviour) skips and does not count it; False runs and counts it.
    (Newer Fast-dLLM LLaDA code, e.g. commit f6b35ec, checks before the forward, i.e. behaves like True.)
    Upstream with counts and s = 1 then indexes a second count and crashes; here that forward commits nothing.

    Returns (x [B, P + gen_length], nfe). Upstream is batch 1; B > 1 without padding works here (a block loops
    until every row is full; a full row commits nothing; factor with no masked position commits nothing where
    upstream crashes). Deviation: ties commit the lowest position first.
    """
    check_prompt(prompt, mask_id)
    if family not in ("llada", "dream"):
        raise ValueError(f"family must be 'llada' or 'dream', got {family!r}")
    if cache not in (None, "prefix", "dual"):
        raise ValueError(f"cache must be None, 'prefix' or 'dual', got {cache!r}")
    if threshold is not None and factor is not None:
        raise ValueError("give threshold or factor, not both")
    rule = "threshold" if threshold is not None else "factor" if factor is not None else "counts"
    if family == "dream" and rule != "threshold":
        raise ValueError("the Fast-dLLM Dream block sampler is reproduced with the threshold rule only")
    if gen_length % block_length:
        raise ValueError("gen_length must be divisible by block_length")
    num_blocks = gen_length // block_length
    if rule == "counts" and steps is None:
        raise ValueError("the count schedule needs steps")
    if steps is not None and steps % num_blocks:
        raise ValueError("steps must be divisible by the number of blocks")
    s = steps // num_blocks if steps is not None else None

    B, P = prompt.shape
    L = P + gen_length
    x = torch.full((B, L), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    positions = torch.arange(L).expand(B, L)
    nfe = 0

    for b in range(num_blocks):
        start = P + b * block_length
        end = start + block_length
        counts = None
        if rule == "counts":
            counts = [count_schedule(int(n), s) for n in (x[:, start:end] == mask_id).sum(1)]

        def counts_at(i):
            # Step i of the schedule; past its end (only the wasted forward with s = 1) commit nothing.
            return None if counts is None else [c[i] if i < len(c) else 0 for c in counts]

        # Step 0: a full forward (with cache: also fills the cache).
        if cache is None:
            logits = model(x)
        else:
            logits, kv = model.forward_full_with_cache(x)
        nfe += 1
        full_block = (positions >= start) & (positions < end)
        if family == "llada":
            _llada_commit(logits, x, full_block, mask_id, rule, counts_at(0), threshold, factor)
        else:
            # Unconditional commit of the block's first position with the (shifted) greedy proposal.
            x0 = torch.softmax(shift_logits(logits), dim=-1).max(dim=-1).indices
            x[:, start] = x0[:, start]

        i = 1
        while True:
            # Without a cache upstream's loop checks after each commit, so a full block never gets another
            # forward; the cached loops are do-while (see skip_wasted_forward).
            if (skip_wasted_forward or cache is None) and block_is_full(x, start, end, mask_id):
                break
            if cache is None:
                w0, window = 0, x
                logits = model(x)
            elif cache == "prefix":
                w0, window = start, x[:, start:]
                logits = model.forward_window(window, kv, mode="prefix", start=start)
            else:
                w0, window = start, x[:, start:end]
                logits = model.forward_window(window, kv, mode="dual", start=start)
            nfe += 1
            in_block = full_block[:, w0:w0 + window.shape[1]]
            if family == "llada":
                _llada_commit(logits, window, in_block, mask_id, rule, counts_at(i), threshold, factor)
            else:
                _dream_commit(logits, window, in_block, mask_id, threshold)
            if block_is_full(x, start, end, mask_id):
                break
            i += 1
    return x, nfe


# --- DAWN and AXON (attention-aware reveal rules) -------------------------------------------------------------------

# Upstream followed: lizhuo-luo/DAWN llada/generate.py `generate(dawn=True)` / `get_transfer_index_dawn` and
# llada/gdllm_utils.py at commit ab42898; Jerryaa98/AXON llada/generate.py `generate(unlock=True,
# unlock_technique="submodular-exit")` and llada/gdllm_utils.py `select_axon_adaptive_gate_anchors` at commit
# 2ff1c7d. Upstream runs batch 1; here every row is decided alone (as batch 1), so a padded batch can be compared.

def dawn_transfer(conf: Tensor, masked: Tensor, attn: Tensor, block_end: int, *, real: Optional[Tensor] = None,
                  tau_sink: float = 0.01, tau_edge: float = 0.07, tau_induce: float = 0.7, tau_low: float = 0.7,
                  tau_sure: float = 0.9, stats: Optional[dict] = None) -> Tensor:
    """`get_transfer_index_dawn` for one row: positions to commit [L] bool.

    conf [L] float64: the proposal's probability at every position (upstream's x0_p, also at decoded positions);
    masked [L] bool: masked positions up to block_end (upstream's mask_index with later blocks cleared);
    attn [L, L] averaged attention; real [L] bool: the query rows the sink test averages over (default all).
    stats counts how often each of DAWN's three sets was non-empty ("sure", "induced", "independent"); AXON adds
    "anchor_steps" and "most_anchors" (the most anchors revealed at one step).
    """
    rows = attn if real is None else attn[real]
    sink = rows.mean(dim=0) > tau_sink  # column mean
    a = attn.clone()
    a[:, sink] = 0.0
    a.fill_diagonal_(0.0)
    attends = (a >= tau_edge).T  # attends[k, i]: query i attends to key k
    confidence = torch.where(masked, conf, torch.full_like(conf, NEG_INF))
    sure = confidence >= tau_sure
    decoded = ~masked & (conf >= tau_sure)
    decoded[block_end:] = False
    dependent = (attends & decoded[:, None]).any(dim=0) & masked
    induced = torch.where(dependent, conf, torch.full_like(conf, NEG_INF)) >= tau_induce
    near_both = (attends & (induced & sure)[:, None]).any(dim=0)
    nodes = masked & (conf >= tau_low) & ~sure & ~induced & ~near_both
    chosen = torch.zeros_like(masked)
    if bool(nodes.any()):
        edges = nodes[:, None] & nodes[None, :] & attends
        conflict = edges | edges.T
        left = torch.where(nodes, conf, torch.full_like(conf, NEG_INF))
        while bool((left > NEG_INF).any()):  # upstream runs K rounds; rounds after the nodes run out are no-ops
            best = int(torch.argmax(left))
            chosen[best] = True
            left[best] = NEG_INF
            left[conflict[best]] = NEG_INF
    transfer = sure | induced | chosen
    if stats is not None:
        for name, part in (("sure", sure), ("induced", induced), ("independent", chosen)):
            stats[name] = stats.get(name, 0) + int(bool(part.any()))
    if not bool(transfer.any()):
        transfer[int(torch.argmax(confidence))] = True
    return transfer & masked


def axon_anchors(conf: Tensor, masked: Tensor, attn: Tensor, target: float, *, selector: str,
                 real: Optional[Tensor] = None, tau_sink: float = 0.01, candidate_topk: int = 32,
                 min_select: int = 1) -> Tensor:
    """`select_axon_adaptive_gate_anchors` for one row: anchors [L] bool (candidates in stable top-k order)."""
    rows = attn if real is None else attn[real]
    sink = rows.mean(dim=0) > tau_sink
    masked_pos = torch.nonzero(masked).flatten()
    n = masked_pos.numel()
    conf_masked = conf[masked_pos].float()
    k = max(min(candidate_topk, n), 1)
    cand = masked_pos[topk_stable(conf_masked, k)]
    cand_conf = conf[cand].float()
    most = 1 if selector == "fixed1" else int(math.ceil(math.log2(n + 1)))
    most = min(n, cand.numel(), max(min_select, most))
    a = attn[masked_pos][:, cand].float().clone()
    a[:, sink[cand]] = 0.0
    a[masked_pos[:, None] == cand[None, :]] = 0.0
    weights = a * (1.0 - conf_masked).clamp_min(0.0)[:, None] * cand_conf[None, :]
    cover = torch.zeros(n)  # per masked row, in position order
    chosen: list[int] = []
    available = torch.ones(cand.numel(), dtype=torch.bool)
    while len(chosen) < most:
        if selector == "cover" and len(chosen) >= min_select and float(cover.double().sum()) >= target:
            break
        remaining = torch.nonzero(available).flatten()
        if remaining.numel() == 0:
            break
        gain = (torch.maximum(cover[:, None], weights[:, remaining]) - cover[:, None]).sum(dim=0)
        best = int(torch.argmax(gain + 1e-6 * cand_conf[remaining]))
        if float(gain[best]) <= 0.0 and len(chosen) >= min_select:
            break
        pick = int(remaining[best])
        chosen.append(pick)
        available[pick] = False
        cover = torch.maximum(cover, weights[:, pick])
    if not chosen:
        chosen = [int(torch.argmax(cand_conf))]
    anchors = torch.zeros_like(masked)
    anchors[cand[chosen]] = True
    return anchors


@torch.no_grad()
def attention_generate(model, prompt: Tensor, *, gen_length: int, block_length: int, mask_id: int,
                       rule: str = "dawn", attention_layers: int = 4, attention_mask: Optional[Tensor] = None,
                       base: str = "dawn", threshold: float = 0.9, gate: str = "coverage_gap",
                       selector: str = "fixed1", max_anchor_steps: int = 1, pace_steps: int = 16,
                       candidate_topk: int = 32, min_select: int = 1, axon_sink: float = 0.01,
                       dawn_args: Optional[dict] = None,
                       stats: Optional[dict] = None) -> tuple[Tensor, list[int]]:
    """DAWN (`rule="dawn"`) or AXON on a base (`rule="axon"`, base "dawn" or "threshold") decoding, greedy.

    Blocks left to right; each block loops until it has no mask (one forward per step, full sequence, no cache).
    Attention: `model.forward_with_attention` over the last `attention_layers` layers. With an attention mask
    (left padding), positions count from each row's first real token and the sink test averages real query rows.
    AXON (upstream `submodular-exit`): at step i of a block with i < max_anchor_steps, the gate ("coverage_gap"
    or "progress_stall" with pace `pace_steps`) is computed on the base's proposal D; when it fires, the anchors
    replace D. (Upstream also computes a confidence exit there and then overwrites it with the gate; it never acts.)
    Returns (x [B, P + G], per-row NFE).
    """
    check_prompt(prompt, mask_id)
    dawn_args = dawn_args or {}
    B, P = prompt.shape
    L = P + gen_length
    x = torch.full((B, L), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    am = positions = real = None
    if attention_mask is not None:
        am = torch.cat([attention_mask.bool(), torch.ones(B, gen_length, dtype=torch.bool)], dim=1)
        positions = padded_position_ids(am)
        real = am
    layers = range(max(0, model.config.n_layers - attention_layers), model.config.n_layers)
    nfe = [0] * B
    for b in range(gen_length // block_length):
        start, end = P + b * block_length, P + (b + 1) * block_length
        last_rate = [None] * B
        i = 0
        while bool((x[:, start:end] == mask_id).any()):
            logits, attn = model.forward_with_attention(x, layers, attention_mask=am, position_ids=positions)
            for j in range(B):
                masked = x[j] == mask_id
                masked[end:] = False
                if not bool(masked.any()):
                    continue
                nfe[j] += 1
                x0 = torch.argmax(logits[j], dim=-1)
                conf = torch.gather(F.softmax(logits[j].double(), dim=-1), -1, x0[:, None])[:, 0]
                row_real = None if real is None else real[j]
                if rule == "dawn" or base == "dawn":
                    proposal = dawn_transfer(conf, masked, attn[j], end, real=row_real, stats=stats, **dawn_args)
                else:
                    proposal = threshold_select(torch.where(masked, conf, torch.full_like(conf, NEG_INF)), masked,
                                                threshold) & masked
                transfer = proposal
                if rule == "axon" and i < max_anchor_steps:
                    fires, target, last_rate[j] = _axon_gate(conf, masked, proposal, attn[j], start, end, i,
                                                             last_rate[j], gate, pace_steps)
                    if fires:
                        transfer = axon_anchors(conf, masked, attn[j], target, selector=selector, real=row_real,
                                                tau_sink=axon_sink, candidate_topk=candidate_topk,
                                                min_select=min_select)
                        if stats is not None:
                            stats["anchor_steps"] = stats.get("anchor_steps", 0) + 1
                            stats["most_anchors"] = max(stats.get("most_anchors", 0), int(transfer.sum()))
                x[j, transfer] = x0[transfer]
            i += 1
    return x, nfe


def _axon_gate(conf, masked, proposal, attn, start, end, step, last_rate, gate, pace_steps):
    """AXON's gate for one row at one step: (fires, C(D) for the cover selector, this step's reveal fraction)."""
    block = torch.arange(start, end)
    m = masked[start:end]
    d = proposal[start:end] & m
    rest = m & ~d
    n, n_d, n_rest = int(m.sum()), int(d.sum()), int(rest.sum())
    rate = n_d / max(1, n)
    c = conf[start:end]  # greedy: the top probability
    rest_conf = float(c[rest].mean()) if n_rest else 1.0
    support, target = 1.0, 0.0
    if n_rest:
        rows = attn[block[rest]]
        if n_d == 0:
            support = 0.0
        else:
            share = (rows[:, block[d]].sum(dim=1) / (rows[:, block].sum(dim=1) + 1e-8)).clamp(0.0, 1.0)
            support = float(share.mean())
            weights = rows[:, block[d]].float() * (1.0 - c[rest].float()).clamp_min(0.0)[:, None] * \
                c[d].float()[None, :]
            # Summed like the selector's coverage (float64, per masked row in position order, 0 on D's rows): an
            # anchor set equal to D then covers exactly C(D). Upstream sums both in float32 over different rows,
            # which can split that tie either way.
            per_row = torch.zeros(n, dtype=torch.float64)
            per_row[rest[m]] = weights.max(dim=1).values.double()
            target = float(per_row.sum())
    if gate == "coverage_gap":
        fires = support < rate or (n_rest > 0 and support < 1.0 - rest_conf)
    else:
        remaining = max(1, pace_steps - step)
        expected = (math.ceil(n / remaining) if n else 0) / max(1, n)
        fires = last_rate is not None and rate <= last_rate and rate < expected
    return fires, target, rate
