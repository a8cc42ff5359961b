"""`mlxm serve`: load the model, start the engine, serve the app with uvicorn until SIGINT or SIGTERM.

The listening socket is bound here, before uvicorn starts, so a port in use is one clear line (exit 1) instead of
uvicorn's log and exit. On the first SIGINT/SIGTERM the server stops accepting connections and lets the replies in
flight finish for GRACE seconds, then cancels what is left (each stream ends with an error event); a second signal
cancels at once. The signal is not re-raised after the shutdown (uvicorn's default), so the process exits 0.
"""

from __future__ import annotations

import socket
import sys
import threading
from typing import Optional

GRACE = 5.0  # seconds replies in flight may take to finish after a shutdown signal


def bind(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except socket.gaierror as e:
        raise ValueError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port or --host") from None


def make_server(app, sock: socket.socket, on_shutdown, log_level: str = "info"):
    """A uvicorn server over `sock` that calls `on_shutdown` (from a thread of its own) once replies in flight had
    GRACE seconds to finish after a signal, or at once on a second signal."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if self.should_exit:
                self.force_exit = True
                threading.Thread(target=on_shutdown, daemon=True).start()
            else:
                self.should_exit = True
                timer = threading.Timer(GRACE, on_shutdown)
                timer.daemon = True
                timer.start()

    config = uvicorn.Config(app, log_level=log_level, lifespan="off", timeout_graceful_shutdown=int(GRACE) + 5)
    return Server(config)


def run(args) -> None:
    from mlxmodels.serve import Engine

    from app import model_arg

    from .app import build_app

    ranks = None
    if args.parallel:  # under mlx.launch: rank 0 serves, the others replay its engine (parallel.py)
        from app import parallel as group

        from . import parallel

        ranks = group.start(args)
        if ranks.rank != 0:
            return parallel.follow(ranks, args)
    sock = bind(args.host, args.port)  # first: a busy port should not cost a model load
    if sys.stderr.isatty():
        print(f"loading {model_arg.display_name(args.model)} ...", file=sys.stderr)
    model, tokenizer, folder = model_arg.load(args.model, args.dtype, args.adapter_path, parallel=args.parallel)
    context = model_arg.context_limit(folder, args.context) if args.context else None
    engine = Engine(model, max_batch=args.max_batch, max_queue=args.max_queue, context=context,
                    kv_bits=args.kv_bits, kv_group_size=args.kv_group_size,
                    prefix_cache=args.prefix_cache, lead=parallel.lead(ranks) if ranks else None)
    engine.start()
    try:
        app = build_app(engine, tokenizer, model_id(args.model), api_key=args.api_key,
                        cors_origins=args.cors_origin, defaults=model_arg.sampling_defaults(folder))
        server = make_server(app, sock, engine.close)
        print(f"mlxm serve: {model_id(args.model)} on http://{url_host(args.host)}:{sock.getsockname()[1]}/v1 "
              f"(context {engine.context} tokens, batch {args.max_batch})", file=sys.stderr)
        server.run(sockets=[sock])
    finally:
        engine.close()
        if ranks is not None:
            ranks.watchdog.close()


def model_id(arg: Optional[str]) -> str:
    """The name /v1/models lists and requests may give: -m as written, or "default"."""
    return arg or "default"


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
