"""What the commands share: consoles, loading a model, building a strategy from flags, timing a compiled decode."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

from jdlm.cli.args import PACKAGED_MODELS
from jdlm.cli.memory import check_checkpoint_memory
from jdlm.cli.models import model_dir
from jdlm.errors import InputError, UsageError


def stderr_console():
    """Where everything but the answer goes: summaries, spinners, the --show replay."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def note(console, message: str, style: str = "dim") -> None:
    """One line on `console`, printed literally (no rich markup: paths and messages may hold brackets)."""
    from rich.text import Text

    console.print(Text(message, style=style))


# ---------------------------------------------------------------- strategy and model


def block_length(args) -> int:
    """--block-length, or by default 32 when it divides --gen-length, else one block of the whole generation."""
    return args.block_length or (32 if args.gen_length % 32 == 0 else args.gen_length)


def build_strategy(args, spec: str | None = None, steps: int | None = None):
    """A `jdlm.Strategy` from the strategy flags; errors name the flag to change.

    `--strategy` takes a whole spec (`jdlm.strategies.parse_strategy`): "threshold:0.9", "threshold:0.9 dual",
    "entropy top_p=0.9"; the lengths, --temperature, --cfg and --cache fill in what the spec does not say.
    """
    from jdlm import strategies as S

    G = args.gen_length
    block = block_length(args)
    if block > G:
        raise UsageError(f"--block-length {block} is larger than --gen-length {G}; use a block length that divides "
                         "the generation length")
    if G % block:
        raise UsageError(f"--gen-length {G} is not a multiple of --block-length {block}; choose lengths where the "
                         f"block divides the generation (e.g. --gen-length {G - G % block or block} "
                         f"--block-length {block})")
    steps = steps or G
    n_blocks = G // block
    if steps % n_blocks:
        raise UsageError(f"--steps {steps} must be a multiple of the number of blocks ({n_blocks} = --gen-length "
                         f"{G} / --block-length {block})")
    schedule = S.Schedule(gen_length=G, block_length=block, steps=steps, temperature=args.temperature,
                          stop_at_eos=not args.no_eos_stop)
    base = S.Strategy(schedule=schedule, guidance=S.Guidance(cfg_scale=args.cfg) if args.cfg else None)
    spec = spec or args.strategy
    rule, _, options = spec.strip().partition(" ")
    try:  # the spec's own cache, if it names one, wins over --cache
        strategy = S.parse_strategy(f"{rule} cache={args.cache} {options}", base)
        if getattr(args, "guide", None) and strategy.guide is None:
            strategy = strategy.replace(guide=S.ARGuide())
        return strategy
    except S.StrategyError as e:
        raise UsageError(str(e) if str(e).startswith("unknown strategy") else f"--strategy {spec}: {e}") from None


def describe(strategy) -> str:
    """`threshold:0.9, dual cache, 64 tokens in blocks of 32`: the strategy in one line, for summaries."""
    from jdlm.decoding import names
    from jdlm.decoding.strategy import rule_spec

    s = strategy.schedule
    cache = names.name_of(strategy.cache, names.CACHES)
    text = f"{rule_spec(strategy.rule)}, {'no' if cache == 'none' else cache} cache, {s.gen_length} tokens in " \
           f"blocks of {s.block_length}"
    if strategy.guidance:
        text += f", cfg {strategy.guidance.cfg_scale:g}"
    if strategy.guide:
        text += f", AR guide ({strategy.guide.accept}, chunks of {strategy.guide.chunk})"
    return text


def enable_compilation_cache() -> Path | None:
    """Turns on JAX's persistent compilation cache, so a second run of the same shapes and strategy structure loads
    the compiled decode instead of compiling it again (seconds on CPU, 7-11 s per strategy at 8B on a GPU).

    Where: $JDLM_COMPILATION_CACHE if it is a path, else $XDG_CACHE_HOME/jdlm/jax (default ~/.cache/jdlm/jax).
    JDLM_COMPILATION_CACHE=0 turns it off. Entries are keyed by the program and the JAX version; deleting the folder
    is always safe. The decode's own programs are also stored there (`jdlm.decoding.executables`, unless
    JDLM_EXECUTABLE_CACHE=0), so that a later process skips tracing and lowering them too.
    """
    import jax

    setting = os.environ.get("JDLM_COMPILATION_CACHE", "").strip()
    if setting.lower() in ("0", "off", "false", "no"):
        return None
    path = Path(setting).expanduser() if setting else \
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jdlm" / "jax"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache rather than fail
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # every program: small ones add up at start-up
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def device_mesh(args):
    """The mesh of --mesh (default: every visible device, data parallel), after joining a multi-host run
    (`jdlm.sharding.initialize_distributed`); None on a single device."""
    import jax

    from jdlm import sharding

    sizes = sharding.parse_mesh(args.mesh) if args.mesh else {}
    sharding.initialize_distributed()
    if not sizes and jax.device_count() == 1:
        return None
    return sharding.make_mesh(**sizes)


