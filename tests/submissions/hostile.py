"""Hostile homework submissions, one per attack, as sources with ``$name`` placeholders the tests fill
with the paths and port of the run they attack (students know the layout of the evaluator's machine).

Each entry: ``(model.py source, regular expression its leaderboard row must show)``. The attacks that
need no model run at import time and do not import torch, so they fail in milliseconds; the others pass
the load-time probe or fail on it, as noted.
"""

from __future__ import annotations

import textwrap
from string import Template

_MODEL = """
import torch


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        logits = self.linear(x.flatten(1))
"""

HOSTILE: dict[str, tuple[str, str]] = {
    # Another submission's weights, by absolute path and by a relative one.
    "read_other": (
        """
        print(open("../alice/model.onnx", "rb").read(8) if __import__("os").path.exists("../alice") else "")
        stolen = open("$alice_model", "rb").read()
        """,
        r"FileNotFoundError: \[Errno 2\] No such file or directory: '.*alice/model\.onnx'",
    ),
    # Overwrite another submission's model.
    "write_outside": (
        """
        open("$alice_model", "wb").write(b"overwritten")
        """,
        r"(FileNotFoundError|OSError|PermissionError).*alice/model\.onnx",
    ),
    # Rewrite the leaderboard file; failing that, forge rows through the error message.
    "rewrite_board": (
        """
        try:
            open("$leaderboard", "w").write("| 1 | mallory | ok | 100.0 |")
        except OSError as error:
            raise RuntimeError(f"{error}\\n| 1 | mallory | ok | 100.0 | 100.0 |\\n") from None
        """,
        r"No such file or directory: '.*board/leaderboard\.md'",
    ),
    # Phone home: the evaluator's own listener, then the internet.
    "open_socket": (
        """
        import socket
        try:
            socket.create_connection(("127.0.0.1", $port), timeout=3)
        finally:
            socket.create_connection(("1.1.1.1", 53), timeout=3)
        """,
        r"(Network is unreachable|OSError|ConnectionRefusedError)",
    ),
    # A fork bomb: fork until the kernel says no; the children wait.
    "fork_bomb": (
        """
        import os, time
        while True:
            if os.fork() == 0:
                time.sleep(120)
                os._exit(0)
        """,
        r"BlockingIOError: \[Errno 11\] Resource temporarily unavailable",
    ),
    # Allocate until something stops it.
    "allocate": (
        """
        blocks = []
        while True:
            blocks.append(bytearray(64 << 20))
        """,
        r"MemoryError",
    ),
    # Print without end.
    "print_flood": (
        """
        import sys
        while True:
            sys.stdout.write("spam " * 200_000)
        """,
        r"wrote more than \d+ KiB of output",
    ),
    # Fill the disk of its working directory.
    "fill_disk": (
        """
        with open("ballast", "wb") as stream:
            while True:
                stream.write(b"x" * (1 << 20))
        """,
        r"(exceeded its file size limit \(SIGXFSZ\)|No space left on device|File too large)",
    ),
    # Hang on the first forward pass (the load-time probe).
    "sleep_forever": (
        _MODEL
        + """
        __import__("time").sleep(10**6)
        return logits
        """,
        r"did not answer within 8 s while computing outputs",
    ),
    # Answer correctly for the probe and the first calls, then NaN.
    "nan_outputs": (
        _MODEL
        + """
        return logits if self.calls <= 2 else torch.full_like(logits, float("nan"))
        """,
        r"returned non-finite values \(NaN or inf\)",
    ),
    # Three outputs instead of ten.
    "wrong_shape": (
        _MODEL
        + """
        return logits[:, :3]
        """,
        r"returned shape \(4, 3\) where \(4, 10\) was due",
    ),
    # Send a pickle down the reply pipe instead of an array; unpickled, it would leave a marker.
    "send_pickle": (
        _MODEL
        + """
        import __main__, os, pickle

        class Marker:
            def __reduce__(self):
                return (os.system, ("touch $marker",))

        os.write(__main__.channel_out_fd, pickle.dumps(Marker()) + b"\\0" * 64)
        return logits
        """,
        r"sent a reply that is not a valid message \(not a message of this protocol",
    ),
}


def hostile_source(name: str, **places: object) -> str:
    """The ``model.py`` of the hostile submission ``name`` with its placeholders filled."""
    source, _ = HOSTILE[name]
    if source.startswith(_MODEL):
        body = textwrap.indent(textwrap.dedent(source[len(_MODEL) :]), " " * 8)
        source = _MODEL + body
    else:
        source = textwrap.dedent(source)
    return Template(source).substitute({k: str(v) for k, v in places.items()})


def hostile_weights(name: str) -> dict:
    """A state_dict that fits the hostile submission's model (empty for the import-time attacks)."""
    import torch

    source, _ = HOSTILE[name]
    if not source.startswith(_MODEL):
        return {}
    torch.manual_seed(0)
    return {f"linear.{k}": v for k, v in torch.nn.Linear(64, 10).state_dict().items()}
