"""`jdlm eval`: accuracy against NFE of strategies on the task suite."""

from __future__ import annotations

from jdlm.cli.args import (
    CACHES,
    STRATEGY_HELP,
    cache_choice,
    command,
    did_you_mean,
    force_arg,
    guide_arg,
    mesh_args,
    model_args,
    non_negative_float,
    positive_int,
)
from jdlm.cli.common import device_mesh, load_guide, load_model, note, stderr_console
from jdlm.cli.models import check_model, is_causal
from jdlm.cli.outputs import check_output
from jdlm.errors import UsageError
from jdlm.files import write_atomically

UNSAFE_HELP = (
    "run the code task, which executes model-written Python (or set JDLM_RUN_UNSAFE_CODE=1; without either, "
    "`jdlm eval` skips it). Each program runs in a scratch folder, in its own process group that is killed "
    "afterwards, with memory, CPU-time, file-size and process rlimits. Contained only where this machine allows, "
    "and said when it starts: no network and no process outliving the run need bubblewrap or `unshare -rn`; "
    "a read-only filesystem needs bubblewrap (apt-get install bubblewrap). NOT contained: reading any file you "
    "can read; without bubblewrap, writes outside the scratch folder; as root, the number of processes")


def add_parser(sub) -> None:
    p = command(sub, "eval", "accuracy versus NFE of strategies on the task suite",
                 "Evaluate decoding strategies on jdlm's generated tasks (sudoku, sudoku9, countdown, arithmetic,\n"
                 "multistep, code, pycode, latin) or on your own examples (--data), and report accuracy, forward\n"
                 "passes (NFE) and tokens/s per task and strategy. Each task decodes with its own measured generation\n"
                 "and block length unless --gen-length / --block-length override them. Decoding stops each row at\n"
                 "its end token.",
                 """
                 jdlm eval --task sudoku --task countdown --limit 8 --batch-size 8
                 jdlm eval --task sudoku --limit 16 --strategy low_confidence --strategy threshold:0.9 --cache dual \\
                           --tokens-per-step 2 --json results.json --plot pareto.png
                 printf '{"input": "50,14,54,10", "output": "54-50=4,14-4=10"}\\n' > mine.jsonl && \\
                   jdlm eval --task countdown --data mine.jsonl --batch-size 1
                 printf '{"nums": [50, 14, 54], "target": 10}\\n' > cd.jsonl && jdlm eval --data cd.jsonl --json out.json
                 """)
    model_args(p)
    mesh_args(p)
    p.add_argument("--task", action="append", metavar="NAME",
                   help="task to evaluate (sudoku, sudoku9, countdown, arithmetic, multistep, code, pycode, latin); "
                        "repeat for several (default: all, code only with --confirm-run-unsafe-code; with --data, the "
                        "task its format implies, or exactly one)")
    p.add_argument("--data", metavar="FILE",
                   help="evaluate the examples of this file instead of the task's own eval split: jsonl "
                        "{\"input\", \"output\"} (with --task); countdown jsonl {\"nums\", \"target\"}; sudoku CSV "
                        "(quizzes,solutions or puzzle,solution) or jsonl {\"puzzle\", \"solution\"}, 81 cells (task "
                        "sudoku9) or 16 (sudoku); GSM8K jsonl {\"question\", \"answer\"} (arithmetic, scored by the "
                        "final '#### N'). Countdown, sudoku and GSM8K files imply their task. See docs/eval/data.md")
    p.add_argument("--strategy", "-s", action="append", metavar="SPEC",
                   help=STRATEGY_HELP + "\nrepeat to compare several")
    p.add_argument("--cache", "-c", type=cache_choice, default="none", metavar="CACHE",
                   help="KV cache for every strategy (default none): " + ", ".join(CACHES)
                        + "; freecache takes options, e.g. freecache:window")
    guide_arg(p)
    p.add_argument("--tokens-per-step", "-k", type=positive_int, default=1, metavar="K",
                   help="tokens revealed per step by counted rules (low_confidence, random, maskgit_plus, margin, "
                        "entropy); must divide the block length; threshold and factor decide their own (default 1)")
    p.add_argument("--temperature", "-t", type=non_negative_float, default=0.0, metavar="T",
                   help="0 (default) is greedy")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampled strategies (default 0)")
    p.add_argument("--gen-length", "-n", type=positive_int, default=None, metavar="N",
                   help="override every task's generation length (default: each task's measured length)")
    p.add_argument("--block-length", "-b", type=positive_int, default=None, metavar="N",
                   help="override every task's block length")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="examples per task (default 500, or all of --data)")
    p.add_argument("--batch-size", type=positive_int, default=16, metavar="B", help="prompts per decode (default 16)")
    p.add_argument("--json", dest="json_out", metavar="OUT.json", help="also write the reports (with every example) "
                   "as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="also plot accuracy against NFE (needs jdlm[plot])")
    force_arg(p, "the --json and --plot files")
    p.add_argument("--confirm-run-unsafe-code", action="store_true", help=UNSAFE_HELP)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run(args) -> int:
    """`jdlm eval`: jdlm.eval.evaluate for every (task, strategy); a table on stdout, optional JSON and plot."""
    from jdlm.tasks import TASKS

    if is_causal(check_model(args.model)):  # before JAX is imported: a typo fails at once
        raise UsageError(f"jdlm eval runs masked-diffusion strategies and {args.model} is a causal model; "
                         "evaluate it greedily with scripts/eval_tiny_ar.py (in the jdlm repository)")

    data = _read_data(args) if args.data is not None else None
    tasks = args.task or ([data.task] if data is not None else list(TASKS))
    unknown = [t for t in tasks if t not in TASKS]
    if unknown and not args.task:  # the task the file's format implies
        raise UsageError(f"unknown task {unknown[0]!r} (the task of --data {args.data}, {data.format} examples); "
                         f"this jdlm has {', '.join(TASKS)}")
    if unknown:
        raise UsageError(f"unknown task {unknown[0]!r}{did_you_mean(unknown[0], TASKS)}; choose from "
                         f"{', '.join(TASKS)}")
    from jdlm import sandbox

    console = stderr_console()
    run_code = sandbox.code_execution_allowed(True if args.confirm_run_unsafe_code else None)
    code_tasks = [t for t in tasks if getattr(TASKS[t], "runs_generated_code", False)]
    if code_tasks and not run_code:
        if args.task:
            raise UsageError(f"--task {code_tasks[0]} runs model-written code; add --confirm-run-unsafe-code (or set "
                             f"{sandbox.ALLOW_ENV}=1) to run it in jdlm's sandbox")
        tasks = [t for t in tasks if t not in code_tasks]
        note(console, f"skipped {', '.join(code_tasks)}: it runs model-written code; add --confirm-run-unsafe-code "
                      "to run it in jdlm's sandbox")
    elif code_tasks:
        note(console, sandbox.containment().describe())
    check_output(args.json_out, "--json", (".json",), force=args.force)
    check_output(args.plot, "--plot", (".png", ".pdf", ".svg"), force=args.force)
    if args.plot:
        from jdlm.cli.viz import require_matplotlib

        require_matplotlib("--plot", "leave --plot out; --json keeps every number")
    import jdlm.eval as jeval

    specs = []
    for text in args.strategy or ["low_confidence"]:
        try:
            rule = _parse_rule(text)
            k = args.tokens_per_step if rule.counted else 1  # threshold / factor choose their own count
            specs.append(jeval.EvalSpec(rule=rule, cache=args.cache, tokens_per_step=k,
                                        temperature=args.temperature))
        except ValueError as e:
            raise UsageError(f"--strategy {text}: {e}") from None

    params, tokenizer, loaded = load_model(args, device_mesh(args))
    guide = load_guide(args, params)
    # Every (task, strategy) pair is checked before anything is decoded, so a bad combination fails at once.
    settings = {}
    for task in tasks:
        try:
            settings[task] = jeval.task_settings(TASKS[task], tokenizer, gen_length=args.gen_length,
                                                 block_length=args.block_length)
            for spec in specs:
                spec.strategy(settings[task])
        except ValueError as e:
            raise UsageError(f"{task}: {e}") from None
    if not args.quiet:
        note(console, loaded)
    import jax

    reports = []
    try:
        for task in tasks:
            for spec in specs:
                reports.append(jeval.evaluate(params, tokenizer, task, spec, data=data, limit=args.limit,
                                              batch_size=args.batch_size, progress=not args.quiet,
                                              key=jax.random.key(args.seed), settings=settings[task],
                                              allow_code_execution=run_code, guide=guide))
    except KeyboardInterrupt:  # keep what is finished: the table so far, then exit as interrupted
        if reports:
            print(jeval.format_table(reports), flush=True)
            note(console, f"interrupted after {len(reports)} of {len(tasks) * len(specs)} evaluations")
        raise
    print(jeval.format_table(reports))
    if args.json_out:
        note(console, f"wrote {write_atomically(args.json_out, lambda tmp: jeval.write_json(reports, tmp))}")
    if args.plot:
        note(console, f"wrote {write_atomically(args.plot, lambda tmp: jeval.plot_pareto(reports, tmp))}")
    return 0


def _read_data(args):
    """The --data file (`jdlm.eval.formats.read_data`), checked against --task: a format that implies its task
    (countdown, sudoku, GSM8K) needs none, plain jsonl exactly one."""
    from jdlm.eval.formats import read_data

    data = read_data(args.data)
    if args.task and len(args.task) != 1:
        raise UsageError("--data takes one --task (the one that prompts and scores its examples)")
    if args.task:
        data.check_task(args.task[0])
    elif data.task is None:
        raise UsageError(f"--data {args.data} holds {{\"input\", \"output\"}} examples of no particular task; name "
                         "the task that prompts and scores them with --task")
    return data


def _parse_rule(text: str):
    from jdlm.decoding import parse_rule

    return parse_rule(text)
