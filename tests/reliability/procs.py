"""Real processes for the fault tests (``rankly serve``, redis-server) and load helpers.

Everything a test starts is stopped in ``finally`` by the PID it started (never by name).
Sizes are small on purpose: the model is the 200-user / 300-item pop + itemknn artifact of
``tests/conftest.py``, and the server runs one worker, so the whole folder stays within a few
minutes on a loaded 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
USERS = 200  # users 1..200 are known to the model (personalized answers)
ITEMS = 300
DEADLINE_MS = 200.0  # deadlines.request_ms, the default D


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Redis:
    """One redis-server on 127.0.0.1:``port``; restartable on the same port and directory."""

    port: int
    workdir: Path
    aof: bool = False
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Redis:
        self.workdir.mkdir(parents=True, exist_ok=True)
        persistence = (["--appendonly", "yes", "--appendfsync", "always"] if self.aof
                       else ["--appendonly", "no"])
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--dir", str(self.workdir), "--enable-debug-command", "local", *persistence],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.cli("PING").strip() == "PONG":
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited at start")
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING")

    def kill9(self) -> None:
        """``kill -9`` (no shutdown, no final fsync) and wait for the port to close."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    stop = kill9

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def cli(self, *args: str, timeout: float = 10.0) -> str:
        out = subprocess.run([REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port), *args],
                             capture_output=True, text=True, timeout=timeout)
        return out.stdout


@dataclass
class Server:
    """One ``rankly serve --workers 1`` process (uvicorn serves in that very PID)."""

    artifacts: Path
    data_dir: Path
    env: dict[str, str]
    port: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)
    started_at: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def launch(self) -> Server:
        """Start the process and return at once (see :meth:`wait_health`)."""
        self.port = self.port or free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("RANKLY_") and k not in ("REDIS_URL",
                                                            "PROMETHEUS_MULTIPROC_DIR")}
        env.update({
            "RANKLY_ARTIFACTS": str(self.artifacts), "RANKLY_DATA_DIR": str(self.data_dir),
            "RANKLY_HOST": "127.0.0.1", "RANKLY_PORT": str(self.port), "RANKLY_WORKERS": "1",
            "RANKLY_LOG_LEVEL": "warning",
            "RANKLY_PIPELINE__CANDIDATES": "itemknn,trending,popular",
            "RANKLY_PIPELINE__SCORERS": "itemknn,popular",
        })
        env.update(self.env)
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rankly.engine.cli", "serve"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_health(self, timeout: float = 60.0) -> float:
        """Wait for ``/health``; return the seconds since :meth:`launch`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"rankly serve exited:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return time.monotonic() - self.started_at
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"rankly serve did not start:\n{self.log_tail()}")

    def start(self) -> Server:
        self.launch()
        self.wait_health()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Send ``sig`` to the server PID and wait; SIGKILL if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        code = self.proc.returncode
        self.proc = None
        return code

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def redis_env(redis: Redis, **extra: str) -> dict[str, str]:
    """Settings for a server on ``redis`` with both cache tiers."""
    return {"RANKLY_STORE_URL": redis.url, "RANKLY_CACHE__TIERS": "l1,l2", **extra}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summary_ms(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max of latencies given in seconds, in milliseconds."""
    return {f"p{q}": round(percentile(values, q) * 1000, 1) for q in (50, 90, 99)} | {
        "max": round(max(values) * 1000, 1) if values else float("nan"), "n": len(values)}


@dataclass
class Sample:
    """One answered request of a load loop."""

    sent: float  # monotonic seconds
    latency: float
    status: int
    fallback: str | None = None
    cached: bool | None = None
    error: str = ""


class _Stale(Exception):
    """A pooled connection was closed by the server before it sent a byte."""


