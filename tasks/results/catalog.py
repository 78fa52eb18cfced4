"""Keeps the campaign's collection up to date while a run downloads results.

The flow hands over the item summaries its download tasks reported (`add`, on the flow's thread:
a queue put, never I/O); one writer thread of its own adds them and rewrites `collection.json`
at most every `interval` seconds and once more at `close`, so the collection follows the
downloads (10 000 items: ~1 MB rewritten every few seconds, not once per item) and the cycle
never waits on object storage. One writer, so updates are applied in order, never concurrently.

Resume: before its first write the keeper completes the collection from the job DB (the
downloaded jobs it does not list, `rebuild.complete`), so what a killed run downloaded but did
not yet list is listed by the next run. A failed write is logged and tried again; it never
fails the run.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Dict, Iterable, Mapping, Optional

from tasks.results.collection import CampaignCollection, load_collection, write_collection
from tasks.results.items import COLLECTION_FILE
from tasks.results.rebuild import PARQUET_MIN_ITEMS, complete, description_of, export_parquet
from tasks.results.storage import ResultsRoot

WRITE_INTERVAL_SECONDS = 5.0
_CLOSE = object()


class CatalogKeeper:
    def __init__(self, root_url: str, collection_id: str, job_db: str, logger: Optional[logging.Logger] = None,
                 interval: float = WRITE_INTERVAL_SECONDS, parquet_min_items: int = PARQUET_MIN_ITEMS):
        self.root = ResultsRoot(root_url)
        self.collection_id = collection_id
        self.job_db = job_db
        self.logger = logger or logging.getLogger(__name__)
        self.interval = interval
        self.parquet_min_items = parquet_min_items
        self.url = self.root.url_of(COLLECTION_FILE)
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self.collection: Optional[CampaignCollection] = None
        self.added = 0  # items added by this run (completion included)
        self.writes = 0

    def start(self, downloaded: Mapping[str, Mapping[str, Any]]) -> None:
        """Start the writer; it first completes the collection with `downloaded` ({job id: footprint})."""
        self._thread = threading.Thread(target=self._run, args=(dict(downloaded),), name="stac-collection", daemon=True)
        self._thread.start()

    def add(self, items: Iterable[Mapping[str, Any]]) -> None:
        for item in items:
            self._queue.put(item)

    def close(self, timeout: float = 120.0) -> None:
        """Write what is left (and items.parquet for large collections), then stop the writer."""
        if self._thread is None:
            return
        self._queue.put(_CLOSE)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.logger.warning("STAC collection %s: still writing after %.0f s; the next run completes it",
                                self.url, timeout)

    # --- the writer thread ------------------------------------------------------------------
    def _run(self, downloaded: Dict[str, Mapping[str, Any]]) -> None:
        collection = load_collection(self.root) or CampaignCollection(
            self.collection_id, description_of(self.collection_id, self.job_db))
        self.collection = collection
        dirty = False
        try:
            added, rebuilt = complete(self.root, collection, downloaded)
            self.added += added
            dirty = added > 0 or self.writes == 0
            if added:
                self.logger.info("STAC collection %s: listed %d items a previous run downloaded (%d rebuilt from "
                                 "their files)", self.url, added, rebuilt)
        except Exception as exc:  # noqa: BLE001 - the catalogue must never fail the run
            self.logger.warning("STAC collection %s: could not be completed (%s); `python -m jobdb stac` "
                                "rebuilds it", self.url, exc)
        last_write = 0.0
        closing = False
        while True:
            wait = max(0.0, last_write + self.interval - time.monotonic()) if dirty else None
            try:
                entry = self._queue.get(timeout=wait)
            except queue.Empty:
                entry = None
            while entry is not None:
                if entry is _CLOSE:
                    closing = True
                else:
                    new = collection.add(entry)
                    self.added += new
                    dirty = dirty or new
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    entry = None
            if closing:
                dirty = self._export(collection) or dirty
            if dirty and (closing or time.monotonic() - last_write >= self.interval):
                dirty = not self._write(collection)
                last_write = time.monotonic()
            if closing:
                return

    def _write(self, collection: CampaignCollection) -> bool:
        try:
            write_collection(self.root, collection)
            self.writes += 1
            return True
        except Exception as exc:  # noqa: BLE001 - tried again at the next change; never fails the run
            self.logger.warning("STAC collection %s not written (%s); trying again later", self.url, exc)
            return False

    def _export(self, collection: CampaignCollection) -> bool:
        """items.parquet anew when this run added items (or there is none yet); True if written."""
        try:
            return bool(self.added or not collection.parquet) and export_parquet(
                self.root, collection, self.parquet_min_items)
        except Exception as exc:  # noqa: BLE001
            self.logger.warning("items.parquet not written (%s); `python -m jobdb stac` writes it", exc)
            return False
