"""DetectorWorker: the Ray actor around StreamWorker.

The consume loop starts in the constructor, on a thread of its own, so when
Ray restarts a crashed worker (max_restarts=-1) the new incarnation goes back
to work by itself: same partitions, from their last committed offsets, so the
records its predecessor had not committed come back to it. The actor is
threaded (max_concurrency > 1) so `report` and `stop` run beside the loop.

Crash-only: if the loop fails (broker gone, output refused), the process
exits and Ray restarts it, rather than carry on in an unknown state.
"""

from __future__ import annotations

import logging
import os
import threading
import time
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
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._stream = StreamWorker(settings, worker_id=worker_id, stats=self.stats)
        self._started = time.time()
        self._thread = threading.Thread(target=self._run, name="consume-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._stream.run(self._stop)
        except BaseException:
            log.exception("consume loop failed; exiting so Ray restarts this worker")
            logging.shutdown()
            os._exit(1)

    def report(self) -> dict[str, Any]:
        """Stats since the last report, and where this worker stands."""
        return {"stats": self.stats.drain(), "status": self._stream.status()}

    def stop(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Stop polling, finish in-flight work, flush, commit, leave the group."""
        self._stop.set()
        self._thread.join(timeout_s)
        return {
            "drained": not self._thread.is_alive(),
            "stats": self.stats.drain(),
            "status": self._stream.status(),
        }

    def pid(self) -> int:
        return os.getpid()
