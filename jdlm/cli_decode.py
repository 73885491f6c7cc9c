"""`jdlm generate` and `jdlm chat`, and what they share: loading a model, building a strategy from flags, timing
a compiled decode (compile and run apart)."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from jdlm.cli import PACKAGED_MODELS, UsageError

TRACE_KINDS = (".html", ".htm", ".png")


def stderr_console():
    """Where everything but the answer goes: summaries, spinners, the --show replay."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def note(console, message: str, style: str = "dim") -> None:
    """One line on `console`, printed literally (no rich markup: paths and messages may hold brackets)."""
    from rich.text import Text

    console.print(Text(message, style=style))


# ---------------------------------------------------------------- strategy and model


def build_strategy(args, spec: str | None = None, steps: int | None = None):
    """A `jdlm.Strategy` from the strategy flags; errors name the flag to change."""
    from jdlm import strategies as S

    G = args.gen_length
    block = args.block_length or (32 if G % 32 == 0 else G)
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
    guidance = S.Guidance(cfg_scale=args.cfg) if args.cfg else None
    spec = spec or args.strategy
    try:
        rule = S.parse_rule(spec)
    except S.StrategyError as e:
        raise UsageError(str(e) if str(e).startswith("unknown strategy") else f"--strategy {spec}: {e}") from None
    return S.Strategy(schedule=schedule, rule=rule, cache=S.parse_cache(args.cache), guidance=guidance)


def describe(strategy, spec: str) -> str:
    """`threshold:0.9, dual cache, 64 tokens in blocks of 32`: the strategy in one line, for summaries."""
    s = strategy.schedule
    cache = {"NoCache": "no cache", "PrefixCache": "prefix cache", "DualCache": "dual cache"}.get(
        type(strategy.cache).__name__, type(strategy.cache).__name__)
    text = f"{spec}, {cache}, {s.gen_length} tokens in blocks of {s.block}"
    if strategy.guidance:
        text += f", cfg {strategy.guidance.cfg_scale:g}"
    return text


def load_model(args):
    """`(params, tokenizer, note)` for --model/--dtype; `note` is a one-line account of what was loaded, for the
    caller to print once the command is past its checks (an error must stay the only line)."""
    import jax

    import jdlm

    dtype = args.dtype
    if dtype == "auto":
        dtype = "float32" if jax.default_backend() == "cpu" else None
    t0 = time.perf_counter()
    try:
        params, tokenizer = jdlm.load(args.model, dtype=dtype)
    except jdlm.CheckpointError as e:
        if args.model in PACKAGED_MODELS and "not installed" in str(e):
            raise UsageError(f"{e}, or pass --model DIR with a converted checkpoint (jdlm convert --help)") from None
        raise
    cfg = params.config
    loaded = (f"loaded {args.model} ({cfg.family}, {cfg.n_params / 1e6:.1f}M parameters, {params.dtype}) in "
              f"{time.perf_counter() - t0:.1f} s")
    return params, tokenizer, loaded


def encode(tokenizer, messages: list[dict[str, str]], *, chat: bool) -> list[int]:
    """Prompt ids: through the chat template when there is one and `chat`, else the last message as plain text."""
    if chat and tokenizer.chat_template:
        return tokenizer.encode_chat(messages)
    return tokenizer.encode(messages[-1]["content"])


def check_fits(n_prompt: int, gen_length: int, max_seq_len: int) -> None:
    if n_prompt + gen_length > max_seq_len:
        raise UsageError(f"prompt too long: {n_prompt} prompt tokens + --gen-length {gen_length} = "
                         f"{n_prompt + gen_length} exceeds the model's max_seq_len {max_seq_len}; shorten the "
                         "prompt or lower --gen-length")


# ---------------------------------------------------------------- timing a compiled decode

_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


class CompileClock:
    """Adds up the seconds JAX spends tracing, lowering and compiling while the block runs (jax.monitoring
    events), so one call can be split into compile time and run time without running it twice."""

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
        text = f"decoded {len(self.answer_ids)} tokens in {self.run_s:.2f} s ({self.tokens_per_s:.0f} tok/s, NFE {nfe})"
        return f"compiled in {self.compile_s:.2f} s, {text}" if self.compile_s >= 0.01 else text


def run_decode(params, tokenizer, prompt_ids: list[int], strategy, *, seed: int, bucket: bool = False,
               console=None) -> Timed:
    """Decodes one prompt; `bucket` pads it to a standard length (when that still fits) so that prompts of
    similar length share one compilation."""
    import jax
    import jax.numpy as jnp

    import jdlm

    G = strategy.schedule.gen_length
    check_fits(len(prompt_ids), G, params.config.max_seq_len)
    ids, mask = [prompt_ids], None
    if bucket:
        padded, padded_mask = jdlm.pad_prompts([prompt_ids], tokenizer.pad_id)
        if padded.shape[1] + G <= params.config.max_seq_len:
            ids, mask = padded, padded_mask
    spinner = console.status("decoding (the first call of a shape also compiles) ...") \
        if console is not None and console.is_interactive else None
    if spinner:
        spinner.start()
    try:
        with CompileClock() as clock:
            t0 = time.perf_counter()
            result = jdlm.decode(params, jnp.asarray(ids, jnp.int32), strategy, key=jax.random.key(seed),
                                 prompt_mask=None if mask is None else jnp.asarray(mask))
            result = jax.block_until_ready(result)
            total = time.perf_counter() - t0
    finally:
        if spinner:
            spinner.stop()
    compile_s = min(clock.seconds, total)
    return Timed(result=result, answer_ids=tokenizer.answer_ids(result.tokens[0]), compile_s=compile_s,
                 run_s=total - compile_s)


# ---------------------------------------------------------------- generate


