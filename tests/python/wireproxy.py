"""A tiny loopback TCP proxy that records the wire-protocol opcodes it relays.

Used to prove that compression is really on the wire (OP_COMPRESSED = 2012
in both directions, with the expected compressor id) rather than merely
"negotiated" in the handshake.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field

OP_COMPRESSED = 2012
COMPRESSOR_IDS = {"noop": 0, "snappy": 1, "zlib": 2, "zstd": 3}


@dataclass
class Frame:
    direction: str  # "c2s" or "s2c"
    opcode: int
    length: int
    original_opcode: int | None = None
    compressor_id: int | None = None


@dataclass
class WireProxy:
    target: tuple[str, int]
    frames: list[Frame] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.target, timeout=10)
                up.settimeout(None)
            except OSError:
                down.close()
                continue
            with self._lock:
                self._socks += [down, up]
            threading.Thread(target=self._pump, args=(down, up, "c2s"), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, "s2c"), daemon=True).start()

    @staticmethod
    def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while True:
                header = self._recv_exact(src, 16)
                if header is None:
                    break
                length, _req, _resp, opcode = struct.unpack("<iiii", header)
                body = self._recv_exact(src, max(length - 16, 0))
                if body is None:
                    break
                frame = Frame(direction, opcode, length)
                if opcode == OP_COMPRESSED and len(body) >= 9:
                    frame.original_opcode = struct.unpack("<i", body[0:4])[0]
                    frame.compressor_id = body[8]
                with self._lock:
                    self.frames.append(frame)
                dst.sendall(header + body)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def snapshot(self) -> list[Frame]:
        with self._lock:
            return list(self.frames)

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            for s in self._socks:
                try:
                    s.close()
                except OSError:
                    pass
