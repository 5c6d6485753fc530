"""Background threads that render, encode and write outputs (PNG and zlib encoding and file writes release the GIL)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from normgrad.run.loading import lower_priority


class Writer:
    """Runs tasks on ``threads`` background threads (0: at once, in the caller); at most ``limit`` wait.

    ``submit`` and ``drain`` return the finished tasks' futures in submission
    order (``future.result()`` re-raises a task's exception), so the caller
    handles results, progress and failures in its own thread.  ``close``
    waits for the running tasks and cancels the waiting ones: an image is
    either written completely by its task or not started.
    """

    def __init__(self, threads: int, limit: int) -> None:
        self.limit = max(1, limit)
        self._pool = ThreadPoolExecutor(threads, "normgrad-writer", initializer=lower_priority) if threads > 0 else None
        self._pending: deque[Future] = deque()

    def submit(self, task: Callable[..., Any], *args: Any) -> list[Future]:
        if self._pool is None:
            future: Future = Future()
            try:
                future.set_result(task(*args))
            except BaseException as error:  # handed to the caller by result()
                future.set_exception(error)
            return [future]
        self._pending.append(self._pool.submit(task, *args))
        finished = []
        while self._pending and (len(self._pending) > self.limit or self._pending[0].done()):
            finished.append(self._pending.popleft())
        return finished

    def drain(self) -> list[Future]:
        """Every remaining task, finished, in submission order."""
        finished = list(self._pending)
        self._pending.clear()
        for future in finished:
            future.exception()  # waits
        return finished

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pending.clear()
