"""A custom framer, end to end: newline-delimited JSON (https://github.com/ndjson/ndjson-spec).

Each message is one JSON text followed by ``\\n`` (an optional ``\\r`` before it
is dropped, per the ndjson spec); empty lines are skipped. The framer:

1. subclasses :class:`framing.Framer` and implements ``_parse`` (split whole
   messages off the start of a ``bytes`` object, return how far it got, set
   ``_need``) and ``encode``;
2. is registered with :func:`framing.register_framer` so that the spec string
   ``ndjson:max=4096`` builds one (a package would instead declare an entry point
   in group ``mux_rpc.framers``: ``ndjson = "mypkg.ndjson:NdjsonFramer"``);
3. is fed a stream in arbitrary pieces.

Run it: ``.venv/bin/python examples/ndjson_framer.py``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

if __name__ == "__main__":  # run as a script from a checkout: import this repo's framing
    sys.path.insert(0, __file__.rsplit("/examples/", 1)[0])

import framing
from framing import BadFramerSpec, EncodeError, Framer, FrameTooLong, MalformedFrame


class BadJson(MalformedFrame):
    """A line that is not valid UTF-8 JSON."""

    code = "bad_json"


@dataclass(frozen=True, slots=True)
class JsonMessage:
    """One ndjson message: the decoded value and the line it came from."""

    value: Any
    raw: bytes = field(default=b"", compare=False, repr=False)
    """The line as received, without the newline."""


class NdjsonFramer(Framer[JsonMessage]):
    """Newline-delimited JSON. ``max_message_size`` bounds one line."""

    name: ClassVar[str] = "ndjson"

    def __init__(self, *, max_message_size: int = 64 * 1024) -> None:
        super().__init__(max_message_size=max_message_size)

    def _parse(self, data: bytes) -> int:
        pos = 0
        out = self._out.append
        find = data.find
        limit = self.max_message_size
        while True:
            nl = find(b"\n", pos)
            if nl < 0:
                break
            line = data[pos:nl]
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > limit:
                raise FrameTooLong(f"line of {len(line)} bytes exceeds {limit}")
            if line.strip():
                try:
                    value = json.loads(line)
                except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                    raise BadJson(f"invalid JSON line: {exc}") from exc
                out(JsonMessage(value, line))
            pos = nl + 1
        if len(data) - pos > limit:  # checked before the partial line is buffered
            raise FrameTooLong(f"line longer than {limit} bytes without a newline")
        # The length of the next message is unknown: any new byte may end it.
        self._need = len(data) - pos + 1
        return pos

    def encode(self, message: JsonMessage) -> bytes:
        try:
            line = json.dumps(
                message.value, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode()
        except (TypeError, ValueError) as exc:
            raise EncodeError(f"not JSON-serialisable: {exc}") from exc
        if len(line) > self.max_message_size:
            raise EncodeError(f"line of {len(line)} bytes exceeds {self.max_message_size}")
        return line + b"\n"

    def message_bytes(self, message: JsonMessage) -> bytes:
        return message.raw + b"\n" if message.raw else self.encode(message)

    @classmethod
    def from_spec(cls, params: Mapping[str, str]) -> NdjsonFramer:
        unknown = set(params) - {"max"}
        if unknown:
            raise BadFramerSpec(f"ndjson: unknown parameter(s) {sorted(unknown)} (known: max)")
        try:
            return cls(max_message_size=int(params.get("max", "65536"), 0))
        except ValueError as exc:
            raise BadFramerSpec(f"ndjson: max must be an integer: {exc}") from exc


def register() -> None:
    """Make ``ndjson`` available to :func:`framing.framer_from_spec`."""
    framing.register_framer(NdjsonFramer.name, NdjsonFramer, replace=True)


def main() -> None:
    register()
    framer = framing.framer_from_spec("ndjson:max=4096")
    stream = b'{"id":1,"method":"ping"}\n{"id":2,"method":"add","params":[1,2]}\r\n\n[3]\n{"par'
    for i in range(0, len(stream), 7):  # arbitrary TCP segmentation
        framer.feed(stream[i : i + 7])
        while (msg := framer.next_message()) is not None:
            print("message:", msg.value, "wire:", framer.message_bytes(msg))
    framer.feed_eof()
    try:
        framer.next_message()
    except framing.FramingError as exc:
        print("at EOF:", exc.code, "-", exc)
    print("reply:", framer.encode(JsonMessage({"id": 2, "result": 3})))


if __name__ == "__main__":
    main()
