"""Test helpers shipped with the package (no test framework needed to import them)."""
from metaaligner.testing.openai_server import (Fault, ScriptedOpenAIServer, count_tokens, fail_first_per_prompt,
                                               fail_first_requests, last_user_text, user_text)

__all__ = ["Fault", "ScriptedOpenAIServer", "count_tokens", "fail_first_per_prompt", "fail_first_requests",
           "last_user_text", "user_text"]
