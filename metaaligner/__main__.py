"""``python -m metaaligner ...`` is the ``metaaligner`` command (``metaaligner.console``)."""
from metaaligner.console import main

raise SystemExit(main())
