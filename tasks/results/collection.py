"""The campaign's STAC Collection (`collection.json` under the results root), built with pystac.

It holds what a reader needs without opening every item: one `item` link per downloaded job
(relative: `./job_<id>/job_<id>_item.json`), the union of the items' footprints and periods as
its extent, `item_assets` (the kinds of assets its items carry), a license and the providers the
backends named (license `other` when none or several were given). It is rewritten whole and
atomically (storage.py), so a reader or a killed writer never sees half of it.

Why not `pystac.Collection.save()`: it rewrites every item each time, O(items) writes per update
on object storage; here the items are written once, by the download task, and only this one
document is rewritten.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, Mapping, Optional

import pystac

from tasks.results.items import COLLECTION_FILE
from tasks.results.storage import ResultsRoot

ITEMS_PARQUET = "items.parquet"
WORLD = [-180.0, -90.0, 180.0, 90.0]


def _when(value: Optional[str]) -> Optional[datetime]:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


class CampaignCollection:
    """The collection's state: add item summaries (tasks.results.items.summary), then `to_dict()`."""

    def __init__(self, collection_id: str, description: str, title: Optional[str] = None):
        self.id = collection_id
        self.description = description
        self.title = title or f"openEO results: {collection_id}"
        self.hrefs: Dict[str, str] = {}  # item id -> href relative to the collection
        self.bbox: Optional[List[float]] = None
        self.start: Optional[datetime] = None
        self.end: Optional[datetime] = None
        self.item_assets: Dict[str, Dict[str, Any]] = {}
        self.licenses: set = set()
        self.providers: Dict[str, Dict[str, Any]] = {}
        self.parquet = False

    def __len__(self) -> int:
        return len(self.hrefs)

    def add(self, item: Mapping[str, Any]) -> bool:
        """Take in one item summary; False if it was there already."""
        new = item["id"] not in self.hrefs
        self.hrefs[item["id"]] = item["href"]
        box = item.get("bbox")
        if box:
            box = [float(v) for v in (box[:2] + box[-2:] if len(box) == 6 else box)]
            self.bbox = box if self.bbox is None else [min(self.bbox[0], box[0]), min(self.bbox[1], box[1]),
                                                       max(self.bbox[2], box[2]), max(self.bbox[3], box[3])]
        for value, earlier in ((_when(item.get("start")), True), (_when(item.get("end")), False)):
            if value is None:
                continue
            if earlier:
                self.start = value if self.start is None else min(self.start, value)
            else:
                self.end = value if self.end is None else max(self.end, value)
        for key, asset in (item.get("assets") or {}).items():
            self.item_assets.setdefault(key, dict(asset))
        if item.get("license"):
            self.licenses.add(item["license"])
        for provider in item.get("providers") or []:
            if isinstance(provider, Mapping) and provider.get("name"):
                self.providers.setdefault(provider["name"], dict(provider))
        return new

    @property
    def license(self) -> str:
        return next(iter(self.licenses)) if len(self.licenses) == 1 else "other"

    def to_dict(self) -> Dict[str, Any]:
        collection = pystac.Collection(
            id=self.id, description=self.description, title=self.title, license=self.license,
            extent=pystac.Extent(pystac.SpatialExtent([self.bbox or WORLD]),
                                 pystac.TemporalExtent([[self.start, self.end]])),
            providers=[pystac.Provider.from_dict(p) for p in self.providers.values()] or None,
        )
        collection.item_assets = {k: pystac.ItemAssetDefinition.create(
            title=a.get("title"), description=None, media_type=a.get("type"), roles=a.get("roles"))
            for k, a in sorted(self.item_assets.items())}
        collection.add_link(pystac.Link(pystac.RelType.ROOT, f"./{COLLECTION_FILE}", media_type=pystac.MediaType.JSON,
                                        title=self.title))
        for item_id in sorted(self.hrefs):
            collection.add_link(pystac.Link(pystac.RelType.ITEM, f"./{self.hrefs[item_id]}",
                                            media_type=pystac.MediaType.GEOJSON))
        if self.parquet:
            collection.add_asset("geoparquet-items", pystac.Asset(
                f"./{ITEMS_PARQUET}", title="Every item of this collection as stac-geoparquet",
                media_type="application/vnd.apache.parquet", roles=["collection-mirror"]))
        return collection.to_dict(include_self_link=False, transform_hrefs=False)

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> "CampaignCollection":
        """The state of a collection.json written before (item links, extent, assets, license)."""
        out = cls(document["id"], document.get("description") or "", document.get("title"))
        for link in document.get("links") or []:
            if link.get("rel") == "item":
                href = str(link["href"]).removeprefix("./")
                out.hrefs[href.rsplit("/", 1)[-1].removesuffix("_item.json").removeprefix("job_")] = href
        extent = document.get("extent") or {}
        boxes = (extent.get("spatial") or {}).get("bbox") or []
        if boxes and out.hrefs and boxes[0] != WORLD:
            out.bbox = [float(v) for v in boxes[0]]
        interval = ((extent.get("temporal") or {}).get("interval") or [[None, None]])[0]
        out.start, out.end = _when(interval[0]), _when(interval[1])
        out.item_assets = {k: {f: v for f, v in a.items() if f in ("type", "roles", "title")}
                           for k, a in (document.get("item_assets") or {}).items()}
        if document.get("license") and document["license"] != "other":
            out.licenses.add(document["license"])
        out.providers = {p["name"]: dict(p) for p in document.get("providers") or [] if p.get("name")}
        out.parquet = "geoparquet-items" in (document.get("assets") or {})
        return out


def load_collection(root: ResultsRoot) -> Optional[CampaignCollection]:
    """The collection as last written under `root`, None if there is none (or it cannot be read)."""
    try:
        return CampaignCollection.from_dict(root.read_json(COLLECTION_FILE))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def write_collection(root: ResultsRoot, collection: CampaignCollection) -> None:
    root.write_json(COLLECTION_FILE, collection.to_dict(), indent=1)


def add_all(collection: CampaignCollection, items: Iterable[Mapping[str, Any]]) -> int:
    return sum(collection.add(item) for item in items)