def prompt_mesh(args):
    """The mesh of --mesh for commands that decode one prompt at a time (generate, chat): one device unless --mesh
    is given (a lone prompt gains nothing from data parallelism; tensor parallelism fits a model larger than one
    device)."""
    return device_mesh(args) if args.mesh else None


def load_model(args, mesh=None, tokenizer=None):
    """`(params, tokenizer, note)` for --model/--dtype, sharded over `mesh` when given; `note` is a one-line
    account of what was loaded, for the caller to print once the command is past its checks (an error must stay
    the only line). `tokenizer`: the model's, already loaded (`prefetch_for_prompt`)."""
    import jax

    import jdlm
    from jdlm import sharding
    from jdlm.checkpoint import load_params
    from jdlm.quantize import mode_of

    enable_compilation_cache()
    dtype = load_dtype(args)
    if dtype == "float16" and jax.default_backend() == "cpu":  # XLA's CPU matmuls have no float16 kernel
        raise UsageError("--dtype float16 does not run on CPU; use --dtype float32 or bfloat16 (or auto)")
    shards = 1 if mesh is None else mesh.shape[sharding.MODEL]  # restored sharded: a device holds 1/model
    check_checkpoint_memory(model_dir(args.model), dtype, f"--model {args.model}", shards)
    t0 = time.perf_counter()
    try:
        if tokenizer is None:
            params, tokenizer = jdlm.load(args.model, dtype=dtype, mesh=mesh, quantize=getattr(args, "quantize", None))
        else:
            params = load_params(args.model, dtype=dtype, mesh=mesh, quantize=getattr(args, "quantize", None))
    except jdlm.CheckpointError as e:
        if args.model in PACKAGED_MODELS and "not installed" in str(e):
            raise UsageError(f"{e}, or pass --model DIR with a converted checkpoint (jdlm convert --help)") from None
        raise
    params = runtime_layout(args, params)
    cfg = params.config
    kind = f"{cfg.family}, causal" if cfg.causal else cfg.family
    mode = mode_of(params.weights)
    weights = f"{params.dtype}, {mode} linear weights" if mode else str(params.dtype)
    loaded = (f"loaded {args.model} ({kind}, {cfg.n_params / 1e6:.1f}M parameters, {weights}) in "
              f"{time.perf_counter() - t0:.1f} s" + (f" onto {sharding.describe(mesh)}" if mesh else ""))
    if args.model in PACKAGED_MODELS and Path(args.model).is_dir():  # the name wins: say so, once
        loaded += f" (the packaged model; for the folder ./{args.model} pass --model ./{args.model})"
    return params, tokenizer, loaded


def load_dtype(args) -> str | None:
    """The dtype --dtype asks `jdlm.load` for: "auto" is float32 on CPU and the stored dtype (None) elsewhere."""
    import jax

    if args.dtype == "auto":
        return "float32" if jax.default_backend() == "cpu" else None
    return args.dtype


def runtime_layout(args, params):
    """`params` with fused projections (`jdlm.fuse_projections`) on a GPU, on one device, without --no-fuse and with
    room on the device for a second copy of the weights being fused (`room_to_fuse`); else as they are. Measured
    faster on an H100 (docs/performance.md); elsewhere not measured to pay. The separate weights are freed as each
    layer is fused (the caller's `params` must not be used again). Also sets the kernels' modes (`set_kernel_modes`).
    """
    from jdlm.model import fuse_projections

    set_kernel_modes(args)
    return fuse_projections(params, free_inputs=True) if will_fuse(args, params) else params


