"""The WSGI entry point: ``gunicorn services.api.wsgi:app`` (``python -m services.api`` runs it for you)."""

from __future__ import annotations

from common.runtime.process import configure_process, settings_or_exit
from services.api.app import create_app
from services.api.database import front_end_engine, query_engine

settings = settings_or_exit()
configure_process("oms.api.rest", settings)
engine = front_end_engine(settings)
app = create_app(settings, engine, read_engine=query_engine(settings, engine))
