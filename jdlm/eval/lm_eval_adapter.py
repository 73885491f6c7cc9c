"""A model for EleutherAI's lm-evaluation-harness, registered as "jdlm" (generation tasks only).

Importing this module imports lm_eval and registers the model; `import jdlm` never does. From Python:

    import jdlm.eval.lm_eval_adapter  # registers "jdlm"
    lm_eval.simple_evaluate(model="jdlm", model_args="path=tiny,strategy=threshold:0.9,cache=dual", tasks=[...])

From the shell, `python -m jdlm.eval.lm_eval_adapter run --model jdlm --model_args ... --tasks ...` is lm-eval's own
command line with the model registered first.

Only `generate_until` is implemented. A masked-diffusion model has no cheap exact log-likelihood: it defines only a
variational bound (an expectation over masking patterns, estimated by Monte Carlo with many forward passes), so
loglikelihood requests (multiple-choice tasks, perplexity) raise NotImplementedError instead of returning a
number that is not the log-likelihood lm-eval assumes.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

import lm_eval.models  # noqa: F401  (fills lm-eval's registry first; it fills it only while empty)
from jdlm.eval.runner import generate
from jdlm.eval.settings import TaskSettings
from jdlm.eval.spec import parse_spec

log = logging.getLogger(__name__)

NO_LOGLIKELIHOOD = (
    "jdlm decodes masked-diffusion models, which have no cheap exact log-likelihood (only a Monte Carlo estimate of "
    "a variational bound, many forward passes per request), so loglikelihood / loglikelihood_rolling / "
    "multiple_choice tasks are not supported; use generation tasks (output_type: generate_until)")


@register_model("jdlm")
class JdlmLM(LM):
    """lm-eval model over a jdlm checkpoint. Arguments come from `--model_args` (comma-separated key=value):

    path: checkpoint directory or packaged model name ("tiny"); strategy: a strategy as `jdlm eval --strategy` reads
    it ("low_confidence", "threshold:0.9", "threshold:0.9 dual", "entropy top_p=0.9"); cache: none/prefix/dual; tokens_per_step: for counted rules; gen_length, block_length:
    decode shapes (a request's max_gen_toks, when smaller, cuts the output there); batch_size: rows per decode
    call; temperature: 0 (greedy, the default) or more; dtype: e.g. float32 / bfloat16.
    `params` and `tokenizer` may be passed instead of `path` (from Python).
    """

    def __init__(self, path: str | None = None, *, strategy: str = "low_confidence", cache: str | None = "none",
                 tokens_per_step: int = 1, gen_length: int = 256, block_length: int = 32, batch_size: int | str = 8,
                 temperature: float = 0.0, dtype: str | None = None, params=None, tokenizer=None, **unused):
        super().__init__()
        if unused:
            log.info("jdlm model ignores arguments %s", sorted(unused))  # lm-eval passes device, max_batch_size
        if params is None:
            if path is None:
                raise ValueError("the jdlm model needs a checkpoint: --model_args path=DIR (or path=tiny)")
            import jdlm

            params, tokenizer = jdlm.load(str(path), dtype=dtype)
        elif tokenizer is None:
            raise ValueError("give tokenizer together with params")
        self.params, self.tokenizer = params, tokenizer
        rule, _, options = str(strategy).strip().partition(" ")  # the strategy's own cache wins over `cache`
        self.spec = parse_spec(f"{rule} {cache or 'none'} k={int(tokens_per_step)} T={float(temperature)} {options}")
        self.settings = TaskSettings(gen_length=int(gen_length), block_length=min(int(block_length), int(gen_length)))
        self.strategy = self.spec.strategy(self.settings)
        if batch_size in ("auto", None) or str(batch_size).startswith("auto"):
            batch_size = 8  # shapes are static: no search for the largest batch
        self.batch_size = int(batch_size)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "JdlmLM":
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "JdlmLM":
        """`--model_args` win over lm-eval's own settings (its --batch_size, 1 unless given, fills in otherwise)."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    # ------------------------------------------------------------------------------------------ generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Decodes every request's context with the model's strategy; cuts each output at its `until` strings.

        Each `Instance.args` is (context, gen_kwargs). Contexts longer than the model allows are cut from the left.
        """
        G = self.settings.gen_length
        room = self.params.config.max_seq_len - G
        prompts, cuts = [], []
        for request in requests:
            context, gen_kwargs = request.args
            ids = self.tokenizer.encode(context)
            if not ids:  # decoding needs at least one prompt token
                ids = [self.tokenizer.eos_id]
            if len(ids) > room:
                log.warning("context of %d tokens cut to its last %d (max_seq_len %d - gen_length %d)", len(ids),
                            room, self.params.config.max_seq_len, G)
                ids = ids[-room:]
            prompts.append(ids)
            until = gen_kwargs.get("until") or []
            cuts.append(([until] if isinstance(until, str) else list(until), gen_kwargs.get("max_gen_toks")))
        if not prompts:
            return []
        order = np.argsort([len(p) for p in prompts], kind="stable")  # similar lengths share a prompt bucket
        gen = generate(self.params, [prompts[i] for i in order], self.strategy, batch_size=self.batch_size)
        tokens = gen.tokens[np.argsort(order)]
        outputs = []
        for row, (until, max_tokens), request in zip(tokens, cuts, requests):
            text = self.tokenizer.decode(row[:max_tokens] if max_tokens and max_tokens < G else row)
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", request.args, text)
        return outputs

    # ------------------------------------------------------------------------------------------ not available

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(NO_LOGLIKELIHOOD)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(NO_LOGLIKELIHOOD)

    # ------------------------------------------------------------------------------------------ chat

    @property
    def tokenizer_name(self) -> str:
        digest = hashlib.sha256((self.tokenizer.chat_template or "").encode()).hexdigest()
        return f"jdlm-{digest[:16]}"

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template or ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)


def main() -> None:
    """lm-eval's command line, with the "jdlm" model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