def set_kernel_modes(args) -> None:
    """--no-attention-kernel turns the window attention kernel off (its default, "auto", runs it on one GPU without
    grouped-query attention), --no-matmul-kernel the float matmul kernel and the int8 SwiGLU kernel (their "auto":
    one Hopper GPU); set before any decode is traced or looked up in the store of compiled decodes
    (`prefetch_for_prompt`), whose keys hold the modes."""
    from jdlm.kernels import float_linear, int8_swiglu, window_attention

    if not getattr(args, "attention_kernel", True):
        window_attention.set_mode("off")
    if not getattr(args, "matmul_kernel", True):
        float_linear.set_mode("off")
        int8_swiglu.set_mode("off")


def will_fuse(args, params, *, loading: bool = False) -> bool:
    """Whether `runtime_layout` fuses these params: arrays on the device, or with `loading` the shapes of weights
    not loaded yet, whose bytes are counted as in use, as they will be when `runtime_layout` decides."""
    import jax

    from jdlm import sharding
    from jdlm.quantize import weight_bytes

    if not getattr(args, "fuse", True) or jax.default_backend() != "gpu" or sharding.mesh_of(params) is not None:
        return False
    stats = jax.devices()[0].memory_stats()
    if loading and stats:
        stats = {**stats, "bytes_in_use": stats.get("bytes_in_use", 0) + weight_bytes(params.weights)}
    return room_to_fuse(params, stats)


def prefetch_for_prompt(args, strategy, messages: list[dict[str, str]], *, steps: bool):
    """Before the weights load: the model's tokenizer (for `load_model` to reuse), and the decode of these messages'
    ids started loading from jdlm's store of compiled decodes (`jdlm.decoding.prefetch`, from the checkpoint's
    shapes in the layout `load_model` will give the weights), so that a command run before with the same shapes
    finds its programs loaded once its weights are. Returns the tokenizer, or None when it cannot be loaded; a
    failure after it only skips the prefetch (the load and decode that follow report a real problem, such as a
    prompt too long, as they always do: this part only saves time)."""
    import jax
    import numpy as np

    from jdlm.checkpoint import checkpoint_shapes, load_tokenizer
    from jdlm.decoding import abstract_params, executables, prefetch
    from jdlm.model import fuse_projections

    try:
        tokenizer = load_tokenizer(args.model)
    except Exception:  # noqa: BLE001
        return None
    try:
        enable_compilation_cache()
        set_kernel_modes(args)
        if executables.store_directory() is None or getattr(args, "guide", None) or jax.device_count() != 1:
            return tokenizer
        prompt_ids = encode(tokenizer, messages, chat=not args.no_chat)
        shapes = checkpoint_shapes(args.model, load_dtype(args), quantize=getattr(args, "quantize", None))
        if will_fuse(args, shapes, loading=True):
            shapes = jax.eval_shape(fuse_projections, shapes)
        prefetch(abstract_params(shapes), np.asarray([prompt_ids], np.int32), strategy,
                 key=jax.random.key(args.seed), steps=steps)
    except Exception:  # noqa: BLE001, S110 (no prefetch: the load and decode after report what is wrong)
        pass
    return tokenizer


def room_to_fuse(params, memory_stats: dict | None) -> bool:
    """Whether the device's free memory (`memory_stats()`: bytes_limit - bytes_in_use) holds a second copy of every
    weight `fuse_projections` replaces (q, k, v, gate, up and their scales): the worst case, where the allocator
    reuses none of the freed buffers for the fused ones. Unknown stats count as no room: a GPU that just fits the
    model decodes unfused rather than running out of memory while fusing."""
    if not memory_stats or "bytes_limit" not in memory_stats:
        return False
    from jdlm.model import SEPARATE_PROJECTIONS
    from jdlm.quantize import scale_name, weight_bytes

    names = {*SEPARATE_PROJECTIONS, *map(scale_name, SEPARATE_PROJECTIONS)}
    replaced = weight_bytes([a for layer in params.weights["layers"] for n, a in layer.items() if n in names])
    return memory_stats["bytes_limit"] - memory_stats.get("bytes_in_use", 0) >= replaced


def load_guide(args, params):
    """The weights of --guide (a causal model on the same tokenizer) in the dtype of `params`, or None."""
    if not getattr(args, "guide", None):
        return None
    import jdlm
    from jdlm.decoding.ar_guide import ARGuide

    check_checkpoint_memory(model_dir(args.guide), None, f"--guide {args.guide}")
    guide, _ = jdlm.load(args.guide, dtype=params.dtype)
    try:
        ARGuide.check_pair(params, guide)
    except jdlm.StrategyError as e:
        raise UsageError(f"--guide {args.guide}: {e}") from None
    return runtime_layout(args, guide)