class RawHTTP:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams (loopback load only): GET, and
    POST of a JSON body with its Content-Length.

    httpx costs ~1 ms of CPU per request; on 2 shared cores that made the load generator, not
    the server, the bottleneck at 200 req/s. This one parses just the status line and
    Content-Length. Connections are pooled; at most ``max_connections`` are open.
    """

    def __init__(self, url: str, max_connections: int = 128) -> None:
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(max_connections)

    async def get(self, path: str) -> tuple[int, bytes]:
        return await self.request(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())

    async def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST ``body`` as JSON (event ids make the retry of a stale connection idempotent)."""
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json"
                f"\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        return await self.request(head + body)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        async with self.slots:
            while self.idle:
                conn = self.idle.pop()
                try:
                    return await self._exchange(conn, raw)
                except _Stale:
                    continue  # the server closed an idle keep-alive connection: like any
                    # HTTP client, resend an idempotent request on another one
            conn = await asyncio.open_connection(self.host, self.port)
            try:
                return await self._exchange(conn, raw)
            except _Stale as exc:
                raise ConnectionResetError("connection closed before a response") from exc

    async def _exchange(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                        raw: bytes) -> tuple[int, bytes]:
        reader, writer = conn
        try:
            writer.write(raw)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
                if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise
                raise _Stale from exc
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        self.idle.append(conn)
        return status, body

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def paced_load(url: str, rate: float, duration: float, users: int = USERS,
                     n: int = 10, on_tick=None, timeout: float = 5.0) -> list[Sample]:
    """GET /recommendations at ``rate`` req/s (open loop) for ``duration`` s; known users.

    Requests are started on schedule whatever the latency of earlier ones (each in its own
    task), so a slow server shows up as latency, not as a lower request rate. A request that
    fails at the transport level (or takes over ``timeout``) is recorded with status 0.
    """
    samples: list[Sample] = []
    client = RawHTTP(url)

    async def one(i: int) -> None:
        user = (i * 7919) % users + 1
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                status, raw = await client.get(f"/recommendations?user_id={user}&n={n}")
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            samples.append(Sample(t0, time.monotonic() - t0, 0, error=repr(exc)))
            return
        lat = time.monotonic() - t0
        body = json.loads(raw) if status == 200 else {}
        samples.append(Sample(t0, lat, status, body.get("fallback"), body.get("cached")))

    tasks: set[asyncio.Task] = set()
    start = time.monotonic()
    i = 0
    try:
        while (now := time.monotonic()) - start < duration:
            if on_tick is not None:
                on_tick(now - start)
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=timeout + 5)
    finally:
        await client.close()
    return samples


#: The event mix of benchmarks/events_load.py: 60% views, 20% clicks, 20% purchases (which
#: invalidate the user's cached answers)
KINDS = ("view", "click", "view", "purchase", "view", "click", "view", "purchase", "view", "view")


async def flood_events(url: str, rate: float, batch: int, duration: float,
                       prefix: str = "flood-") -> dict:
    """POST ``rate`` events/s to /events in batches of ``batch`` (open loop) for ``duration`` s.

    Each batch is posted on schedule in its own task, whatever the latency of earlier ones
    (a flood does not slow down because the server does), with :class:`RawHTTP` (httpx's ~1
    ms of CPU per post was a fifth of a core at 200 posts/s, taken from the server's 2 cores).
    Returns status counts, the events acknowledged and the latency of the posts.
    """
    counts: dict[str, int] = {}
    accepted = 0
    latencies: list[float] = []
    client = RawHTTP(url, max_connections=512)

    async def post(body: bytes) -> None:
        nonlocal accepted
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(10.0):
                status, raw = await client.post_json("/events", body)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            key = type(exc).__name__
        else:
            key = str(status)
            if status == 202:
                accepted += json.loads(raw)["accepted"]
        latencies.append(time.monotonic() - t0)
        counts[key] = counts.get(key, 0) + 1

    tasks: set[asyncio.Task] = set()
    seq = 0
    start = time.monotonic()
    i = 0
    try:
        while time.monotonic() - start < duration:
            events = []
            for _ in range(batch):
                seq += 1
                events.append({"event_id": f"{prefix}{seq}", "type": KINDS[seq % len(KINDS)],
                               "user_id": str(seq % USERS + 1), "item_id": str(seq % ITEMS + 1)})
            task = asyncio.create_task(post(json.dumps(events).encode()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            await asyncio.sleep(max(0.0, start + i * batch / rate - time.monotonic()))
        elapsed = time.monotonic() - start
        if tasks:
            await asyncio.wait(tasks, timeout=15)
    finally:
        await client.close()
    return {"statuses": counts, "sent": seq, "accepted": accepted,
            "offered_per_s": round(seq / elapsed, 1), "post_latency_ms": summary_ms(latencies)}


def run_flood(url: str, rate: float, batch: int, duration: float) -> subprocess.Popen:
    """Start :func:`flood_events` in its own process (so it does not slow the measuring
    client); its JSON result is on the process's stdout."""
    code = ("import asyncio, json, sys; sys.path.insert(0, sys.argv[1]); import procs; "
            "print(json.dumps(asyncio.run(procs.flood_events(sys.argv[2], float(sys.argv[3]), "
            "int(sys.argv[4]), float(sys.argv[5])))))")
    # NOTE: niced: a real flood comes from other machines. On these 2 shared cores the flood
    # client's own CPU would otherwise be measured as the server's slowdown (#9)
    return subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent), url,
                             str(rate), str(batch), str(duration)], stdout=subprocess.PIPE,
                            text=True, preexec_fn=lambda: os.nice(19))
