"""An OpenAI ``messages`` list -> the aligner's query, in the format its template was trained on.

- ``transcript`` (the ``hh-rlhf`` template): the HH-RLHF transcript, as the released HH-RLHF queries
  are written: every user and assistant turn as ``"\\n\\nHuman: ..."`` / ``"\\n\\nAssistant: ..."``, ending
  with ``"\\n\\nAssistant:"`` (the answer being aligned is the next assistant turn).
- ``last_user`` (``ultrafeedback``, ``imhi`` and every other template): the last user message alone,
  as the UltraFeedback instruction and the IMHI query (post + question in one text) were single-turn.

System messages are left out of both (no training query had one), as are tool messages.
A message's content may be a string or OpenAI's list of parts; text parts are joined with newlines.
"""
from __future__ import annotations

from typing import Any

from metaaligner.errors import MetaAlignerError

QUERY_FORMATS = ("transcript", "last_user")
ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def query_format_for(template_name: str, choice: str = "auto") -> str:
    """``choice`` unless it is ``auto``: then ``transcript`` for the hh-rlhf template, else ``last_user``."""
    if choice != "auto":
        if choice not in QUERY_FORMATS:
            raise MetaAlignerError(f"unknown query format {choice!r}; choose one of "
                                   f"{', '.join(QUERY_FORMATS)} or auto")
        return choice
    return "transcript" if template_name == "hh-rlhf" else "last_user"


def message_text(message: dict, index: int) -> str:
    """The text of one message (a string, or the text parts of a list of content parts)."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise MetaAlignerError(f"messages[{index}].content: only text parts can be aligned, got {kind!r}")
        return "\n".join(texts)
    raise MetaAlignerError(f"messages[{index}].content must be a string or a list of text parts")


def check_messages(messages: Any) -> list[dict]:
    """``messages`` as a non-empty list of ``{"role", "content"}`` objects with at least one user message,
    else a one-line error naming the first bad entry."""
    if not isinstance(messages, list) or not messages:
        raise MetaAlignerError("'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise MetaAlignerError(f"messages[{i}] must be an object with 'role' and 'content'")
        if message.get("role") not in ROLES:
            raise MetaAlignerError(f"messages[{i}].role must be one of {', '.join(ROLES)}, "
                                   f"got {message.get('role')!r}")
        message_text(message, i)
    if not any(m["role"] == "user" for m in messages):
        raise MetaAlignerError("'messages' has no user message to answer")
    return messages


def to_query(messages: list[dict], query_format: str) -> str:
    """The aligner's query for a conversation (see the module docstring)."""
    messages = check_messages(messages)
    if query_format == "last_user":
        i = max(j for j, m in enumerate(messages) if m["role"] == "user")
        return message_text(messages[i], i)
    if query_format != "transcript":
        raise MetaAlignerError(f"unknown query format {query_format!r}")
    speakers = {"user": "Human", "assistant": "Assistant"}
    turns = [f"\n\n{speakers[m['role']]}: {message_text(m, i)}" for i, m in enumerate(messages)
             if m["role"] in speakers]
    return "".join(turns) + "\n\nAssistant:"
