"""One STAC Item per downloaded job (pystac), written beside the job's results.

Why one item per job and not per asset: a job is the unit a row produces, downloads and
resubmits; its assets (bands, tiles of one output, a metadata file) share one footprint, one
time range and one provenance, which is what an item is for. Clients (odc-stac, stackstac,
QGIS) then find the job's assets together under one id.

The item is `job_<id>/job_<id>_item.json`; its asset hrefs are relative (`./openEO.tif`) in a
local folder and absolute URLs (`s3://bucket/prefix/job_<id>/openEO.tif`) on object storage,
where GDAL, odc-stac and pystac read them with the same credentials as the flow.
"""
from __future__ import annotations

import mimetypes
from datetime import datetime, timezone
from typing import Any, Dict, Mapping, Optional, Tuple

import pystac

FILE_EXTENSION = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
PROJECTION_EXTENSION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
COLLECTION_FILE = "collection.json"
JOB_METADATA_ASSET = "openeo-job"


def job_folder(job_id: str) -> str:
    return f"job_{job_id}"


def item_file(job_id: str) -> str:
    """Where a job's item lives, relative to the results root."""
    return f"{job_folder(job_id)}/job_{job_id}_item.json"


def media_type(name: str, announced: Optional[str] = None) -> str:
    if announced:
        return announced
    if name.lower().endswith((".tif", ".tiff")):
        return pystac.MediaType.GEOTIFF
    if name.lower().endswith((".nc", ".nc4")):
        return "application/x-netcdf"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _iso(value: Any) -> Optional[datetime]:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def time_range(row: Mapping[str, Any], properties: Mapping[str, Any]) -> Tuple[Optional[datetime], Optional[datetime], Optional[datetime]]:
    """(datetime, start, end): what the backend says the data covers, else the row's period
    (`start_date`/`end_date` columns, else its `year`), else the backend's `datetime`."""
    start, end = _iso(properties.get("start_datetime")), _iso(properties.get("end_datetime"))
    if start and end:
        return None, start, end
    start, end = _iso(row.get("start_date")), _iso(row.get("end_date"))
    if start and end:
        return None, start, end
    year = row.get("year")
    if isinstance(year, (int, float)) and year == year:
        y = int(year)
        return None, datetime(y, 1, 1, tzinfo=timezone.utc), datetime(y, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    moment = _iso(properties.get("datetime")) or _iso(row.get("created")) or datetime.now(timezone.utc)
    return moment, None, None


def _projection(fields: Mapping[str, Any]) -> Dict[str, Any]:
    """proj:* fields as the projection extension v2 names them (v1's proj:epsg -> proj:code)."""
    out = {k: v for k, v in fields.items() if k.startswith("proj:") and k != "proj:epsg" and v is not None}
    epsg = fields.get("proj:epsg")
    if epsg is not None and "proj:code" not in out:
        out["proj:code"] = f"EPSG:{int(epsg)}"
    return out


def build_item(
    job_id: str,
    collection_id: str,
    footprint: Mapping[str, Any],
    results: Mapping[str, Any],
    stored: Mapping[str, Mapping[str, Any]],
    asset_href: Mapping[str, str],
) -> Dict[str, Any]:
    """The item of one job, as a dict ready to write.

    `footprint`: what the flow knows of the row (`geometry` GeoJSON + `bbox` in EPSG:4326, `row`
    values for the time range, `provenance` properties); `results`: the backend's results
    document (its geometry, bbox, time, proj:*, license and providers win over the row's);
    `stored`: {asset key: {"size", "type", "roles", "title", proj:*...}} of the files written;
    `asset_href`: {asset key: href} (relative locally, URLs on object storage).
    """
    properties = dict(results.get("properties") or {})
    geometry = results.get("geometry") or footprint.get("geometry")
    bbox = results.get("bbox") if results.get("geometry") else footprint.get("bbox")
    moment, start, end = time_range(footprint.get("row") or {}, properties)
    item = pystac.Item(
        id=job_id, geometry=geometry, bbox=list(bbox) if geometry and bbox else None, datetime=moment,
        start_datetime=start, end_datetime=end, collection=collection_id,
        properties={k: v for k, v in (footprint.get("provenance") or {}).items() if v is not None},
    )
    for key in ("created", "updated", "title", "description"):
        if properties.get(key):
            item.properties[key] = properties[key]
    licence = results.get("license") or properties.get("license")
    if licence:
        item.properties["license"] = licence
    providers = results.get("providers") or properties.get("providers")
    if providers:
        item.properties["providers"] = list(providers)
    item.properties.update(_projection(properties))
    uses_projection = any(k.startswith("proj:") for k in item.properties)
    for key, asset in stored.items():
        extra = {"file:size": int(asset["size"]), **_projection(asset)}
        uses_projection = uses_projection or any(k.startswith("proj:") for k in extra)
        item.add_asset(key, pystac.Asset(
            href=asset_href[key], media_type=media_type(key, asset.get("type")), title=asset.get("title") or key,
            roles=list(asset.get("roles") or ["data"]), extra_fields=extra))
    item.stac_extensions = [FILE_EXTENSION] + ([PROJECTION_EXTENSION] if uses_projection else [])
    parent = f"../{COLLECTION_FILE}"
    for rel in (pystac.RelType.COLLECTION, pystac.RelType.PARENT, pystac.RelType.ROOT):
        item.add_link(pystac.Link(rel, parent, media_type=pystac.MediaType.JSON))
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def summary(item: Mapping[str, Any], href: str) -> Dict[str, Any]:
    """What the collection needs of an item: its link, extent, asset kinds, license, providers."""
    properties = item.get("properties") or {}
    start = properties.get("start_datetime") or properties.get("datetime")
    end = properties.get("end_datetime") or properties.get("datetime")
    return {
        "id": item["id"], "href": href, "bbox": item.get("bbox"), "start": start, "end": end,
        "assets": {k: {f: a[f] for f in ("type", "roles", "title") if a.get(f)} for k, a in (item.get("assets") or {}).items()},
        "license": properties.get("license"), "providers": properties.get("providers") or [],
    }
