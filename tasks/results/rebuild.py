"""Completing and rebuilding a campaign's collection from its job DB and its results.

`complete` adds the downloaded jobs a collection misses: their item files if present, else items
rebuilt from the files in `job_<id>/` (results downloaded by a run that was killed before its
collection was written, or by openeo's manager). `rebuild` makes the whole collection anew from a
job DB (`python -m jobdb stac`). `export_parquet` writes `items.parquet` (stac-geoparquet) for
large collections, where reading 10 000 JSON files is slow for any client.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, Mapping, Optional, Tuple

from jobdb.status import FINISHED, RESULTS_DOWNLOADED
from tasks.results.collection import ITEMS_PARQUET, CampaignCollection, write_collection
from tasks.results.footprints import Footprints, campaign_id
from tasks.results.items import COLLECTION_FILE, JOB_METADATA_ASSET, build_item, item_file, job_folder, summary
from tasks.results.storage import ResultsRoot

PARQUET_MIN_ITEMS = 10_000


def description_of(collection_id: str, job_db: str) -> str:
    return (f"Results of the openEO batch jobs of campaign {collection_id} (job DB {job_db}): "
            "one item per job, with its assets and where it came from.")


def item_from_files(root: ResultsRoot, job_id: str, footprint: Mapping[str, Any], collection_id: str) -> Optional[Dict[str, Any]]:
    """An item for a job whose results are in `job_<id>/` but whose item file is missing; None if
    the folder holds no result file. Sizes are what is stored; types are guessed from names."""
    folder = job_folder(job_id)
    own = {f"job_{job_id}_item.json", f"job_{job_id}_errors.json", f"job_{job_id}.json"}
    files = root.files(folder)
    data = {name: size for name, size in files.items() if name not in own and not name.startswith(".")}
    if not data:
        return None
    stored: Dict[str, Dict[str, Any]] = {name: {"size": size} for name, size in data.items()}
    hrefs = {name: name for name in data}
    document: Dict[str, Any] = {"properties": {}}
    if f"job_{job_id}.json" in files:
        try:
            metadata = root.read_json(f"{folder}/job_{job_id}.json")
            document["properties"] = {k: metadata[k] for k in ("created", "updated") if metadata.get(k)}
            document["properties"]["datetime"] = metadata.get("updated") or metadata.get("created")
        except (ValueError, FileNotFoundError):
            pass
        stored[JOB_METADATA_ASSET] = {"size": files[f"job_{job_id}.json"], "type": "application/json",
                                      "roles": ["metadata"], "title": "openEO batch job metadata"}
        hrefs[JOB_METADATA_ASSET] = f"job_{job_id}.json"
    hrefs = {k: f"./{v}" if root.local else root.url_of(f"{folder}/{v}") for k, v in hrefs.items()}
    item = build_item(job_id, collection_id, footprint, document, stored, hrefs)
    root.write_json(item_file(job_id), item)
    return item


def complete(root: ResultsRoot, collection: CampaignCollection, footprints: Mapping[str, Mapping[str, Any]]) -> Tuple[int, int]:
    """Add every job of `footprints` ({job id: footprint}) the collection misses; (added, rebuilt)."""
    missing = [job_id for job_id in footprints if job_id not in collection.hrefs]
    found = root.read_many([item_file(job_id) for job_id in missing])
    added = rebuilt = 0
    for job_id in missing:
        item = None
        if item_file(job_id) in found:
            try:
                item = json.loads(found[item_file(job_id)])
            except ValueError:
                item = None
        if item is None:
            item = item_from_files(root, job_id, footprints[job_id], collection.id)
            rebuilt += item is not None
        if item is not None:
            added += collection.add(summary(item, item_file(job_id)))
    return added, rebuilt


def export_parquet(root: ResultsRoot, collection: CampaignCollection, min_items: int = PARQUET_MIN_ITEMS) -> bool:
    """`items.parquet` beside the collection (asset hrefs made absolute), once it has `min_items` items.
    It holds the items with a footprint: GeoParquet needs a geometry per row (stac-geoparquet fails on
    a null one), and an item without one cannot be found by place anyway (collection.json lists all).
    No item with a footprint (a job DB without geometry): no file."""
    if len(collection) < min_items:
        return False
    import stac_geoparquet.arrow as sga

    data = root.read_many(sorted(collection.hrefs.values()))
    items = []
    for relative, raw in data.items():
        item = json.loads(raw)
        if not item.get("geometry"):
            continue
        folder = relative.rsplit("/", 1)[0]
        for asset in item.get("assets", {}).values():
            if str(asset.get("href", "")).startswith("./"):
                asset["href"] = root.url_of(f"{folder}/{asset['href'][2:]}")
        item["links"] = []
        items.append(item)
    if not items:
        return False
    fd, tmp = tempfile.mkstemp(suffix=".parquet")
    os.close(fd)
    try:
        sga.to_parquet(sga.parse_stac_items_to_arrow(items), tmp)
        with open(tmp, "rb") as f:
            root.write_bytes(ITEMS_PARQUET, f.read())
    finally:
        os.unlink(tmp)
    collection.parquet = True
    return True


def downloaded_jobs(df, footprints: Footprints) -> Dict[str, Dict[str, Any]]:
    """{job id: footprint} of the rows whose results are downloaded."""
    if "results_status" not in df.columns:
        return {}
    done = df[(df["status"] == FINISHED) & (df["results_status"] == RESULTS_DOWNLOADED) & df["id"].notna()]
    return {str(values["id"]): footprints.of(int(i), values) for i, values in done.to_dict("index").items()}


def campaign_rows(job_db: str, campaign: Optional[str]):
    """(the campaign's rows, its name, its default results root) for a job DB file or a SQL URL.
    A SQL campaign's name is the collection id (a file has none: its stem is)."""
    from jobdb.location import is_sql

    if is_sql(job_db):
        from jobdb.sql.campaign import SqlDatabase
        from jobdb.sql.store import default_results_root

        db = SqlDatabase.open(job_db)
        name = db.resolve_campaign(campaign)
        return db.export(name), name, str(default_results_root(name))
    from jobdb import JobDbPaths, load_job_db

    return load_job_db(job_db).df, campaign, str(JobDbPaths.of(job_db).default_results_root)


def rebuild(job_db: str, root_dir: Optional[str] = None, campaign: Optional[str] = None,
            parquet_min_items: int = PARQUET_MIN_ITEMS) -> Dict[str, Any]:
    """Write the collection of a campaign anew from its job DB and results; returns what was done."""
    df, campaign, default_root = campaign_rows(job_db, campaign)
    root = ResultsRoot(root_dir or default_root)
    footprints = Footprints(df, str(job_db), campaign)
    collection = CampaignCollection(footprints.collection_id, description_of(footprints.collection_id, footprints.job_db))
    jobs = downloaded_jobs(df, footprints)
    added, rebuilt = complete(root, collection, jobs)
    export_parquet(root, collection, parquet_min_items)
    write_collection(root, collection)
    return {"collection": root.url_of(COLLECTION_FILE), "items": len(collection), "rebuilt_items": rebuilt,
            "downloaded_rows": len(jobs), "missing": sorted(set(jobs) - set(collection.hrefs)),
            "parquet": root.url_of(ITEMS_PARQUET) if collection.parquet else None, "id": campaign_id(str(job_db), campaign)}
