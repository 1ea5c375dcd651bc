"""Prompt formatting: a question in the model's chat template (or a plain template), with the system prompt."""

from __future__ import annotations

from gftrepro.errors import GftError

QWEN_MATH_COT = "Please reason step by step, and put your final answer within \\boxed{}."
PLAIN_TEMPLATE = "{system}\n\nQuestion: {question}\nAnswer:"


def format_prompt(tokenizer, question: str, system_prompt: str, template: str) -> str:
    """``template``: ``auto`` (chat template if the tokenizer has one), ``chat`` or ``plain``."""
    use_chat = template == "chat" or (template == "auto" and getattr(tokenizer, "chat_template", None))
    if use_chat:
        if not getattr(tokenizer, "chat_template", None):
            raise GftError("prompt_template is 'chat' but the tokenizer has no chat template")
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": question})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return PLAIN_TEMPLATE.format(system=system_prompt, question=question).lstrip()
