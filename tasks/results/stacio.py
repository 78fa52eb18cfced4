"""pystac reading and writing through fsspec, so a collection on object storage opens like a local one:

    import pystac
    from tasks.results.stacio import FsspecStacIO
    collection = pystac.Collection.from_file("s3://bucket/campaign/collection.json", stac_io=FsspecStacIO())
    items = list(collection.get_items())
"""
from __future__ import annotations

from typing import Any

import fsspec
import pystac
from pystac.stac_io import DefaultStacIO

from tasks.results.storage import fs_options, is_remote


class FsspecStacIO(DefaultStacIO):
    """`storage_options`: fsspec options for object storage (default: the AWS variables)."""

    def __init__(self, **storage_options: Any):
        super().__init__()
        self.storage_options = storage_options

    def _open(self, href: str, mode: str):
        options = fs_options(href, self.storage_options) if is_remote(href) else {}
        return fsspec.open(href, mode, encoding="utf-8", **options)

    def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
        href = source if isinstance(source, str) else pystac.utils.make_posix_style(source)
        with self._open(href, "r") as f:
            return f.read()

    def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
        with self._open(str(dest), "w") as f:
            f.write(txt)
