"""What a run leaves for people: the progress and summary artifacts, the end-of-run report, and the
tile maps (PNG, HTML, with an offline SVG fallback)."""
