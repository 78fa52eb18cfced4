"""The results side of one flow run: where results go, what each item takes from its row, and
the collection kept up to date as downloads complete (the flow's glue to this package)."""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Mapping, Optional

import pandas as pd

from tasks.results.catalog import CatalogKeeper
from tasks.results.footprints import Footprints
from tasks.results.rebuild import downloaded_jobs
from tasks.results.storage import ResultsRoot


class RunResults:
    def __init__(self, root_url: str, dataframe: Callable[[], pd.DataFrame], row: Callable[[int], Mapping[str, Any]],
                 job_db: str, logger: Optional[logging.Logger] = None, campaign: Optional[str] = None):
        self.root = ResultsRoot(root_url)
        self._row = row
        self._dataframe = dataframe
        self.footprints = Footprints(dataframe(), str(job_db), campaign)
        self.collection_id = self.footprints.collection_id
        self.keeper = CatalogKeeper(root_url, self.collection_id, self.footprints.job_db, logger)

    def start(self) -> None:
        """Start the collection writer, which first lists what earlier runs downloaded and it misses."""
        self.keeper.start(downloaded_jobs(self._dataframe(), self.footprints))

    def footprint(self, row: int) -> Dict[str, Any]:
        return self.footprints.of(row, self._row(row))

    def on_downloaded(self, items: Mapping[int, Mapping[str, Any]]) -> None:
        self.keeper.add(items.values())

    def close(self) -> None:
        self.keeper.close()

    def where(self) -> Dict[str, str]:
        """For the stats, the summary artifact and the report: the real locations (paths or URLs)."""
        return {"results": self.root.url_of(), "collection": self.keeper.url}
