r"""Serve MetaAligner as an OpenAI-compatible aligning proxy.

    # the built-in aligner in-process, in front of a policy on an OpenAI-compatible server
    metaaligner serve --port 8080 --policy_base_url http://127.0.0.1:8000/v1 --policy_model my-model
    # the aligner behind its own server (vllm serve MetaAligner/MetaAligner-HH-RLHF-7B)
    metaaligner serve --policy_base_url http://127.0.0.1:8000/v1 \
        --aligner_base_url http://127.0.0.1:8001/v1 --aligner_model MetaAligner/MetaAligner-HH-RLHF-7B
    # the aligner alone (POST /v1/align), the embedded SmolLM2, and the playground page at /
    metaaligner serve --aligner_path embedded --objectives harmlessness,helpfulness

Keys only from the environment: POLICY_API_KEY / ALIGNER_API_KEY (else OPENAI_API_KEY) for the
upstreams; METAALIGNER_API_KEY makes every /v1/* and /metrics request need
'Authorization: Bearer <key>' and is required to bind anything but loopback. See docs/serving.md.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import sys

from metaaligner import cli
from metaaligner.serve.config import CLIENT_KEY_ENV, LOOPBACK_HOSTS, ServeConfig

log = logging.getLogger("metaaligner.serve")


def make_parser():
    parser = cli.make_parser(ServeConfig, description=__doc__)
    parser.prog = "metaaligner serve"
    return parser


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str) -> None:
    """Anything but loopback needs METAALIGNER_API_KEY: an open aligner on a network is refused."""
    from metaaligner.errors import MetaAlignerError

    if not is_loopback(host) and not os.environ.get(CLIENT_KEY_ENV):
        raise MetaAlignerError(f"--host {host} is not loopback: set {CLIENT_KEY_ENV} in the environment so clients "
                               "must authenticate, or bind 127.0.0.1")


def main(config: ServeConfig) -> None:
    import uvicorn

    from metaaligner.io import redact_url
    from metaaligner.serve.app import create_app

    check_host(config.host)
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    app = create_app(config)
    service = app.service
    engine = service.engine
    log.info("aligner %s, template %s, query format %s, default objectives %s, guard %s; policy %s",
             engine.label, engine.template, service.query_format, ",".join(service.default_keys),
             "on" if engine.guard else "off", redact_url(config.policy_base_url) or "none (only /v1/align aligns)")
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                           log_config=None, access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=5))

    original_startup = server.startup

    async def startup(sockets=None):
        await original_startup(sockets=sockets)
        if server.started:
            port = server.servers[0].sockets[0].getsockname()[1] if server.servers else config.port
            shown = f"[{config.host}]" if ":" in config.host else config.host
            print(f"serving http://{shown}:{port} (playground at /, API at /v1)", flush=True)

    server.startup = startup
    server.run()
    if not server.started:
        from metaaligner.errors import MetaAlignerError

        raise MetaAlignerError(f"could not serve on {config.host}:{config.port} (is the port in use?)")


def run(argv: list[str] | None = None) -> int:
    parser = make_parser()
    (config,) = cli.parse(parser, list(sys.argv[1:] if argv is None else argv))
    return cli.run_main(main, config)
