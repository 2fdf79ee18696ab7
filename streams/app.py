"""The module-level Faust app (settings from ``DUPN_*`` env vars).

Run with ``faust -A streams.app worker`` or ``dupn worker``.
"""

from streams.worker import create_app

worker = create_app()
app = worker.app
