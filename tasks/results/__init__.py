"""Where a campaign's results go and what describes them.

`storage`: the results root, a local folder or any fsspec URL (`s3://`, `gs://`, `file://`), with
atomic, size-checked writes; `credentials`: S3 settings from the AWS variables or a prefect-aws
block; `items` / `collection` / `catalog`: the campaign's STAC collection (pystac), one item per
downloaded job, kept up to date by the flow and rebuilt from a job DB by `python -m jobdb stac`.
"""
