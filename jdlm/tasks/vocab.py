"""The special tokens and chat template of jdlm's own small models: shared by the tasks' prompts, training (which
builds the tokenizer, jdlm.training.vocab) and evaluation (which recognises it)."""

SPECIAL_TOKENS = ("<|pad|>", "<|eos|>", "<|mask|>", "<|user|>", "<|assistant|>")
PAD, EOS, MASK, USER, ASSISTANT = range(len(SPECIAL_TOKENS))
# A user turn is its text with surrounding whitespace trimmed, then one newline: task prompts end with "\n", and a
# prompt typed on the command line (usually without it) renders the same.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>{{ m['content'] | trim }}\n"
    "{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}<|eos|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
