"""``metaaligner serve``: an OpenAI-compatible aligning proxy (docs/serving.md).

``config.py`` the settings (one dataclass, every flag), ``cli.py`` the command, ``app.py`` the routes,
``batching.py`` the request batcher, ``engine.py`` the in-process and remote aligners, ``upstream.py``
the clients of the policy and a remote aligner, ``conversation.py`` messages -> the aligner's query,
``metrics.py`` the Prometheus metrics. ``create_app(ServeConfig(...))`` builds the ASGI app.
"""
