"""The command line (sfu/cli.py): flags, errors as one line and exit status 2, --version."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def test_serve_on_a_port_in_use_is_one_line_and_exit_status_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "sfu", "serve"], capture_output=True,
                              text=True, timeout=60,
                              env={**os.environ, "SFU_SERVER_PORT": str(port)})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr == f"sfu: cannot listen on 127.0.0.1:{port}: Address already in use\n"
