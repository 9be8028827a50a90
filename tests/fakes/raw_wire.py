"""A provider that writes exactly the bytes it is given, HTTP framing included: malformed chunk
lines, heads and bodies cut anywhere, a byte at a time. The h11 server under the other fakes
cannot write what HTTP forbids; this one can.

    with RawWire() as wire:
        wire.enqueue(Answer(b"HTTP/1.1 200 OK\\r\\ntransfer-encoding: chunked\\r\\n\\r\\n-6\\r\\n"))
        ... point the code under test at wire.base_url ...

Each connection reads one request (its head and a Content-Length body), writes the next
queued answer (a well-formed Chat completion when none is queued) and closes. Threads, one per
connection, each bounded by a socket timeout; `stop` closes every socket and joins them.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass

CHAT_OK = json.dumps({
    "id": "chatcmpl-raw", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode()


def whole(body: bytes = CHAT_OK, content_type: str = "application/json") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        content_type.encode(), len(body), body)


@dataclass(frozen=True)
class Answer:
    """`head`, then each of `pieces` `delay` seconds apart (an endless iterator is written
    until the peer goes or the fake stops)."""

    head: bytes
    pieces: Iterable[bytes] = ()
    delay: float = 0.0


class RawWire:
    def __init__(self, io_timeout: float = 30.0):
        self.io_timeout = io_timeout
        self.requests: list[bytes] = []  # each request's head, as read
        self._answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def enqueue(self, *answers: Answer) -> None:
        with self._lock:
            self._answers.extend(answers)

    def clear(self) -> None:
        with self._lock:
            self._answers.clear()
            self.requests.clear()

    def _next(self) -> Answer:
        with self._lock:
            return self._answers.pop(0) if self._answers else Answer(whole())

    def start(self) -> "RawWire":
        thread = threading.Thread(target=self._accept, name="raw-wire accept", daemon=True)
        self._threads.append(thread)
        thread.start()
        return self

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(self.io_timeout)
            with self._lock:
                self._sockets.add(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                      name="raw-wire connection")
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                piece = conn.recv(65536)
                if not piece:
                    return
                data += piece
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                piece = conn.recv(65536)
                if not piece:
                    return
                body += piece
            with self._lock:
                self.requests.append(head)
            answer = self._next()
            conn.sendall(answer.head)
            for piece in answer.pieces:
                if self._stopping.wait(answer.delay):
                    return
                conn.sendall(piece)
        except OSError:  # the peer went: what a misbehaving provider's peer does
            pass
        finally:
            with self._lock:
                self._sockets.discard(conn)
            conn.close()

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        with self._lock:
            for conn in self._sockets:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for thread in self._threads:
            thread.join(10)

    def __enter__(self) -> "RawWire":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def trickle(data: bytes = b" ") -> Iterable[bytes]:
    """One byte at a time, forever."""
    return itertools.cycle([data[i:i + 1] for i in range(len(data))])

