"""The recall a shard actually delivers: a small sampled share of live index searches is re-run exactly,
in a background thread at the lowest CPU priority, against the same items the search was allowed to
return (same filter, same state); recall@k of each sample is kept per collection, exported
(`semsearch_indexer_estimated_recall`) and fed back into the depth rule: while live queries get less
than the recall they asked for, the collection's eps is raised (eps_extra); once they get more, it
comes back down."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from services.indexer import metrics, search_ops

log = logging.getLogger(__name__)

# Samples kept per collection for the published estimate and for the feedback.
WINDOW = 200
# The feedback looks at the last FEEDBACK_SAMPLES samples and acts at most every FEEDBACK_SAMPLES.
FEEDBACK_SAMPLES = 20
MAX_EPS_EXTRA = 10.0


@dataclass
class Sample:
    collection: object  # the Collection (for its name, metric, budget and eps_extra)
    query: np.ndarray  # [d]
    served: np.ndarray  # slots [k] the search returned (-1 = none)
    packed: np.ndarray  # the allowed slots, as the search saw them
    rows: int
    store: object  # the VectorStore the search read
    target: float
    adaptive: bool  # its depth came from the rule (the feedback adjusts only those)


class RecallMonitor:
    def __init__(self, rate: float = 0.01, max_per_second: float = 2.0, seed: int = 0) -> None:
        self.rate = rate
        self.max_per_second = max_per_second
        self._rng = np.random.default_rng(seed)
        self._queue: collections.deque[Sample] = collections.deque(maxlen=64)
        self._cond = threading.Condition()
        self._tokens = max_per_second
        self._refilled = time.monotonic()
        self._results: dict[str, collections.deque[tuple[float, float]]] = {}
        self._feedback: dict[str, collections.deque[tuple[float, float]]] = {}
        self._since_feedback: dict[str, int] = {}
        self._stopped = False
        self._thread: threading.Thread | None = None

    # --- search side (called from search threads) -------------------------------------------------------

    def offer(self, collection, queries: np.ndarray, outcome, target: float) -> None:
        """Maybe keep some queries of an index search for an exact re-run (rate, capped per second)."""
        if self.rate <= 0:
            return
        picked = np.nonzero(self._rng.random(len(queries)) < self.rate)[0]
        if not len(picked):
            return
        with self._cond:
            now = time.monotonic()
            self._tokens = min(
                self.max_per_second, self._tokens + (now - self._refilled) * self.max_per_second
            )
            self._refilled = now
            for i in picked:
                if self._tokens < 1:
                    break
                self._tokens -= 1
                sample = Sample(collection, queries[i].copy(), outcome.slots[i].copy(), outcome.packed,
                                outcome.rows, outcome.store, target, outcome.adaptive)  # fmt: skip
                self._queue.append(sample)
            self._cond.notify()

    # --- background side ------------------------------------------------------------------------------

    def start(self) -> RecallMonitor:
        self._thread = threading.Thread(target=self._run, name="recall-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux)
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopped)
                if self._stopped:
                    return
                sample = self._queue.popleft()
            try:
                self.measure(sample)
            except Exception:
                log.exception("recall monitor: a sampled query could not be re-run")

    def measure(self, sample: Sample) -> float:
        """Re-run one sample exactly, record its recall@k and adjust the collection's depth."""
        c = sample.collection
        if c.dropped:
            return 1.0
        k = len(sample.served)
        allowed = np.unpackbits(sample.packed, bitorder="little")[: sample.rows].astype(bool)
        fetch = lambda s, e: np.asarray(sample.store.view(s, e), dtype=np.float32)  # noqa: E731
        _, truth = search_ops.exact_topk(
            sample.query[None, :], fetch, sample.rows, allowed, k, c.search_budget_bytes, c.config.faiss_l2
        )
        wanted = set(truth[0][truth[0] >= 0].tolist())
        recall = len(wanted & set(sample.served.tolist())) / len(wanted) if wanted else 1.0
        self.record(c, recall, sample.target, sample.adaptive)
        return recall

    def record(self, collection, recall: float, target: float, adaptive: bool = True) -> None:
        """One sample's recall: into the published estimate; and, for searches whose depth the rule
        chose, into the feedback (a search with a fixed nprobe got what it asked for)."""
        name = collection.name
        results = self._results.setdefault(name, collections.deque(maxlen=WINDOW))
        results.append((recall, target))
        metrics.RECALL_SAMPLES.labels(name).inc()
        metrics.ESTIMATED_RECALL.labels(name).set(float(np.mean([r for r, _ in results])))
        if not adaptive:
            return
        feedback = self._feedback.setdefault(name, collections.deque(maxlen=FEEDBACK_SAMPLES))
        feedback.append((recall, target))
        self._since_feedback[name] = self._since_feedback.get(name, 0) + 1
        if self._since_feedback[name] < FEEDBACK_SAMPLES or len(feedback) < FEEDBACK_SAMPLES:
            return
        self._since_feedback[name] = 0
        recent = list(feedback)
        got, asked = np.mean([r for r, _ in recent]), np.mean([t for _, t in recent])
        extra = collection.eps_extra
        if got < asked - 0.01:
            extra = min(MAX_EPS_EXTRA, max(0.05, extra * 1.5))
        elif got > asked + 0.02 and extra > 0:
            extra = extra * 0.7 if extra * 0.7 >= 0.01 else 0.0
        if extra != collection.eps_extra:
            log.info("collection %s: live recall %.3f for a target of %.3f: eps extra %.3f -> %.3f",
                     name, got, asked, collection.eps_extra, extra)  # fmt: skip
            collection.eps_extra = extra
            metrics.EPS_EXTRA.labels(name).set(extra)

    def estimate(self, name: str) -> tuple[float, int]:
        """(mean recall@k of the last samples, how many) of a collection."""
        results = self._results.get(name)
        return (float(np.mean([r for r, _ in results])), len(results)) if results else (0.0, 0)

    def forget(self, name: str) -> None:
        self._results.pop(name, None)
        self._feedback.pop(name, None)
        self._since_feedback.pop(name, None)
