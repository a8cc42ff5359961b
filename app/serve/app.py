"""The HTTP layer: Starlette routes over the engine, in OpenAI's wire format.

    GET  /health                 {"status": "ok"} (no key needed: for load balancers and scripts waiting on start)
    GET  /v1/models              the one model served (and /v1/models/{id}: it alone)
    POST /v1/chat/completions    messages (and tools) through the chat template; streaming or not
    POST /v1/completions         a prompt as text or token ids; streaming or not
    GET  /metrics                Prometheus text from engine.stats()

Every refusal is OpenAI's error body with its status (errors.py); a client that disconnects cancels its stream,
which frees its sequence at the engine's next step. Nothing here touches MLX: the engine's thread does.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Sequence
from typing import Optional

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from mlxmodels.serve import QueueFull, SamplingParams

from . import schemas
from .chat import chat_prompt
from .errors import RequestError
from .generation import Generation, Piece
from .metrics import prometheus
from .reply import Delta, ReplyParser
from .wire import DONE, Wire, sse, usage


def error_response(e: RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


class Served:
    """What the routes share: the engine, the tokenizer, the model's name and the sampling defaults."""

    def __init__(self, engine, tokenizer, model_id: str, defaults: Optional[dict] = None):
        self.engine, self.tokenizer, self.model_id = engine, tokenizer, model_id
        self.defaults = defaults or {}
        self.created = int(time.time())

    def _model(self) -> dict:
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "mlxm"}

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model()]})

    async def model(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name != self.model_id:
            return error_response(self._unknown(name, None))
        return JSONResponse(self._model())

    def _unknown(self, name: str, param) -> RequestError:
        return RequestError(f"model {name!r} is not served here; this server runs {self.model_id!r}", status=404,
                            param=param, code="model_not_found")

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(self, request: Request) -> Response:
        return PlainTextResponse(prometheus(self.engine.stats()), media_type="text/plain; version=0.0.4")

    async def chat(self, request: Request) -> Response:
        return await self._complete(request, schemas.parse_chat)

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, schemas.parse_completion)

    async def _complete(self, request: Request, parse) -> Response:
        try:
            ask = parse(await _json(request), self.defaults)
            if ask.model is not None and ask.model != self.model_id:
                raise self._unknown(ask.model, "model")
            ids, text = self._prompt(ask)
            stream = self._submit(ask, ids)
        except RequestError as e:
            return error_response(e)
        parser = ReplyParser(self.tokenizer, text, ask.stop, chat=ask.chat, tools=bool(ask.tools))
        gen = Generation(stream, parser, ask.sampling["logprobs"])
        wire = Wire(ask.chat, self.model_id, self.tokenizer)
        if ask.stream:
            async def cancel():  # also when the client left before the reply's first chunk was asked for
                stream.cancel()

            return StreamingResponse(_events(gen, wire, ask.include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                     background=BackgroundTask(cancel))
        return await _whole(request, gen, wire)

    def _prompt(self, ask):
        if ask.chat:
            return chat_prompt(self.tokenizer, ask.messages, ask.tools, ask.template_kwargs)
        if isinstance(ask.prompt, str):
            return self.tokenizer.encode(ask.prompt), ask.prompt
        if max(ask.prompt) > self.tokenizer.max_token_id:
            raise RequestError(f"prompt holds token id {max(ask.prompt)}, past the vocabulary's last id "
                               f"{self.tokenizer.max_token_id}", param="prompt")
        return list(ask.prompt), self.tokenizer.decode(ask.prompt)

    def _submit(self, ask, ids):
        where = "messages" if ask.chat else "prompt"
        try:
            params = SamplingParams(ask.max_tokens or self.engine.context, **ask.sampling,
                                    stop_tokens=frozenset(self.tokenizer.eos_token_ids))
        except ValueError as e:  # what schemas let through and the samplers refuse (a model default among them)
            raise RequestError(str(e)) from None
        try:
            return self.engine.submit(ids, params)
        except QueueFull as e:
            raise RequestError(f"the server is busy: {e}", status=429) from None
        except ValueError as e:  # too long for the context, or token ids the model does not have
            code = "context_length_exceeded" if len(ids) >= self.engine.context else None
            raise RequestError(str(e), param=where, code=code) from None
        except RuntimeError:
            raise RequestError("the server is shutting down", status=503) from None


MAX_BODY = 16 * 2**20  # bytes: far above any chat a context holds, small enough that a hostile body cannot fill memory


async def _json(request: Request):
    body = bytearray()
    async for chunk in request.stream():  # read in pieces, so an oversized body is refused before it is all held
        body += chunk
        if len(body) > MAX_BODY:
            raise RequestError(f"the request body is over {MAX_BODY // 2**20} MB; send a shorter one", status=413)
    try:
        return json.loads(body)
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
        raise RequestError(f"the request body is not valid JSON ({e})") from None
    except RecursionError:
        raise RequestError("the request body is nested too deeply") from None


async def _events(gen: Generation, wire: Wire, include_usage: bool):
    first = wire.first_chunk()
    if first:
        yield first
    pending = []
    async for piece in gen:
        chunk = wire.piece_chunk(piece, pending)
        if chunk:
            yield chunk
    if gen.error is not None:
        yield sse(gen.error.body())
    else:
        yield wire.piece_chunk(Piece(Delta()), pending, gen.finish_reason)
        if include_usage:
            yield wire.usage_chunk(usage(gen.stream.prompt_tokens, gen.completion_tokens, gen.stream.cached_tokens))
    yield DONE


async def _whole(request: Request, gen: Generation, wire: Wire) -> Response:
    """A reply sent at once; a client that leaves before it is ready cancels it."""
    logprobs = []

    async def collect():
        async for piece in gen:
            if piece.logprob is not None:
                logprobs.append(piece.logprob)

    work, gone = asyncio.ensure_future(collect()), asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait([work, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not work.done():  # the client left: nobody reads the answer
        work.cancel()
        return Response(status_code=499)
    work.result()
    if gen.error is not None:
        return error_response(gen.error)
    stream = gen.stream
    return JSONResponse(wire.completion(gen.parser, logprobs, gen.finish_reason,
                                        usage(stream.prompt_tokens, gen.completion_tokens, stream.cached_tokens)))


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class BearerAuth:
    """With an API key, every route but /health needs `Authorization: Bearer KEY` (else 401, OpenAI's body)."""

    def __init__(self, app, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] != "/health":
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                e = RequestError("a valid API key is needed: send the header 'Authorization: Bearer KEY'",
                                 status=401, code="invalid_api_key")
                return await error_response(e)(scope, receive, send)
        await self.app(scope, receive, send)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Unknown routes (404) and wrong methods (405) in OpenAI's shape too."""
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return error_response(RequestError(message, status=exc.status_code))


def build_app(engine, tokenizer, model_id: str, *, api_key: Optional[str] = None,
              defaults: Optional[dict] = None, cors_origins: Sequence[str] = ()) -> Starlette:
    """The ASGI app; the engine is started and closed by its owner (server.py). `cors_origins` (none by default):
    the web origins whose browser pages may call the API ("*": any)."""
    served = Served(engine, tokenizer, model_id, defaults)
    routes = [Route("/health", served.health), Route("/v1/models", served.models),
              Route("/v1/models/{name:path}", served.model),
              Route("/metrics", served.metrics),
              Route("/v1/chat/completions", served.chat, methods=["POST"]),
              Route("/v1/completions", served.completions, methods=["POST"])]
    middleware = [Middleware(BearerAuth, api_key=api_key)] if api_key else []
    if cors_origins:
        # outermost, so a browser's preflight (OPTIONS, which never carries the key) is answered before the key check
        middleware.insert(0, Middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                                        allow_headers=["Authorization", "Content-Type"]))
    return Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: _http_error})
