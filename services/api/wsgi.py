"""The WSGI entry point: ``gunicorn services.api.wsgi:app`` (``python -m services.api`` runs it for you)."""

from __future__ import annotations

from common import bootstrap
from services.api.rest import create_app

app = create_app(bootstrap.settings(), bootstrap.engine())
