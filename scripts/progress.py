"""A spinner on stderr for anything the user waits on (a proxy starting, a login)."""

import itertools
import sys
import threading

import click

FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class Spinner:
    """`with Spinner("starting the proxy"):` animates on a terminal; elsewhere (a pipe, a log,
    a test) it prints the message once, so scripted output stays one line per step."""

    def __init__(self, message: str, stream=None):
        self.message = message
        self.stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Spinner":
        if _is_tty(self.stream):
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()
        else:
            click.echo(f"detour: {self.message} ...", err=True)
        return self

    def _spin(self) -> None:
        for frame in itertools.cycle(FRAMES):
            self.stream.write(f"\r{frame} detour: {self.message} ")
            self.stream.flush()
            if self._stop.wait(0.1):
                break

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.stream.write("\r\x1b[2K")  # erase the spinner's line
            self.stream.flush()


def _is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
