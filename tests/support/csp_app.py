"""The service with a small page of its own (a script file and a WebSocket to the same host), served by Uvicorn
for the browser test of the Content-Security-Policy: ``uvicorn tests.support.csp_app:page_app --factory``."""

from __future__ import annotations

from fastapi import FastAPI, WebSocket
from starlette.responses import HTMLResponse, Response

from library_api.app import create_app
from library_api.config import load_settings

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>CSP check</title><script src="/csp-check/app.js"></script></head>
<body>
<div id="socket">pending</div>
<div id="inline">inline script did not run</div>
<div id="violations"></div>
<script>document.getElementById("inline").textContent = "inline script ran";</script>
</body></html>
"""

SCRIPT = """
document.addEventListener("securitypolicyviolation", (event) => {
  document.getElementById("violations").textContent += event.violatedDirective + " ";
});
window.addEventListener("DOMContentLoaded", () => {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/csp-check/ws`);
  socket.onopen = () => socket.send("ping");
  socket.onmessage = (message) => { document.getElementById("socket").textContent = message.data; };
  socket.onerror = () => { document.getElementById("socket").textContent = "error"; };
});
"""


def page_app() -> FastAPI:
    """The service as configured by the environment, plus the test page, its script and an echo WebSocket."""
    app = create_app(load_settings())

    @app.get("/csp-check", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/csp-check/app.js", include_in_schema=False)
    async def script() -> Response:
        return Response(SCRIPT, media_type="text/javascript")

    @app.websocket("/csp-check/ws")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("pong:" + await websocket.receive_text())
        await websocket.close()

    return app