def joint_steps(args) -> int | None:
    """--steps, or with --joint K and no --steps, --gen-length / K (K tokens per full forward), checked to give
    every block the same number of steps."""
    if args.steps or not getattr(args, "joint", None):
        return args.steps
    G, K = args.gen_length, args.joint
    if G % K:
        raise UsageError(f"--joint {K} does not divide --gen-length {G}; give --steps, or a K that divides the "
                         "generation length")
    block = block_length(args)
    if block <= G and G % block == 0 and (G // K) % (G // block):  # bad lengths themselves: build_strategy says so
        raise UsageError(f"--joint {K} gives {G // K} steps (--gen-length {G} / {K}), not a multiple of the number "
                         f"of blocks ({G // block} = --gen-length {G} / --block-length {block}); choose a K that "
                         "divides the block length, or give --steps")
    return G // K


def attach_joint(args, strategy, params):
    """`strategy` with --joint's sampler (the head from --joint-head or stored with the model, checked against
    `params`), or unchanged without --joint."""
    if not getattr(args, "joint", None):
        return strategy
    from jdlm.errors import CheckpointError, StrategyError
    from jdlm.joint import JointSampler
    from jdlm.joint.head import PACKAGED_HEAD

    head = args.joint_head or model_dir(args.model) / PACKAGED_HEAD
    try:
        return strategy.replace(proposer=JointSampler.load(head, k=args.joint, base=params))
    except (CheckpointError, StrategyError) as e:
        hint = "" if args.joint_head else "; train one with `jdlm train-sampler` and pass it with --joint-head"
        raise UsageError(f"--joint {args.joint}: {e}{hint if 'no sampler head' in str(e) else ''}") from None


def encode(tokenizer, messages: list[dict[str, str]], *, chat: bool) -> list[int]:
    """Prompt ids: through the chat template when there is one and `chat`, else the last message as plain text.
    A template that fails to render is a TokenizerError (one line), raised by the tokenizer."""
    if chat and tokenizer.chat_template:
        return tokenizer.encode_chat(messages)
    return tokenizer.encode(messages[-1]["content"])


def check_fits(n_prompt: int, gen_length: int, max_seq_len: int) -> None:
    """The prompt and the generation fit the model's context; the message blames the one that does not."""
    if n_prompt + gen_length <= max_seq_len:
        return
    if gen_length >= max_seq_len:
        room = max_seq_len - n_prompt
        fix = f"use --gen-length {room} or less" if room > 0 else "lower --gen-length and shorten the prompt"
        raise UsageError(f"--gen-length {gen_length} exceeds the model's max_seq_len {max_seq_len} (the {n_prompt} "
                         f"prompt tokens need room too); {fix}")
    raise UsageError(f"prompt too long: {n_prompt} prompt tokens + --gen-length {gen_length} = "
                     f"{n_prompt + gen_length} exceeds the model's max_seq_len {max_seq_len}; shorten the "
                     "prompt or lower --gen-length")


def check_utf8(text: str, what: str = "the prompt") -> str:
    """`text` if it came from valid UTF-8; stdin and argv keep undecodable bytes as lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        byte = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"character U+{code:04X}"
        raise InputError(f"{what} is not valid UTF-8 ({byte} at character {e.start}); convert it first, e.g. "
                         "iconv -f latin1 -t utf-8") from None
    return text


def check_steps(args) -> None:
    """Every step reveals at least one token, so a budget above --gen-length would silently shrink to it."""
    if args.steps is not None and args.steps > args.gen_length:
        raise UsageError(f"--steps {args.steps} is more than --gen-length {args.gen_length}: every step reveals at "
                         f"least one token, so at most {args.gen_length} steps can run; use --steps "
                         f"{args.gen_length} or less")


def decoding_label(args, strategy) -> str:
    """How the model decodes, in one line, for summaries and titles."""
    if strategy is None:
        return f"greedy left to right (causal), KV cache, up to {args.gen_length} tokens"
    return describe(strategy)


# ---------------------------------------------------------------- timing a compiled decode

_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration",
                   "/jdlm/executables/load_duration", "/jdlm/executables/store_duration")  # jdlm.decoding.executables


class CompileClock:
    """Adds up the seconds JAX spends tracing, lowering and compiling, and jdlm loading or storing a compiled
    decode, while the block runs (jax.monitoring events), so one call can be split into compile time and run time
    without running it twice."""

    seconds: float = 0.0

    def _on_event(self, event: str, duration: float, **kwargs) -> None:
        if event in _COMPILE_EVENTS:
            self.seconds += duration

    def __enter__(self) -> "CompileClock":
        import jax

        self.seconds = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)
        return self

    def __exit__(self, *exc) -> None:
        import jax

        jax.monitoring.unregister_event_duration_listener(self._on_event)


@dataclasses.dataclass
class Timed:
    """A decode of one row and where its time went."""

    result: object  # jdlm.DecodeResult
    answer_ids: list[int]
    compile_s: float
    run_s: float

    @property
    def tokens_per_s(self) -> float:
        return len(self.answer_ids) / self.run_s if self.run_s > 0 else 0.0

    def summary(self) -> str:
        nfe = int(self.result.nfe[0])
        guide_nfe = getattr(self.result, "guide_nfe", None)
        nfe = f"{nfe}, guide NFE {int(guide_nfe[0])}" if guide_nfe is not None else nfe
        text = f"decoded {len(self.answer_ids)} tokens in {self.run_s:.2f} s ({self.tokens_per_s:.0f} tok/s, NFE {nfe})"
        return f"compiled in {self.compile_s:.2f} s, {text}" if self.compile_s >= 0.01 else text


def run_decode(params, tokenizer, prompt_ids: list[int], strategy, *, gen_length: int, seed: int,
               bucket: bool = False, console=None, live=None, guide=None) -> Timed:
    """Decodes one prompt: with `strategy`, or greedily with `jdlm.decode_causal` when it is None (a causal
    model); `bucket` pads the prompt to a standard length (when that still fits) so that prompts of similar
    length share one compilation.

    Without `live`, the decode is the one compiled call (`jdlm.decode`), run in a worker thread so that Ctrl-C
    stops the command at once instead of after the decode. With `live`, a callable taking the iterator of partial
    results (`jdlm.decoding.decode_steps`) and returning the last: one compiled step at a time, for live views.
    """
    import jax
    import jax.numpy as jnp

    import jdlm
    from jdlm.decoding import decode_steps

    G = gen_length
    check_fits(len(prompt_ids), G, params.config.max_seq_len)
    ids, mask = [prompt_ids], None
    if bucket:
        padded, padded_mask = jdlm.pad_prompts([prompt_ids], tokenizer.pad_id)
        if padded.shape[1] + G <= params.config.max_seq_len:
            ids, mask = padded, padded_mask
    prompt, prompt_mask = jnp.asarray(ids, jnp.int32), None if mask is None else jnp.asarray(mask)
    kwargs = {"key": jax.random.key(seed), "prompt_mask": prompt_mask, "guide": guide}
    spinner = console.status("decoding (the first call of a shape also compiles) ...") \
        if console is not None and console.is_interactive and live is None else None
    if spinner:
        spinner.start()
    try:
        with CompileClock() as clock:
            t0 = time.perf_counter()
            if strategy is None:
                result = interruptible(lambda: jax.block_until_ready(
                    jdlm.decode_causal(params, prompt, G, prompt_mask=prompt_mask)))
            elif live is not None:
                result = live(decode_steps(params, prompt, strategy, **kwargs))
            else:
                result = interruptible(lambda: jax.block_until_ready(jdlm.decode(params, prompt, strategy, **kwargs)))
            total = time.perf_counter() - t0
    finally:
        if spinner:
            spinner.stop()
    compile_s = min(clock.seconds, total)
    return Timed(result=result, answer_ids=tokenizer.answer_ids(result.tokens[0]), compile_s=compile_s,
                 run_s=total - compile_s)


def interruptible(work):
    """`work()` in a worker thread, the main thread waiting in short slices: Ctrl-C reaches the main thread at once
    (a compiled call blocks it until the device finishes); the command then exits without waiting for the work."""
    done: dict = {}

    def target():
        try:
            done["value"] = work()
        except BaseException as e:  # handed to the main thread below
            done["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.05)
    if "error" in done:
        raise done["error"]
    return done["value"]
