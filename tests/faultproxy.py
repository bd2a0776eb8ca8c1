"""A fault-injecting HTTP/1.1 proxy for tests, standard library only.

It listens on 127.0.0.1 (a free port), reads each request from the client and sends its
bytes upstream unchanged (a SigV4 signature covers the Host header, so clients sign for
the proxy's ``host:port``, which is what they see), then relays the upstream answer. One
upstream connection is opened per request; the client's connection is kept alive across
requests.

Faults are picked per request with a seeded RNG, each :class:`Fault` taking its share of
the requests it matches (by method and by a substring of the target), up to its limit:

``reset``
    forward, relay the headers and part of the body, wait (bounded) until the client has
    that part, then close with SO_LINGER 0 (RST).
``truncate``
    forward, relay the headers (with the original Content-Length) and part of the body,
    then close cleanly (FIN).
``stall``
    forward, relay the headers and part of the body, then go silent for
    ``stall_seconds`` (longer than the client's read timeout), then close.
``error500``
    answer ``500 InternalError`` without forwarding.
``slowdown503``
    answer ``503 SlowDown`` without forwarding.
``corrupt``
    forward, relay the whole answer with one byte of its body flipped (10-90% in), and
    keep the connection: bit rot on the wire or on a disk, which only a checksum sees.

Apart from the faults, the proxy can play a bucket that lives in another AWS region
(``bucket_region``): a request signed for any other region (the region in its SigV4
credential scope) gets exactly what AWS answers — ``301 PermanentRedirect`` (a path-style
request to the wrong regional endpoint) or ``400 AuthorizationHeaderMalformed`` (the
global endpoint), both with ``x-amz-bucket-region``, HEAD answers without a body — and is
not forwarded; requests signed for ``bucket_region`` go through. :attr:`FaultProxy.signed`
records the region each request was signed for.

The cut falls 10-90% (seeded) into the body; where a response has no body (HEAD,
UploadPart, 204), in the middle of the headers; with ``Fault.cut_after``, right after
given bytes of the head.
With ``body_rate``, every response body with a Content-Length is relayed at that many
bytes per second (a slow link), in pieces sent every 50 ms; changed while bodies are being
relayed, it applies to them from their next piece (a link that turns slow mid-read).
Everything stays on loopback; :meth:`FaultProxy.stop` closes every socket and joins every
thread.
"""

from __future__ import annotations

import array
import contextlib
import email.utils
import fcntl
import random
import socket
import struct
import termios
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

__all__ = ["MODES", "WRONG_REGION_ANSWERS", "Fault", "FaultProxy"]

MODES = ("reset", "error500", "slowdown503", "stall", "truncate", "corrupt")
WRONG_REGION_ANSWERS = ("PermanentRedirect", "AuthorizationHeaderMalformed")

_MAX_HEAD = 64 * 1024
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Fault:
    """Inject ``mode`` into ``share`` (0..1) of the matching requests.

    Attributes:
        mode: one of :data:`MODES`.
        share: the probability that a matching request gets this fault.
        method: match only this HTTP method (any if None).
        target: match only request targets (path and query) containing this text.
        limit: inject at most this many times (no limit if None).
        cut_after: for ``reset``, ``truncate`` and ``stall``: cut the response right
            after the first occurrence of these bytes in its head (e.g.
            ``b"Content-Length: 4"``) instead of 10-90% into its body.
    """

    mode: str
    share: float
    method: str | None = None
    target: str | None = None
    limit: int | None = None
    cut_after: bytes | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown fault mode {self.mode!r}; known: {', '.join(MODES)}")
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"share must be within 0..1, not {self.share}")

    def matches(self, method: str, target: str = "") -> bool:
        return (self.method is None or self.method.upper() == method.upper()) and (
            self.target is None or self.target in target
        )


class _Closed(Exception):
    """The peer closed the connection (or the proxy is stopping)."""


