"""Chat: ``messages`` lists rendered with the tokenizer's chat template; only assistant turns train.

The template is rendered for growing prefixes of the conversation. The text added by an assistant
message, after the template's generation prompt (``<|assistant|>`` or similar), is the trained segment;
everything else (system and user turns, role headers) is masked. This needs no ``{% generation %}``
markers in the template, so any HF chat template works, as long as rendering a conversation's prefix
gives a prefix of the whole rendering (true of the common templates; checked per record).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmft.data.formats import DataFormat, Example, RowContext, Segment, register
from llmft.errors import UserError

ROLES = ("system", "user", "assistant")


@register
class ChatFormat(DataFormat):
    name = "chat"
    description = "messages lists (role, content) in the tokenizer's chat template; assistant turns trained"
    columns = ("messages",)
    sample_file = "chat_sample.jsonl"
    example_prompt = "What is the capital of France?"
    adds_eos = False  # the template ends each turn itself (with EOS or its own end-of-turn token)

    def __init__(self, cfg, tokenizer=None) -> None:
        super().__init__(cfg, tokenizer)
        self.template = self._template()

    def _template(self) -> str | None:
        setting = self.cfg.chat_template
        if setting and setting.endswith(".jinja"):
            path = Path(setting).expanduser()
            if not path.is_file():
                raise UserError(
                    f"data.chat_template: file '{path}' not found; pass a .jinja file or the template text"
                )
            return path.read_text(encoding="utf-8")
        if setting:
            return setting
        if self.tokenizer is not None and not getattr(self.tokenizer, "chat_template", None):
            raise UserError(
                "data.chat_template: the model's tokenizer has no chat template; set data.chat_template to a "
                "Jinja template (text or a .jinja file), e.g. the template of the model family you train"
            )
        return None  # the tokenizer's own

    def _apply(self, messages: list[dict[str, str]], generation_prompt: bool, where: str) -> str:
        from jinja2 import TemplateError

        try:
            text = self.tokenizer.apply_chat_template(
                messages,
                chat_template=self.template,
                tokenize=False,
                add_generation_prompt=generation_prompt,
            )
        except TemplateError as exc:
            raise UserError(f"{where}: the chat template rejected this conversation: {exc}") from None
        # The pipeline adds BOS itself (when the tokenizer does); a template that writes it as text
        # would give two.
        bos = self.tokenizer.bos_token
        if bos and text.startswith(bos):
            text = text[len(bos) :]
        return text

    def _messages(self, record: Mapping[str, Any], where: RowContext) -> list[dict[str, str]]:
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages:
            raise UserError(
                f"{where}: field 'messages' must be a non-empty list of {{role, content}}, got "
                f"{type(messages).__name__} {messages!r:.60}"
            )
        clean = []
        for i, message in enumerate(messages):
            field = f"messages[{i}]"
            if not isinstance(message, Mapping):
                raise UserError(
                    f"{where}: field '{field}' must be a {{role, content}} object, got {message!r:.60}"
                )
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                raise UserError(f"{where}: field '{field}.role' is {role!r}; use one of {', '.join(ROLES)}")
            if not isinstance(content, str) or not content.strip():
                raise UserError(
                    f"{where}: field '{field}.content' must be non-empty text, got {content!r:.60}"
                )
            clean.append({"role": role, "content": content.strip()})
        if not any(m["role"] == "assistant" for m in clean):
            raise UserError(
                f"{where}: field 'messages' has no assistant message, so nothing would be trained"
            )
        return clean

    def render(self, record: Mapping[str, Any], where: RowContext) -> list[Example]:
        messages = self._messages(record, where)
        segments: list[Segment] = []
        done = ""  # the rendering covered by the segments so far
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self._apply(messages[:i], True, str(where)) if i else ""
            full = self._apply(messages[: i + 1], False, str(where))
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise UserError(
                    f"{where}: the chat template does not render this conversation's turns as prefixes of each "
                    f"other, so assistant turns cannot be masked; use a template without lookahead"
                )
            if prompt[len(done) :]:
                segments.append(Segment(prompt[len(done) :], False))
            segments.append(Segment(full[len(prompt) :], True))
            done = full
        whole = self._apply(messages, False, str(where))
        if whole[len(done) :].strip():  # turns after the last assistant message: context only
            segments.append(Segment(whole[len(done) :], False))
        return [segments]

    def generation_prompt(self, text: str) -> str:
        return self._apply([{"role": "user", "content": text}], True, "generation.prompt")
