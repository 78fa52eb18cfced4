"""pystac reading and writing through fsspec, so a collection on object storage opens like a local one:

    import pystac
    from campaign_results.stacio import FsspecStacIO
    collection = pystac.Collection.from_file("s3://bucket/campaign/collection.json", stac_io=FsspecStacIO())
    items = list(collection.get_items())
"""
from __future__ import annotations

from typing import Any

import fsspec
import pystac
from pystac.stac_io import DefaultStacIO


class FsspecStacIO(DefaultStacIO):
    def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
        href = pystac.utils.make_posix_style(source) if not isinstance(source, str) else source
        with fsspec.open(href, "r", encoding="utf-8") as f:
            return f.read()

    def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
        with fsspec.open(str(dest), "w", encoding="utf-8") as f:
            f.write(txt)
