"""`sonotune serve MODEL_URI [--host 127.0.0.1] [--port 5001]`: a deployed model behind MLflow's scoring server,
hardened for callers who are not trusted.

MLflow's own app (`mlflow.pyfunc.scoring_server.init`: `POST /invocations`, `GET /ping`, `/health`, `/version`)
answers every request; `GuardedApp` wraps it as ASGI middleware and adds what `mlflow models serve` lacks:
- a request body over `serving.MAX_REQUEST_BYTES` is refused with 413 before it is read (Content-Length), or as
  soon as a streamed body passes the bound (the server never holds more than the bound in memory);
- an error answers `{"error_code": …, "message": "<one line>"}` only: MLflow's `stack_trace` (and any
  traceback) goes to the server's log, never to the caller.
The model itself (`serving.to_rgb_image`) reads only image bytes it is sent (never a path) and refuses an image
over `MAX_IMAGE_BYTES` or `data.images.MAX_PIXELS` before decoding its pixels.
"""

from __future__ import annotations

import json
import logging

from sonotune.serving import MAX_REQUEST_BYTES

LOG = logging.getLogger("sonotune.serve")
MESSAGE_CHARS = 300


class _TooLarge(Exception):
    pass


def short_error(status: int, body: bytes) -> dict:
    """The caller's view of an error response: its error code and the one line that says what was wrong."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = {}
    parsed = parsed if isinstance(parsed, dict) else {}
    message = str(parsed.get("message") or body.decode(errors="replace") or f"HTTP {status}")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    # MLflow prefixes a model's own error with "Failed to predict data '<the whole input>'. \nError: "
    errors = [line.removeprefix("Error: ") for line in lines if line.startswith("Error: ")]
    line = (errors or lines or [f"HTTP {status}"])[0]
    return {"error_code": str(parsed.get("error_code", "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR")),
            "message": line[:MESSAGE_CHARS]}


async def _reply(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class GuardedApp:
    """ASGI middleware: bound the request body, shorten every error answer (the full one goes to the log)."""

    def __init__(self, app, max_body: int = MAX_REQUEST_BYTES):
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length", b"0")
        too_large = _too_large_payload(self.max_body)
        if not declared.isdigit() or int(declared) > self.max_body:
            LOG.warning("refused a request body of %s bytes (limit %d)", declared.decode(errors="replace"),
                        self.max_body)
            return await _reply(send, 413, too_large)
        state = {"received": 0, "status": 200, "body": b"", "answered": False, "over": False}

        async def bounded_receive():
            message = await receive()
            state["received"] += len(message.get("body", b""))
            if state["received"] > self.max_body:
                state["over"] = True
                LOG.warning("refused a streamed request body at %d bytes (limit %d)", state["received"],
                            self.max_body)
                raise _TooLarge
            return message

        async def guarded_send(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                if message["status"] < 400:
                    state["answered"] = True
                    return await send(message)
                return None
            if state["status"] < 400:
                return await send(message)
            state["body"] += message.get("body", b"")
            if not message.get("more_body"):
                LOG.error("HTTP %d: %s", state["status"], state["body"].decode(errors="replace"))
                state["answered"] = True
                if state["over"]:
                    return await _reply(send, 413, too_large)
                return await _reply(send, state["status"], short_error(state["status"], state["body"]))
            return None

        try:
            await self.app(scope, bounded_receive, guarded_send)
        except Exception:
            LOG.exception("request failed")
            if not state["answered"]:
                if state["over"]:
                    await _reply(send, 413, too_large)
                else:
                    await _reply(send, 500, {"error_code": "INTERNAL_ERROR",
                                             "message": "the model failed on this request (see the server log)"})


def _too_large_payload(limit: int) -> dict:
    return {"error_code": "REQUEST_TOO_LARGE",
            "message": f"the request body is over the {limit // 2**20} MiB limit (send fewer or smaller images)"}


def build_app(model_uri: str):
    """The guarded ASGI app serving the sonotune model at `model_uri` (DataError when it is not one)."""
    from mlflow.pyfunc import scoring_server

    from sonotune.stages.predict import load_pyfunc

    return GuardedApp(scoring_server.init(load_pyfunc(model_uri)))


def serve(model_uri: str, host: str, port: int) -> None:
    """Run the guarded app with uvicorn until interrupted (preflight of host and port first)."""
    import uvicorn

    from sonotune.team import require_free_port

    require_free_port(host, port)
    app = build_app(model_uri)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"serving {model_uri} on http://{host}:{port}/invocations (image bytes only, base64 in JSON; "
          f"requests up to {MAX_REQUEST_BYTES // 2**20} MiB)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
