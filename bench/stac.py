"""How long the campaign's STAC collection takes: adding one item, and building 10 000 from scratch.

    python bench/stac.py                 # 10 000 items in a temporary folder
    python bench/stac.py --items 2000 --s3   # on moto's S3 server on loopback instead

Prints, for N items: the download task's share per item (build the item with pystac, write its
file), the flow's share per item (add its summary to the collection) and one rewrite of
collection.json at N items (what the keeper does at most every 5 s), then a rebuild from scratch
(`tasks.results.rebuild`: read N item files, or rebuild N items from their folders, write the
collection and items.parquet).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.results.collection import CampaignCollection, write_collection  # noqa: E402
from tasks.results.items import build_item, item_file, job_folder, summary  # noqa: E402
from tasks.results.rebuild import complete, export_parquet  # noqa: E402
from tasks.results.storage import ResultsRoot  # noqa: E402


def footprint(i: int):
    west, south = 4.0 + (i % 100) * 0.01, 50.0 + (i // 100) * 0.01
    return {"geometry": {"type": "Polygon", "coordinates": [[[west, south], [west + 0.01, south],
                                                             [west + 0.01, south + 0.01], [west, south + 0.01],
                                                             [west, south]]]},
            "bbox": [west, south, west + 0.01, south + 0.01], "row": {"year": 2020 + i % 4},
            "provenance": {"openeo:job_id": f"j-{i:06d}", "openeo:backend": "cdse", "openeo:campaign": "bench",
                           "openeo:row": i, "openeo:tile_id": f"T{i:06d}", "openeo:year": 2020 + i % 4,
                           "openeo:attempt": 1}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--s3", action="store_true", help="on moto's S3 server (loopback) instead of a folder")
    args = parser.parse_args()
    n = args.items
    with ExitStack() as stack:
        if args.s3:
            from tests.s3_server import moto_s3

            env = stack.enter_context(moto_s3())
            url = f"s3://{env['bucket']}/bench"
        else:
            url = stack.enter_context(tempfile.TemporaryDirectory(prefix="stac-bench-"))
        root = ResultsRoot(url)
        results = {"properties": {"license": "CC-BY-4.0",
                                  "providers": [{"name": "backend", "roles": ["host"]}]}}
        for i in range(n):  # the downloaded results themselves (not timed)
            root.write_bytes(f"{job_folder(f'j-{i:06d}')}/openEO.tif", b"x" * 64)
        t0 = time.perf_counter()
        summaries = []
        for i in range(n):
            job = f"j-{i:06d}"
            href = "./openEO.tif" if root.local else root.url_of(f"{job_folder(job)}/openEO.tif")
            item = build_item(job, "bench", footprint(i), results, {"openEO.tif": {"size": 64, "roles": ["data"]}},
                              {"openEO.tif": href})
            root.write_json(item_file(job), item)
            summaries.append(summary(item, item_file(job)))
        task_share = (time.perf_counter() - t0) / n
        collection = CampaignCollection("bench", "benchmark")
        t0 = time.perf_counter()
        for s in summaries:
            collection.add(s)
        flow_share = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        write_collection(root, collection)
        rewrite = time.perf_counter() - t0
        size = root.size("collection.json")

        footprints = {f"j-{i:06d}": footprint(i) for i in range(n)}
        t0 = time.perf_counter()
        fresh = CampaignCollection("bench", "benchmark")
        complete(root, fresh, footprints)
        write_collection(root, fresh)
        from_items = time.perf_counter() - t0
        t0 = time.perf_counter()
        export_parquet(root, fresh, min_items=1)
        parquet = time.perf_counter() - t0
        for i in range(n):
            root.remove(item_file(f"j-{i:06d}"))
        t0 = time.perf_counter()
        rebuilt = CampaignCollection("bench", "benchmark")
        _, count = complete(root, rebuilt, footprints)
        write_collection(root, rebuilt)
        from_files = time.perf_counter() - t0
        assert len(fresh) == len(rebuilt) == count == n

    where = "moto S3 (loopback)" if args.s3 else "local folder"
    print(f"{n} items, {where}")
    print(f"add one item: task (build with pystac + write item file) {task_share * 1e3:.2f} ms, "
          f"flow (add to the collection) {flow_share * 1e6:.1f} us")
    print(f"rewrite collection.json at {n} items: {rewrite * 1e3:.0f} ms ({size / 1e6:.2f} MB)")
    print(f"build {n} items from scratch: from item files {from_items:.1f} s, rebuilding every item from "
          f"its folder {from_files:.1f} s, items.parquet {parquet:.1f} s")


if __name__ == "__main__":
    main()
