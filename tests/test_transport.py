"""Panel's patch queue: a patch queued while an earlier one is being written is sent (transport.py's fix).

A fake socket stands in for the browser's websocket: each write returns a future the test completes, and a
flag holds the socket's write lock (as Bokeh does while it sends the OK reply to the browser's own change).
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
import tornado.locks
from bokeh.document import Document
from panel.io import document

from xcam_viz.dashboard import transport


class Message:
    def __init__(self, name: str):
        self.name = name


class Protocol:
    def create(self, kind: str, events: list) -> Message:
        return Message(events[0])


class Socket:
    """Records what is written; each write's future completes when the test says so."""

    def __init__(self):
        self.write_lock = tornado.locks.Lock()
        self.sent: list[str] = []
        self.writes: list[asyncio.Future] = []

    def write(self, conn, msg: Message | None = None, events=None) -> list[asyncio.Future]:
        self.sent.append(msg.name)
        self.writes.append(asyncio.get_running_loop().create_future())
        return [self.writes[-1]]

    def hold_lock(self, held: bool) -> None:
        self.write_lock._block._value = 0 if held else 1


class Connection:
    def __init__(self):
        self._socket, self.protocol = Socket(), Protocol()


async def settle(socket: Socket, rounds: int = 30) -> None:
    """Let the dispatch tasks run (and their retries after 10 ms), completing every write they start."""
    for _ in range(rounds):
        await asyncio.sleep(0.002)
        for write in socket.writes:
            if not write.done():
                write.set_result(None)


async def queued_during_a_write(lock_held: bool) -> tuple[list[str], bool]:
    """Queue M1 and start dispatching it; while M1's write is pending queue M2; complete M1. Returns what the
    socket got and whether a patch is left stranded in the queue."""
    doc, conn = Document(), Connection()
    socket = conn._socket
    document.schedule_write_events(doc, [conn], ["M1"])
    await asyncio.sleep(0)                          # the dispatch task writes M1 and awaits its future
    assert socket.sent == ["M1"]
    socket.hold_lock(lock_held)                     # e.g. Bokeh sending the OK reply to the browser's change
    if lock_held:
        document.schedule_write_events(doc, [conn], ["M2"])
        await asyncio.sleep(0)                      # M2's task finds the lock held: it retries in 10 ms
        socket.writes[0].set_result(None)           # M1 written: its task drops the write block
    else:
        socket.writes[0].set_result(None)           # M1 written; M2 is queued before M1's task resumes
        document.schedule_write_events(doc, [conn], ["M2"])
    await asyncio.sleep(0.001)
    socket.hold_lock(False)
    await settle(socket)
    return socket.sent, transport.stranded(doc)


@pytest.fixture
def fake_socket():
    document.extra_socket_handlers[Socket] = lambda conn, events=None, msg=None: conn._socket.write(conn, msg)
    yield
    document.extra_socket_handlers.pop(Socket, None)


@pytest.mark.parametrize("lock_held", [False, True], ids=["wakeup-order", "socket-busy"])
def test_a_patch_queued_during_a_write_is_sent(fake_socket, lock_held):
    transport.patch()                   # where the installed Panel needs it (a new broken one: add it to BROKEN)
    with ThreadPoolExecutor(1) as alone:   # a loop of its own: Playwright's sync API may hold this thread's loop
        sent, stranded = alone.submit(asyncio.run, queued_during_a_write(lock_held)).result()
    assert sent == ["M1", "M2"] and not stranded


def test_the_fix_is_only_for_the_broken_versions():
    assert not transport.patch("1.10.0")
    assert transport.patch("1.9.4") and transport.patch("1.9.4")            # once: applying twice wraps once
    assert not hasattr(document._dispatch_msgs.__wrapped__, "rechecks_queue")
