"""The one settings object of ``metaaligner serve``: every flag, its default and its ``--help`` text."""
from __future__ import annotations

from dataclasses import dataclass, field

from metaaligner import cli

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
CLIENT_KEY_ENV = "METAALIGNER_API_KEY"
POLICY_KEY_ENVS = ("POLICY_API_KEY", "OPENAI_API_KEY")
ALIGNER_KEY_ENVS = ("ALIGNER_API_KEY", "OPENAI_API_KEY")
DEFAULT_OBJECTIVES = "harmlessness,helpfulness"


@dataclass
class ServeConfig:
    port: int = field(default=8080, metadata={**cli.check(ge=0, le=65535), "help": "port to listen on (0: a free port, printed on the 'serving' line)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; anything but loopback (127.0.0.1, localhost, ::1) needs METAALIGNER_API_KEY in the environment"})
    policy_base_url: str = field(default=None, metadata={"help": "the policy's OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (key: POLICY_API_KEY, else OPENAI_API_KEY); without it only /v1/align aligns"})
    policy_model: str = field(default=None, metadata={"help": "model name sent to the policy (default: the 'model' of each request)"})
    aligner_path: str = field(default=None, metadata={"help": "in-process aligner: 'embedded' (SmolLM2-135M-Instruct) | a folder | a hub name (default: the shipped demo aligner if present, else embedded)"})
    aligner_base_url: str = field(default=None, metadata={"help": "an aligner behind an OpenAI-compatible server instead (e.g. vllm serve of MetaAligner-HH-RLHF-7B); key: ALIGNER_API_KEY, else OPENAI_API_KEY"})
    aligner_model: str = field(default=None, metadata={"help": "model name of the aligner at --aligner_base_url (also picks its template when it is a known checkpoint)"})
    aligner_api: str = field(default="completions", metadata={"help": "--aligner_base_url route: completions (the raw prompt, as the aligners were trained) | chat (the prompt as one user message)"})
    template: str = field(default=None, metadata={"help": "aligner prompt template: hh-rlhf | ultrafeedback | imhi | paper | a YAML file (default: the aligner's metaaligner.json, a known checkpoint's, then --dataset's)"})
    dataset: str = field(default=None, metadata={"help": "dataset config: hh-rlhf | ultrafeedback | imhi | path.yaml (template, objective group, default objectives)"})
    objectives: str = field(default=None, metadata={"help": "default objectives of a request that names none, comma-separated keys (default: --dataset's, else the aligner's metaaligner.json's, else harmlessness,helpfulness)"})
    objectives_file: str = field(default=None, metadata={"help": "YAML/JSON mapping key -> description of your own objectives"})
    add_objective: list[str] = field(default_factory=list, metadata={"help": "inline objective 'key=Description: ...' (repeatable)", "action": "append"})
    query_format: str = field(default="auto", metadata={"help": "how the conversation becomes the aligner's query: transcript (HH-RLHF '\\n\\nHuman: ... \\n\\nAssistant:') | last_user (the last user message: UltraFeedback instruction, IMHI query) | auto (transcript for the hh-rlhf template, else last_user)"})
    max_new_tokens: int = field(default=256, metadata={**cli.check(ge=1), "help": "new tokens per aligned answer"})
    max_batch_size: int = field(default=16, metadata={**cli.check(ge=1), "help": "requests aligned together in one engine call at most"})
    batch_wait_ms: float = field(default=20.0, metadata={**cli.check(ge=0.0), "help": "how long the first request of a batch waits for others to join it"})
    continuous: bool = field(default=True, metadata={"help": "continuous batching for the in-process aligner: requests that arrive while a batch decodes join it between decoding steps (up to --max_batch_size rows); false: they wait for the next batch"})
    max_queue: int = field(default=256, metadata={**cli.check(ge=1), "help": "requests admitted to the aligner at once (waiting or aligning); more are answered 429 with Retry-After"})
    max_body_bytes: int = field(default=1_000_000, metadata={**cli.check(ge=1), "help": "largest request body accepted; larger ones are answered 413"})
    guard: str = field(default="auto", metadata={"help": "degeneration guard (see inference/aligner_inference.py --guard): auto (on for the built-in aligners) | on | off"})
    device: str = field(default=None, metadata={"help": "in-process aligner device: cpu | cuda | cuda:1 (default: cuda if available)"})
    dtype: str = field(default=None, metadata={"help": "in-process aligner dtype: float32 | bfloat16 | float16 (default: float32 on CPU)"})
    threads: int = field(default=None, metadata={**cli.check(ge=1), "help": "torch threads of the in-process aligner on CPU (default: torch's, one per core); 1 keeps a shared machine's neighbours from slowing every step"})
    lora_path: str = field(default=None, metadata={"help": "PEFT/LoRA adapter folder applied to --aligner_path"})
    upstream_timeout: float = field(default=600.0, metadata={**cli.check(gt=0.0), "help": "seconds to wait for one policy or aligner upstream request"})
    upstream_retries: int = field(default=2, metadata={**cli.check(ge=0), "help": "retries of an upstream request that failed to connect, timed out, or got 429/5xx (with backoff)"})
    static_dir: str = field(default=None, metadata={"help": "folder of the playground page (default: the package's serve/static)"})

    def __post_init__(self):
        from metaaligner.errors import MetaAlignerError

        self.add_objective = [str(v) for item in self.add_objective or []
                              for v in (item if isinstance(item, (list, tuple)) else [item])]
        if self.aligner_api not in ("completions", "chat"):
            raise MetaAlignerError(f"--aligner_api must be completions or chat, got {self.aligner_api!r}")
        if self.query_format not in ("auto", "transcript", "last_user"):
            raise MetaAlignerError(f"--query_format must be auto, transcript or last_user, got {self.query_format!r}")
        if self.guard not in ("auto", "on", "off"):
            raise MetaAlignerError(f"--guard must be auto, on or off, got {self.guard!r}")
        if self.aligner_base_url and self.aligner_path:
            raise MetaAlignerError("give --aligner_path (in-process) or --aligner_base_url (remote), not both")
        if self.aligner_base_url and not self.aligner_model:
            raise MetaAlignerError("--aligner_base_url needs --aligner_model NAME (the model the server serves)")
        if self.aligner_model and not self.aligner_base_url:
            raise MetaAlignerError("--aligner_model names the model at --aligner_base_url; for an in-process aligner "
                                   "use --aligner_path")