class _Reader:
    """Buffered reads from a socket: heads, exact lengths, chunked bodies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> None:
        data = self.sock.recv(_CHUNK)
        if not data:
            raise _Closed
        self.buf += data

    def head(self) -> bytes:
        """Bytes up to and including the blank line that ends a head."""
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                out = bytes(self.buf[: end + 4])
                del self.buf[: end + 4]
                return out
            if len(self.buf) > _MAX_HEAD:
                raise _Closed
            self._fill()

    def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                out = bytes(self.buf[: end + 2])
                del self.buf[: end + 2]
                return out
            self._fill()

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def some(self, n: int) -> bytes:
        """Between 1 and ``n`` bytes."""
        if not self.buf:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[: len(out)]
        return out

    def chunked(self) -> bytes:
        """A whole chunked body, raw (sizes, extensions and trailers kept as sent)."""
        out = bytearray()
        while True:
            size_line = self.line()
            out += size_line
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    trailer = self.line()
                    out += trailer
                    if trailer == b"\r\n":
                        return bytes(out)
            out += self.exact(size + 2)

    def until_close(self) -> bytes:
        out = bytearray(self.buf)
        self.buf.clear()
        while True:
            data = self.sock.recv(_CHUNK)
            if not data:
                return bytes(out)
            out += data


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """The start line and the headers (lower-cased names; last one wins)."""
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _signing_region(authorization: str) -> str | None:
    """The region of a SigV4 ``Authorization`` header's credential scope
    (``Credential=KEY/DATE/REGION/s3/aws4_request``)."""
    _, found, rest = authorization.partition("Credential=")
    scope = rest.split(",", 1)[0].split("/")
    return scope[2] if found and len(scope) >= 5 else None


class FaultProxy:
    """A threaded fault-injecting proxy in front of ``upstream_host:upstream_port``.

    Args:
        upstream_host: the real server's address (loopback).
        upstream_port: its port.
        faults: the faults to inject; change them later with :meth:`set_faults`.
        seed: seeds the RNG that picks faulty requests and cut points.
        stall_seconds: how long a ``stall`` stays silent.
        bucket_region: play every bucket as living in this AWS region (see the module
            docstring); None forwards requests signed for any region.
        wrong_region_answer: what a request signed for another region gets, one of
            :data:`WRONG_REGION_ANSWERS`.
        body_rate: relay each response body at most this many bytes per second.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        faults: Iterable[Fault] = (),
        *,
        seed: int = 0,
        stall_seconds: float = 3.0,
        bucket_region: str | None = None,
        wrong_region_answer: str = "PermanentRedirect",
        body_rate: float | None = None,
    ) -> None:
        if upstream_host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the fault proxy only forwards to loopback")
        if wrong_region_answer not in WRONG_REGION_ANSWERS:
            raise ValueError(f"unknown wrong-region answer {wrong_region_answer!r}")
        self.bucket_region = bucket_region
        self.wrong_region_answer = wrong_region_answer
        self._signed: list[tuple[str, str, str | None]] = []
        self.upstream = (upstream_host, upstream_port)
        self.stall_seconds = stall_seconds
        self.body_rate = body_rate
        self._faults: tuple[Fault, ...] = tuple(faults)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._threads: set[threading.Thread] = set()
        self._sockets: set[socket.socket] = set()
        self._requests = 0
        self._by_method: Counter[str] = Counter()
        self._injected: Counter[str] = Counter()
        self._fired: Counter[int] = Counter()
        self._log: list[tuple[str, str, str | None]] = []
        self._body_bytes = 0
        self.port = 0

    # -- configuration and counters ------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_faults(self, faults: Iterable[Fault], *, seed: int | None = None) -> None:
        """Replace the faults; with ``seed``, restart the RNG (see :meth:`plan`)."""
        with self._lock:
            self._faults = tuple(faults)
            self._fired.clear()
            if seed is not None:
                self._rng = random.Random(seed)

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    @property
    def injected(self) -> dict[str, int]:
        """Faults injected so far, by mode."""
        with self._lock:
            return dict(self._injected)

    @property
    def injected_total(self) -> int:
        with self._lock:
            return sum(self._injected.values())

    @property
    def by_method(self) -> dict[str, int]:
        """Requests so far, by HTTP method."""
        with self._lock:
            return dict(self._by_method)

    def stats(self) -> dict[str, object]:
        """A snapshot: requests, requests by method, injected faults by mode."""
        with self._lock:
            return {
                "requests": self._requests,
                "by_method": dict(self._by_method),
                "injected": dict(self._injected),
            }

    @property
    def body_bytes(self) -> int:
        """Response body bytes relayed to clients so far (what the store served)."""
        with self._lock:
            return self._body_bytes

    def _served(self, n: int) -> None:
        with self._lock:
            self._body_bytes += n

    @property
    def log(self) -> list[tuple[str, str, str | None]]:
        """``(method, target, fault or None)`` of every request, in arrival order."""
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        """Forget the requests logged so far (the counters by method stay)."""
        with self._lock:
            self._log.clear()

    @property
    def signed(self) -> list[tuple[str, str, str | None]]:
        """``(method, target, region signed for or None)`` of every request, in order."""
        with self._lock:
            return list(self._signed)

    @staticmethod
    def _pick(
        faults: tuple[Fault, ...], method: str, target: str, rng: random.Random, fired: Counter[int]
    ) -> tuple[Fault | None, float]:
        """One draw decides the fault: the rules that match share the unit interval."""
        draw = rng.random()
        frac = rng.uniform(0.1, 0.9)
        edge = 0.0
        for i, fault in enumerate(faults):
            if not fault.matches(method, target):
                continue
            if fault.limit is not None and fired[i] >= fault.limit:
                continue
            edge += fault.share
            if draw < edge:
                fired[i] += 1
                return fault, frac
        return None, frac

    @classmethod
    def plan(
        cls, faults: Iterable[Fault], seed: int, n: int, method: str = "GET", target: str = "/"
    ) -> list[str | None]:
        """The faults the first ``n`` requests (all ``method target``) would get with ``seed``.

        Lets a test choose a seed that injects early, so a short transfer is sure to meet
        a fault whatever order its parallel requests arrive in.
        """
        rng = random.Random(seed)
        rules = tuple(faults)
        fired: Counter[int] = Counter()
        picks = [cls._pick(rules, method, target, rng, fired)[0] for _ in range(n)]
        return [f.mode if f is not None else None for f in picks]

    def _choose(self, method: str, target: str) -> tuple[Fault | None, float]:
        """Count the request; pick its fault (or None) and a cut fraction."""
        with self._lock:
            self._requests += 1
            self._by_method[method] += 1
            fault, frac = self._pick(self._faults, method, target, self._rng, self._fired)
            mode = fault.mode if fault is not None else None
            if mode is not None:
                self._injected[mode] += 1
            self._log.append((method, target, mode))
            return fault, frac

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(0.1)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="faultproxy-accept", daemon=True
        )
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(5)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            socks = list(self._sockets)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(5)
        with self._lock:
            socks = list(self._sockets)
            self._sockets.clear()
            alive = [t.name for t in self._threads if t.is_alive()]
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
        if alive:
            raise RuntimeError(f"fault proxy threads did not stop: {alive}")

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _close(self, sock: socket.socket | None, *, rst: bool = False) -> None:
        if sock is None:
            return
        with self._lock:
            self._sockets.discard(sock)
        if rst:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self._track(conn)
            t = threading.Thread(
                target=self._serve,
                args=(conn,),
                daemon=True,
                name=f"faultproxy-conn-{conn.fileno()}",
            )
            with self._lock:
                self._threads = {x for x in self._threads if x.is_alive()}
                self._threads.add(t)
            t.start()

    # -- one client connection -------------------------------------------------------------

    def _serve(self, client: socket.socket) -> None:
        reader = _Reader(client)
        keep = True
        try:
            while keep and not self._stopping.is_set():
                keep = self._one_request(client, reader)
        except (_Closed, OSError, ValueError):
            pass
        finally:
            self._close(client)

    def _one_request(self, client: socket.socket, reader: _Reader) -> bool:
        """Handle one request; return whether the client connection stays open."""
        head = reader.head()
        start, headers = _parse_head(head)
        parts = start.split(" ")
        if len(parts) != 3:
            raise _Closed
        method, target, _version = parts
        client_close = headers.get("connection", "").lower() == "close"
        fault, frac = self._choose(method, target)
        mode = fault.mode if fault is not None else None
        region = _signing_region(headers.get("authorization", ""))
        with self._lock:
            self._signed.append((method, target, region))
        if headers.get("expect", "").lower() == "100-continue":
            # Answered here, so the body comes at once; upstream's own 100 is dropped.
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        bucket = target.split("?", 1)[0].lstrip("/").split("/", 1)[0]
        if self.bucket_region is not None and bucket and region != self.bucket_region:
            self._relay_body(reader, headers, None)  # read and dropped, as AWS does
            self._send_wrong_region(client, method, bucket, region)
            return not client_close
        if mode in ("error500", "slowdown503"):
            self._relay_body(reader, headers, None)  # read and dropped
            self._send_error(client, method, target, mode)
            return not client_close
        upstream = self._track(socket.create_connection(self.upstream, timeout=60))
        try:
            upstream.sendall(head)
            self._relay_body(reader, headers, upstream)
            keep = self._relay_response(client, upstream, method, fault, frac)
        finally:
            self._close(upstream)
        if mode is not None and mode != "corrupt":
            self._act(client, mode)
            return False
        return keep and not client_close

    @staticmethod
    def _relay_body(reader: _Reader, headers: dict[str, str], to: socket.socket | None) -> None:
        """Pass the request body on as it arrives (or drop it when ``to`` is None)."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = reader.chunked()
            if to is not None:
                to.sendall(body)
            return
        left = int(headers.get("content-length", "0") or 0)
        while left > 0:
            data = reader.some(min(left, _CHUNK))
            if to is not None:
                to.sendall(data)
            left -= len(data)

    def _send_error(self, client: socket.socket, method: str, target: str, mode: str) -> None:
        if mode == "error500":
            status, code, text = (
                "500 Internal Server Error",
                "InternalError",
                ("We encountered an internal error. Please try again."),
            )
        else:
            status, code, text = "503 Slow Down", "SlowDown", "Please reduce your request rate."
        with self._lock:
            rid = f"faultproxy-{self._requests}"
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{text}</Message>"
            f"<Resource>{target.split('?', 1)[0]}</Resource><RequestId>{rid}</RequestId></Error>"
        ).encode()
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(xml)}\r\nx-amz-request-id: {rid}\r\n"
            "Connection: keep-alive\r\n\r\n"
        ).encode()
        client.sendall(head if method == "HEAD" else head + xml)

    def _send_wrong_region(
        self, client: socket.socket, method: str, bucket: str, region: str | None
    ) -> None:
        """What AWS answers a request for ``bucket`` signed for another region."""
        assert self.bucket_region is not None
        with self._lock:
            rid = f"faultproxy-{self._requests}"
        if self.wrong_region_answer == "PermanentRedirect":
            status = "301 Moved Permanently"
            detail = (
                "<Code>PermanentRedirect</Code><Message>The bucket you are attempting to access "
                "must be addressed using the specified endpoint. Please send all future "
                "requests to this endpoint.</Message>"
                f"<Endpoint>{bucket}.s3.{self.bucket_region}.amazonaws.com</Endpoint>"
                f"<Bucket>{bucket}</Bucket>"
            )
        else:
            status = "400 Bad Request"
            detail = (
                "<Code>AuthorizationHeaderMalformed</Code><Message>The authorization header is "
                f"malformed; the region '{region}' is wrong; expecting "
                f"'{self.bucket_region}'</Message><Region>{self.bucket_region}</Region>"
            )
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error>{detail}<RequestId>{rid}</RequestId><HostId>faultproxy</HostId></Error>"
        ).encode()
        head = (
            f"HTTP/1.1 {status}\r\nx-amz-bucket-region: {self.bucket_region}\r\n"
            f"x-amz-request-id: {rid}\r\nx-amz-id-2: faultproxy\r\n"
            f"Content-Type: application/xml\r\nDate: {email.utils.formatdate(usegmt=True)}\r\n"
            f"Server: AmazonS3\r\nContent-Length: {len(xml)}\r\n\r\n"
        ).encode()
        client.sendall(head if method == "HEAD" else head + xml)

    def _relay_response(
        self,
        client: socket.socket,
        upstream: socket.socket,
        method: str,
        fault: Fault | None,
        frac: float,
    ) -> bool:
        """Relay upstream's answer, or with a fault only its first part; return whether
        upstream keeps the connection open."""
        up = _Reader(upstream)
        while True:
            head = up.head()
            status_line, headers = _parse_head(head)
            status = int(status_line.split(" ", 2)[1])
            if not 100 <= status < 200:
                break  # interim answers (100 Continue) were already given to the client
        keep = headers.get("connection", "").lower() != "close"
        body = b""  # a body read whole; one with a Content-Length is streamed instead
        if method == "HEAD" or status in (204, 304):
            length = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = up.chunked()
            length = len(body)
        elif "content-length" in headers:
            length = int(headers["content-length"])
        else:
            body = up.until_close()
            length = len(body)
            keep = False
        if fault is not None and fault.mode == "corrupt" and length:
            body += up.exact(length - len(body))
            at = min(length - 1, int(length * frac))
            body = body[:at] + bytes([body[at] ^ 0xFF]) + body[at + 1 :]
            client.sendall(head + body)
            self._served(len(body))
            return keep
        if fault is None or fault.mode == "corrupt":
            client.sendall(head + body)
            self._served(len(body))
            self._stream(up, client, length - len(body))
            return keep
        # The cut: inside the headers when there is no body, else 10-90% into the body.
        cut = len(head) // 2 if not length else len(head) + max(1, int(length * frac))
        if fault.cut_after is not None and fault.cut_after in head:
            cut = head.index(fault.cut_after) + len(fault.cut_after)
        first = head + body
        if cut <= len(first):
            client.sendall(first[:cut])
        else:
            client.sendall(first)
            self._stream(up, client, cut - len(first))
        return False

    def _stream(self, up: _Reader, client: socket.socket, left: int) -> None:
        rate: float | None = -1.0
        began, sent, piece = 0.0, 0, _CHUNK
        while left > 0:
            if self.body_rate != rate:  # set from outside mid-response: a link gone slow
                rate = self.body_rate
                piece = _CHUNK if rate is None else max(1, min(_CHUNK, int(rate / 20)))
                began, sent = time.monotonic(), 0
            data = up.some(min(left, piece))
            client.sendall(data)
            self._served(len(data))
            left -= len(data)
            sent += len(data)
            if rate is not None:
                ahead = began + sent / rate - time.monotonic()
                if ahead > 0 and self._stopping.wait(ahead):
                    raise _Closed

    def _drain(self, sock: socket.socket, timeout: float = 2.0) -> None:
        """Wait (bounded) until the peer has acknowledged everything sent (Linux only)."""
        if not hasattr(fcntl, "ioctl") or not hasattr(termios, "TIOCOUTQ"):
            return
        deadline = time.monotonic() + timeout
        buf = array.array("i", [0])
        while time.monotonic() < deadline and not self._stopping.is_set():
            try:
                fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf, True)
            except OSError:
                return
            if buf[0] == 0:
                return
            time.sleep(0.002)

    def _act(self, client: socket.socket, mode: str) -> None:
        if mode == "reset":
            # RST throws away what the kernel has not sent yet: let the part of the body
            # that was "sent" reach the client first, so the reset is truly mid-body.
            self._drain(client)
            self._close(client, rst=True)
        elif mode == "truncate":
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)
            self._close(client)
        elif mode == "stall":
            self._stopping.wait(self.stall_seconds)
            self._close(client)