def read_prompt(prompt: str | None) -> str:
    if prompt is None and sys.stdin.isatty():
        raise UsageError('give a prompt: jdlm generate "What is 17 * 23?" (or pipe one: echo ... | jdlm generate -)')
    if prompt is None or prompt == "-":
        prompt = sys.stdin.read()
    prompt = prompt.strip()
    if not prompt:
        raise UsageError('the prompt is empty; give some text, e.g. jdlm generate "What is 17 * 23?"')
    return prompt


def check_trace_path(path: str | None) -> str | None:
    """The trace format from --trace's suffix; checked before any work is done."""
    if path is None:
        return None
    suffix = Path(path).suffix.lower()
    if suffix not in TRACE_KINDS:
        raise UsageError(f"--trace {path}: unknown picture format {suffix or '(no suffix)'!r}; give a file ending "
                         "in .html or .png")
    parent = Path(path).expanduser().parent
    if not parent.is_dir():
        raise UsageError(f"--trace {path}: directory {parent} does not exist; create it or choose another path")
    return "png" if suffix == ".png" else "html"


def generate(args) -> int:
    """`jdlm generate`: the answer on stdout, everything else on stderr."""
    trace_kind = check_trace_path(args.trace)
    prompt = read_prompt(args.prompt)
    console = stderr_console()
    strategy = build_strategy(args, steps=args.steps)
    params, tokenizer, loaded = load_model(args)
    prompt_ids = encode(tokenizer, [{"role": "user", "content": prompt}], chat=not args.no_chat)
    timed = run_decode(params, tokenizer, prompt_ids, strategy, seed=args.seed,
                       console=None if args.quiet else console)
    result = timed.result
    text = tokenizer.decode(timed.answer_ids)
    if not args.quiet:
        note(console, loaded)
        note(console, timed.summary())

    if args.show or trace_kind:
        from jdlm import viz

        trace = viz.RevealTrace.from_result(result, tokenizer)
        meta = f"{args.model} · {describe(strategy, args.strategy)} · NFE {int(result.nfe[0])}"
        if args.show:
            viz.show(trace, console, title=f"{args.strategy}: ")
        if trace_kind == "html":
            viz.write_html(trace, Path(args.trace).expanduser(), prompt=prompt, meta=meta)
        elif trace_kind == "png":
            viz.write_png(trace, Path(args.trace).expanduser(), title=meta)
        if trace_kind and not args.quiet:
            note(console, f"wrote {args.trace}")

    if args.json:
        steps = [int(s) for s in result.trace.step[0][: len(timed.answer_ids)]]
        print(json.dumps({
            "text": text, "token_ids": timed.answer_ids, "reveal_step": steps, "nfe": int(result.nfe[0]),
            "steps": int(result.steps), "compile_s": round(timed.compile_s, 4), "run_s": round(timed.run_s, 4),
            "tokens_per_s": round(timed.tokens_per_s, 2), "prompt_tokens": len(prompt_ids),
            "gen_length": strategy.schedule.gen_length, "model": args.model, "strategy": args.strategy,
            "cache": args.cache,
        }))
    else:
        print(text)
    return 0


# ---------------------------------------------------------------- chat


def chat(args) -> int:
    """`jdlm chat`: a read-decode-print loop over stdin that keeps the conversation."""
    from jdlm.decoding import InputError

    console = stderr_console()
    interactive = sys.stdin.isatty()
    strategy = build_strategy(args, steps=args.steps)
    params, tokenizer, loaded = load_model(args)
    if not args.quiet:
        note(console, loaded)
    if not tokenizer.chat_template:
        note(console, "note: this model has no chat template; each line is sent as plain text without the "
             "conversation", "yellow")
    if interactive:
        note(console, f"chatting with {args.model} ({describe(strategy, args.strategy)}); /reset forgets the "
             "conversation, /exit or Ctrl-D quits")
    messages: list[dict[str, str]] = []
    while True:
        line = _read_line(interactive)
        if line is None or line.strip() in ("/exit", "/quit"):
            return 0
        line = line.strip()
        if not line:
            continue
        if line == "/reset":
            messages = []
            note(console, "(conversation cleared)")
            continue
        if line.startswith("/"):
            note(console, f"unknown command {line.split()[0]}; /reset or /exit", "yellow")
            continue
        messages.append({"role": "user", "content": line})
        try:
            ids = _fit(tokenizer, messages, strategy.schedule.gen_length, params.config.max_seq_len, console)
            timed = run_decode(params, tokenizer, ids, strategy, seed=args.seed, bucket=True,
                               console=None if args.quiet else console)
        except (UsageError, InputError) as e:
            note(console, f"error: {e}", "red")
            messages.pop()
            continue
        reply = tokenizer.decode(timed.answer_ids)
        messages.append({"role": "assistant", "content": reply})
        print(reply, flush=True)
        if not args.quiet:
            note(console, timed.summary())


def _read_line(interactive: bool) -> str | None:
    """The next line from stdin (with a prompt on a terminal); None at end of input."""
    if interactive:
        try:
            return input("you> ")
        except EOFError:
            return None
    line = sys.stdin.readline()
    return line if line else None


def _fit(tokenizer, messages: list[dict[str, str]], gen_length: int, max_seq_len: int, console) -> list[int]:
    """Prompt ids for the conversation, dropping the oldest exchanges until prompt + answer fit the model."""
    while True:
        ids = encode(tokenizer, messages, chat=True)
        if len(ids) + gen_length <= max_seq_len or len(messages) <= 1:
            check_fits(len(ids), gen_length, max_seq_len)
            return ids
        del messages[:2]  # the oldest user turn and its answer
        note(console, "(dropped the oldest turn to fit the model's context)")
