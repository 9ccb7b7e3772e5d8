"""Capture the raw TLS records of a real client's ClientHello into tests/data/clienthello_NAME.bin.

Usage: python scripts/capture_clienthello.py NAME -- CLIENT ARGV... ({port} is replaced)
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

from mitmlite.tls.clienthello import ClientHello, parse_client_hello

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
TIMEOUT = 30.0


def receive_hello(listener: socket.socket, out: list[bytes]) -> None:
    """Accept one connection and read until the bytes so far hold a whole ClientHello."""
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(TIMEOUT)
        data = b""
        while not isinstance(parse_client_hello(data), ClientHello):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        out.append(data)


def main(argv: list[str]) -> int:
    """Run the client against a one-shot loopback listener and save what it sent first."""
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    name, command = argv[0], argv[2:]
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        received: list[bytes] = []
        thread = threading.Thread(target=receive_hello, args=(listener, received))
        thread.start()
        client = subprocess.Popen(
            [arg.replace("{port}", str(port)) for arg in command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        thread.join()
        client.kill()
        client.wait()
    path = DATA / f"clienthello_{name}.bin"
    path.write_bytes(received[0])
    print(f"{path}: {len(received[0])} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
