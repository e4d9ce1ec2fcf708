"""A StreamWorker in a process of its own, with one fault injected: the model
kills the process (os._exit, like a native crash) whenever a batch holds a
record whose id starts with "poison". The test restarts it the way Ray would.

    python -m tests.actors.crash_worker SETTINGS_JSON
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading

from actors.stream import StreamWorker
from services.config import KafkaSettings, Topics, WorkerSettings
from services.fetch import FetchPolicy

POISON_EXIT = 3


def main() -> None:
    cfg = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = WorkerSettings(
        kafka=KafkaSettings(bootstrap_servers=cfg["bootstrap"], group_id=cfg["group"]),
        topics=Topics(**cfg["topics"]),
        registry=cfg["registry"],
        state_dir=cfg["state_dir"],
        fetch=FetchPolicy(allowed_networks=("127.0.0.1/32",)),
        partitions=tuple(cfg["partitions"]),
        max_batch=4,
        commit_interval_s=0.5,
    )
    worker = StreamWorker(settings, worker_id="crash-test")
    real_score = worker._score

    def score_or_die(jobs):
        if any(j.record.id.startswith("poison") for j in jobs):
            logging.getLogger("crash_worker").warning("poison in a batch of %d: dying", len(jobs))
            os._exit(POISON_EXIT)
        return real_score(jobs)

    worker._score = score_or_die
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker.run(stop)


if __name__ == "__main__":
    main()
