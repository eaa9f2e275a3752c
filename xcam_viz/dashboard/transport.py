"""Panel's websocket writes: a fix for a patch Panel 1.9.4 leaves unsent, and a wait for a session's writes.

The bug: `panel.io.document._dispatch_msgs` writes the patches queued for a session, awaits the writes, then
drops the session's write block without looking at the queue again. A patch queued during that await whose own
dispatch task runs afterwards (or finds the socket's write lock held, as while Bokeh sends the OK reply to the
browser's own change, and retries later) returns early and stays queued until the session's next update: the
page shows an old state. Panel's main branch loops until the queue is empty; no release on PyPI has it (checked
2026-12-06: 1.9.4 is the newest). `patch()` wraps the function, for the Panel versions in `BROKEN` only, so that
after each dispatch a patch left queued with no write block is dispatched again. `tests/test_transport.py`
reproduces the loss with a fake socket and fails without the fix.
"""
from __future__ import annotations

import asyncio
import functools
import time

import panel as pn
from panel.io import document

BROKEN = {"1.9.4"}         # Panel versions whose _dispatch_msgs strands a patch queued during its writes


def stranded(doc) -> bool:
    """Whether patches are queued for `doc` with no dispatch that will send them."""
    return doc not in document._WRITE_BLOCK and any(document._WRITE_MSGS.get(doc, {}).values())


def _rechecked(dispatch):
    @functools.wraps(dispatch)
    async def dispatch_msgs(doc):
        await dispatch(doc)
        if stranded(doc):              # queued while the writes above were awaited: dispatch them too
            document._WRITE_BLOCK[doc] = True
            document._dispatch_write_task(doc, document._dispatch_msgs, doc)
    dispatch_msgs.rechecks_queue = True
    return dispatch_msgs


def patch(version: str = pn.__version__) -> bool:
    """Apply the fix once, if this Panel version needs it; returns whether the fix is in place."""
    if version not in BROKEN:
        return False
    if not getattr(document._dispatch_msgs, "rechecks_queue", False):
        document._dispatch_msgs = _rechecked(document._dispatch_msgs)
    return True


async def written(doc, timeout: float = 10.0) -> None:
    """Wait (at most `timeout` s) until the patches Panel queued or is writing for `doc` are on the socket."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = [task for task in document._write_tasks.get(doc, []) if not task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=max(deadline - time.monotonic(), 0))
        elif any(document._WRITE_MSGS.get(doc, {}).values()):
            await asyncio.sleep(0.005)         # queued behind a busy socket; a dispatch task will write them
        else:
            return
