"""Commands on a job DB:

- `python -m jobdb copy SRC DST [--campaign NAME]`: copy a campaign between a CSV/Parquet/GeoParquet
  file (local or fsspec URL) and a SQL URL, in either direction (jobdb/copy.py);
- `python -m jobdb stac JOB_DB [--root-dir DIR|URL] [--campaign NAME]`: write the campaign's STAC
  collection anew from the DB and the results (every downloaded job gets its item, rebuilt from its
  files if its item file is missing; items.parquet from 10 000 items on), and print where it is.
  Exit 1 when downloaded jobs could not be listed.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobdb", description="Job DB tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    from jobdb.copy import __doc__ as copy_doc

    cp = commands.add_parser("copy", help="copy a campaign between a CSV/Parquet/GeoParquet file and a SQL URL",
                             description=copy_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    cp.add_argument("src", metavar="SRC")
    cp.add_argument("dst", metavar="DST")
    cp.add_argument("--campaign", help="campaign name inside the SQL database")
    cp.add_argument("--force", action="store_true", help="replace an existing destination file")
    stac = commands.add_parser("stac", aliases=["rebuild-collection"],
                               help="write the campaign's STAC collection anew from the job DB and its results")
    stac.add_argument("job_db", help="a job DB file, or a SQL URL (postgresql://…, sqlite:///…)")
    stac.add_argument("--root-dir", help="where the results are: a folder or an fsspec URL (default: beside "
                                         "a DB file; ./CAMPAIGN/ for a SQL campaign)")
    stac.add_argument("--campaign", help="a SQL job DB: the campaign (its name is the collection id; may be left "
                                         "out when the database holds one); a file: the collection id "
                                         "(default: the file's stem)")
    stac.add_argument("--json", action="store_true", help="print the outcome as JSON")
    args = parser.parse_args(argv)
    return copy_command(args) if args.command == "copy" else stac_command(args)


def copy_command(args: argparse.Namespace) -> int:
    from jobdb.copy import copy
    from jobdb.schema import JobDbError

    try:
        print(copy(args.src, args.dst, args.campaign, args.force))
    except (JobDbError, OSError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    return 0


def stac_command(args: argparse.Namespace) -> int:
    from tasks.results.rebuild import rebuild
    from jobdb import JobDbError

    try:
        outcome = rebuild(args.job_db, args.root_dir, args.campaign)
    except (JobDbError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(outcome, indent=2))
    else:
        print(f"{outcome['collection']}: {outcome['items']} items for {outcome['downloaded_rows']} downloaded jobs "
              f"({outcome['rebuilt_items']} rebuilt from their files)"
              + (f"; {outcome['parquet']}" if outcome["parquet"] else ""))
        if outcome["missing"]:
            print(f"no result files for {len(outcome['missing'])} jobs: {', '.join(outcome['missing'][:10])}",
                  file=sys.stderr)
    return 1 if outcome["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
