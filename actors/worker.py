"""DetectorWorker: the Ray actor around StreamWorker.

The consume loop runs on a thread of its own, from the constructor on, on the
partitions the actor was built with; `assign` drains and commits what it
reads and moves it to other partitions without reloading the model (the pool
does this when it grows or shrinks). When Ray restarts a crashed worker
(max_restarts=-1) the new incarnation starts on the partitions it was built
with; the pool gives it its current ones (`WorkerPool.collect`). The actor is
threaded (max_concurrency > 1) so `report`, `assign` and `stop` run beside
the loop.

Crash-only: if the loop fails (broker gone, output refused), the process
exits and Ray restarts it, rather than carry on in an unknown state.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import replace
from typing import Any

from services.config import WorkerSettings
from services.metrics import WorkerStats

log = logging.getLogger(__name__)


class DetectorWorker:
    def __init__(self, settings: WorkerSettings, worker_id: str) -> None:
        from actors.stream import StreamWorker  # heavy imports happen in the actor, not the driver

        # WARNING at the root: kafka-python and open_clip log every connection and model build at INFO.
        logging.basicConfig(format=f"%(asctime)s worker-{worker_id} %(levelname)s %(message)s")
        logging.getLogger().setLevel(logging.WARNING)
        for name in ("actors", "services", "training"):
            logging.getLogger(name).setLevel(logging.INFO)
        # kafka-python 3 warns whenever a step of its network loop took over 100 ms of wall
        # time. In a worker that is the GIL held by decode and the encoder, not a bug in a
        # coroutine: under load it is a line every few seconds that says nothing to act on.
        logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
        self.stats = WorkerStats()
        self._stream = StreamWorker(settings, worker_id=worker_id, stats=self.stats)
        self._started = time.time()
        self._assign_lock = threading.Lock()
        self._start()

    def _start(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), name="consume-loop", daemon=True
        )
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        try:
            self._stream.run(stop)
        except BaseException:
            log.exception("consume loop failed; exiting so Ray restarts this worker")
            logging.shutdown()
            os._exit(1)

    def report(self) -> dict[str, Any]:
        """Stats since the last report, and where this worker stands."""
        return {"stats": self.stats.drain(), "status": self._stream.status()}

    def assign(self, partitions: tuple[int, ...], timeout_s: float = 60.0) -> tuple[int, ...]:
        """Stop reading (finish in-flight work, flush, commit), then read `partitions`
        (none: stand by); returns them."""
        with self._assign_lock:
            if not self._drain(timeout_s):  # never two loops on one worker: restart instead
                log.error("could not drain in %ss; exiting so Ray restarts this worker", timeout_s)
                logging.shutdown()
                os._exit(1)
            self._stream.settings = replace(self._stream.settings, partitions=tuple(partitions))
            self._start()
            return self._stream.settings.partitions

    def stop(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Stop polling, finish in-flight work, flush, commit, leave the group."""
        return {
            "drained": self._drain(timeout_s),
            "stats": self.stats.drain(),
            "status": self._stream.status(),
        }

    def _drain(self, timeout_s: float) -> bool:
        """Stop the loop (it finishes in-flight work and commits); True once it has."""
        self._stop.set()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def pid(self) -> int:
        return os.getpid()
