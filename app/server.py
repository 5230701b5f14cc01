"""`create_app(settings)`: the service, the REST routes, the page, and the engine loading in the background."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading

from fastapi import FastAPI

from app import api
from app.engines import engines_to_load, load_engine
from app.service import Service
from app.settings import Settings
from app.tasks import load_templates

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """Build one app; the model loads in a thread so /healthz and the page answer meanwhile."""
    service = Service(settings, load_templates(settings.templates_file))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loaders = {name: functools.partial(load_engine, settings, name) for name in engines_to_load(settings)}
        loader = threading.Thread(target=service.load, args=(loaders,), name="dpp-engine-load", daemon=True)
        loader.start()
        yield

    app = FastAPI(title="dpp", default_response_class=api.UTF8JSONResponse, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.service = service
    api.install(app, settings.max_body_bytes)
    if settings.no_ui:
        api.install_index(app)
        return app
    return _with_page(app, service)


def _with_page(app: FastAPI, service: Service) -> FastAPI:
    """Mount the page and the Gradio API at "/"."""
    # Imported here: gradio costs seconds and memory at start, which a REST-only server (--no-ui) never pays.
    import gradio as gr

    from app import ui

    return gr.mount_gradio_app(app, ui.build(service), path="/", footer_links=["api"], css=ui.CSS)
