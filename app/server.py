"""`create_app(settings)`: the service, the REST routes, the page, and the engine loading in the background;
`DrainingServer`: uvicorn that finishes accepted work on SIGTERM before it exits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading

import uvicorn
from fastapi import FastAPI

from app import api
from app.api_errors import UTF8JSONResponse
from app.auth import load_keys
from app.engines import engine_loaders
from app.jobs.manager import Jobs
from app.metrics import Metrics
from app.openapi import install_openapi
from app.service import Service
from app.settings import Settings
from app.tasks import load_templates

log = logging.getLogger(__name__)

# After the drain, what is left open is idle keep-alive connections and the page's event streams.
CLOSE_CONNECTIONS_S = 2
# Where Gradio, mounted at "/", takes uploads (the page's files, gradio_client's handle_file): a job's file goes
# there first, so that path takes a body as large as POST /jobs does.
PAGE_UPLOAD_PATH = "/gradio_api/upload"


def create_app(settings: Settings) -> FastAPI:
    """Build one app; the model loads in a thread so /healthz and the page answer meanwhile. Raises KeysError
    when the API keys cannot be read."""
    metrics = Metrics()
    service = Service(settings, load_templates(settings.templates_file), metrics)
    jobs = Jobs(service, settings)
    metrics.watch(service, jobs)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = threading.Thread(target=service.load, args=(engine_loaders(settings),), name="dpp-engine-load",
                                  daemon=True)
        loader.start()
        # File jobs run on this loop, in chunks through the service; unfinished ones resume once the model is ready.
        jobs.attach(asyncio.get_running_loop())
        runner = asyncio.create_task(jobs.runner.run_forever(settings.job_retention_days * 86400))
        yield
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner

    app = FastAPI(title="dpp", default_response_class=UTF8JSONResponse, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.jobs = jobs
    api.install(app, settings, metrics, page_uploads=() if settings.no_ui else (PAGE_UPLOAD_PATH,),
                keys=load_keys(settings.api_keys_file, settings.api_key))
    install_openapi(app, settings, service)
    if settings.no_ui:
        api.install_index(app)
        return app
    return _with_page(app, service, jobs)


def _with_page(app: FastAPI, service: Service, jobs: Jobs) -> FastAPI:
    """Mount the page and the Gradio API at "/"."""
    # Imported here: gradio costs seconds and memory at start, which a REST-only server (--no-ui) never pays.
    import gradio as gr

    from app import ui

    page = ui.build(service, jobs)
    # show_error off: an unexpected failure outside our handlers shows Gradio's generic message, not its text.
    # max_file_size: the page's and gradio_client's uploads (a job's file) take what POST /jobs takes.
    mounted = gr.mount_gradio_app(app, page, path="/", footer_links=["api"], css=ui.CSS, show_error=False,
                                  max_file_size=service.settings.max_file_bytes)
    # Gradio checks that a file a client names was uploaded (not any file on the server) only once its Blocks
    # "has launched", which launch() sets and mount_gradio_app does not: without this, a client could name
    # /etc/passwd as a job's file, and Gradio would copy it into its upload cache for the handler.
    page.has_launched = True
    return mounted


class DrainingServer(uvicorn.Server):
    """On the first SIGTERM or SIGINT: readiness turns 503 and new work gets 503 at once, work in flight
    has `drain_seconds` to finish, then the server stops. A second signal stops it at once."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        # X-Forwarded-For and X-Forwarded-Proto are believed from the proxies named in --trusted-proxies only
        # (uvicorn's default would believe any process on this machine).
        super().__init__(uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                                        timeout_graceful_shutdown=CLOSE_CONNECTIONS_S,
                                        proxy_headers=bool(settings.proxies), forwarded_allow_ips=settings.proxies,
                                        root_path=settings.root_path))
        self._service: Service = app.state.service
        self._drain_seconds = settings.drain_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._drain: asyncio.Task | None = None  # held, so that the loop does not drop the running drain

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        if self._loop is None or self._draining or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        log.warning("%s: draining for up to %.0f s", signal.Signals(sig).name, self._drain_seconds)
        # A signal handler runs between two bytecodes of the loop's own thread: hand the work to the loop.
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._service.in_flight.start_drain()
        self._drain = asyncio.ensure_future(self._drain_then_stop())

    async def _drain_then_stop(self) -> None:
        in_flight = self._service.in_flight
        if await in_flight.finished(self._drain_seconds):
            log.info("drained: every accepted request was answered; stopping")
        else:
            log.warning("drain time over with %d requests unanswered; they are answered 503 draining", len(in_flight))
            in_flight.abandon()
            await in_flight.finished(CLOSE_CONNECTIONS_S)
        self.should_exit = True
