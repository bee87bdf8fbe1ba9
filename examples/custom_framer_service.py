"""A service over a custom framer: newline-delimited JSON requests, offloaded.

The framer is the ndjson one of ``examples/ndjson_framer.py``. The framing
runs in the agent process, so the listener names it by import path
(``examples.ndjson_framer:NdjsonFramer:max=65536``, a spec the agent resolves
with ``framing.framer_from_spec``; an installed package would instead declare
an entry point in group ``mux_rpc.framers`` and be named ``ndjson``), and
``@app.stream_handler`` binds a whole-message handler to a listener whose
connections the agent frames with ndjson. The host never sees a byte stream:
each ``message.payload`` is one whole JSON line, and each ``conn.send(line)``
one whole reply. For a framer it does not know, the agent writes a reply's
bytes as they are (a framer may define ``encode_payload(payload,
header_length)`` to re-frame them), so the reply carries its own newline.

Requests are ``{"id": n, "method": "add" | "echo" | "upper", "params": [...]}``;
replies are ``{"id": n, "result": ...}`` or ``{"id": n, "error": "..."}``
(a small JSON-RPC-like protocol, ids make pipelining safe).

Run it offloaded (root: a veth pair, an agent process, AF_XDP; else shared
memory), then talk to it with netcat::

    .venv/bin/python examples/custom_framer_service.py --port 18801
    printf '{"id":1,"method":"add","params":[2,3]}\\n' | nc -q1 127.0.0.1 18801
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

if __name__ == "__main__":  # run as a script from a checkout: import this repo
    sys.path.insert(0, __file__.rsplit("/examples/", 1)[0])

import mux_rpc

app = mux_rpc.App("ndjson-calc")
PORT = 18801
FRAMER = "examples.ndjson_framer:NdjsonFramer:max=65536"
"""The agent imports the framer from this checkout (on its PYTHONPATH)."""


def _add(a: float, b: float) -> float:
    return a + b


def _echo(*args: Any) -> list[Any]:
    return list(args)


def _upper(text: str) -> str:
    return text.upper()


METHODS = {"add": _add, "echo": _echo, "upper": _upper}


def handle_line(line: bytes) -> bytes:
    """One request line in (a trailing newline is ignored), one reply line out (no newline): the whole service
    logic, pure and testable without any I/O."""
    try:
        req = json.loads(line)
    except ValueError as exc:
        return json.dumps({"id": None, "error": f"bad JSON: {exc}"}).encode()
    rid = req.get("id") if isinstance(req, dict) else None
    if not isinstance(req, dict) or not isinstance(req.get("method"), str):
        return json.dumps({"id": rid, "error": "expected an object with a method"}).encode()
    func = METHODS.get(req["method"])
    if func is None:
        return json.dumps({"id": rid, "error": f"no method {req['method']!r}"}).encode()
    params = req.get("params", [])
    try:
        result = func(*params) if isinstance(params, list) else func(**params)
    except (TypeError, ValueError, AttributeError) as exc:
        return json.dumps({"id": rid, "error": str(exc)}).encode()
    return json.dumps({"id": rid, "result": result}, separators=(",", ":")).encode()


@app.stream_handler(port=PORT, framer=FRAMER, host="127.0.0.1")
async def ndjson_calls(conn: mux_rpc.MessageConnection, message: mux_rpc.Message) -> None:
    """Each message is one JSON line; the reply is one line back."""
    await conn.send(handle_line(message.payload) + b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--backend", choices=("auto", "afxdp", "shm"), default="auto")
    parser.add_argument("--queues", type=int, default=2)
    args = parser.parse_args()

    import logging

    from mux_rpc.offload import run_offloaded

    logging.basicConfig(level=logging.INFO)

    async def serve(host: Any) -> None:
        async with mux_rpc.Server(app) as server:
            lst = await host.listen(args.port, FRAMER)
            print(f"ndjson service on 127.0.0.1:{lst.port} (offloaded)", flush=True)
            await server.serve(lst, handler=app.stream_handlers[0])

    try:
        run_offloaded(serve, backend=args.backend, queues=args.queues)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
