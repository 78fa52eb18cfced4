"""Checks of a campaign's STAC collection, local or on S3: it validates (pystac and stac-validator,
core schemas, offline), lists one item per downloaded job, and every link and asset href resolves
to a file of the size the item says."""
from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any, Dict, List, Optional

import fsspec
import pystac
import pystac.validation
from pystac.validation import local_validator

from tasks.results.items import FILE_EXTENSION
from tasks.results.storage import fs_options, is_remote

SCHEMA_DIR = Path(local_validator.__file__).parent / "jsonschemas"


def schema_map() -> Dict[str, str]:
    """The remote STAC/GeoJSON schema URLs -> the copies pystac ships (this machine is offline)."""
    version = local_validator.VERSION
    out = {}
    for name in ("item", "catalog", "collection"):
        out[f"https://schemas.stacspec.org/v{version}/{name}-spec/json-schema/{name}.json"] = \
            str(SCHEMA_DIR / f"stac-spec/v{version}/{name}.json")
    for name in ("bands", "basics", "common", "data-values", "datetime", "instrument", "licensing", "provider"):
        out[f"https://schemas.stacspec.org/v{version}/item-spec/json-schema/{name}.json"] = \
            str(SCHEMA_DIR / f"stac-spec/v{version}/{name}.json")
    for name in ("Feature", "Geometry"):
        out[f"https://geojson.org/schema/{name}.json"] = str(SCHEMA_DIR / f"geojson/{name}.json")
    return out


def validate(document: Dict[str, Any]) -> None:
    """Both validators, core schemas (extension schemas would be fetched from the internet)."""
    from stac_validator.validate import StacValidate

    pystac.validation.validate_dict(document, extensions=[])
    validator = StacValidate(core=True, schema_map=schema_map())
    assert validator.validate_dict(document), validator.message


def join(base: str, href: str) -> str:
    """`href` resolved against the document at `base` (a path or a URL)."""
    if "://" in href or href.startswith("/"):
        return href
    if "://" not in base:
        return str((Path(base).parent / href).resolve())
    scheme, rest = base.split("://", 1)
    return f"{scheme}://{posixpath.normpath(posixpath.join(posixpath.dirname(rest), href))}"


def _options(url: str) -> Dict[str, Any]:
    return fs_options(url) if is_remote(url) else {}


def read_json(url: str) -> Dict[str, Any]:
    with fsspec.open(url, "rb", **_options(url)) as f:
        return json.loads(f.read())


def size_of(url: str) -> Optional[int]:
    fs, path = fsspec.core.url_to_fs(url, **_options(url))
    try:
        return int(fs.info(path)["size"])
    except FileNotFoundError:
        return None


def check_collection(collection_url: str, downloaded_job_ids: List[str], remote: bool = False) -> Dict[str, Any]:
    """Everything a reader relies on; returns the collection and its items."""
    collection = read_json(collection_url)
    validate(collection)
    assert collection["type"] == "Collection"
    item_links = [link for link in collection["links"] if link["rel"] == "item"]
    assert all(not link["href"].startswith(("/", "s3:", "file:")) for link in collection["links"]), "links are relative"
    items = [read_json(join(collection_url, link["href"])) for link in item_links]
    assert sorted(item["id"] for item in items) == sorted(downloaded_job_ids)
    west, south, east, north = collection["extent"]["spatial"]["bbox"][0]
    start, end = collection["extent"]["temporal"]["interval"][0]
    for link, item in zip(item_links, items):
        validate(item)
        item_url = join(collection_url, link["href"])
        assert FILE_EXTENSION in item["stac_extensions"]
        assert item["collection"] == collection["id"]
        for rel in ("collection", "root", "parent"):
            target = next(lk["href"] for lk in item["links"] if lk["rel"] == rel)
            assert join(item_url, target) == collection_url, (rel, target)
        if item.get("bbox"):
            b = item["bbox"]
            assert west <= b[0] and south <= b[1] and b[2] <= east and b[3] <= north, (b, collection["extent"])
        props = item["properties"]
        first = props.get("start_datetime") or props["datetime"]
        last = props.get("end_datetime") or props["datetime"]
        assert start <= first and last <= end, (first, last, start, end)
        assert props["openeo:job_id"] == item["id"] and props["openeo:backend"] and props["openeo:attempt"] >= 1
        for key, asset in item["assets"].items():
            href = asset["href"]
            assert href.startswith("s3://") if remote else href.startswith("./"), href
            assert asset["type"] and asset["roles"]
            assert key in collection["item_assets"]
            assert size_of(join(item_url, href)) == asset["file:size"], (item["id"], key)
    return {"collection": collection, "items": items}


def open_with_pystac(collection_url: str) -> List[pystac.Item]:
    """As a user would: pystac walks the links (fsspec StacIO on object storage)."""
    from tasks.results.stacio import FsspecStacIO

    collection = pystac.Collection.from_file(collection_url, stac_io=FsspecStacIO())
    return list(collection.get_items())
