"""From an area of interest to a job DB: the tile grid (`tile-area` flow in flows/tile_area.py)
and ready `start_job` callbacks for tile grids."""
