"""The offline part of the HTML tile map: the tiles as an inline SVG (worst status colour, a tooltip
per tile, a legend), shown when Leaflet could not be loaded from its CDN (no internet, a firewall).

folium's page takes Leaflet, jQuery and Bootstrap from CDNs and no installed package ships them,
so the interactive map is blank offline; this rendering needs nothing from the network and is
written into the same page. (Online the interactive map shows and this stays hidden.)
"""
from __future__ import annotations

import html
import math
from typing import Mapping

WIDTH = 900  # SVG width in px; the height follows the tiles' extent

# Runs after folium's scripts: `L` exists only if Leaflet was loaded.
SHOW_IF_OFFLINE = """<script>
if (typeof L === "undefined") {
  document.getElementById("offline-tile-map").style.display = "block";
  for (const el of document.querySelectorAll(".folium-map")) { el.style.display = "none"; }
}
</script>"""


def offline_svg_block(overview, colours: Mapping[str, str], title: str = "") -> str:
    """A hidden `<div id="offline-tile-map">` with the tiles of `overview` (EPSG:4326 geometries,
    columns tile, status, rows, colour) as SVG, plus the script that shows it when offline."""
    import shapely

    minx, miny, maxx, maxy = overview.total_bounds
    # Equirectangular with the mid-latitude's scale: tiles keep their shape at these extents.
    x_scale = math.cos(math.radians((miny + maxy) / 2.0)) or 1.0
    span_x = max((maxx - minx) * x_scale, 1e-9)
    span_y = max(maxy - miny, 1e-9)
    height = max(120, int(WIDTH * span_y / span_x))
    margin = 10

    def point(x: float, y: float) -> str:
        px = margin + (x - minx) * x_scale / span_x * (WIDTH - 2 * margin)
        py = margin + (maxy - y) / span_y * (height - 2 * margin)
        return f"{px:.1f},{py:.1f}"

    shapes = []
    for tile, status, rows, colour, geometry in zip(overview["tile"], overview["status"], overview["rows"],
                                                    overview["colour"], overview.geometry):
        tip = html.escape(f"{tile}: {status} ({rows} row{'s' if rows != 1 else ''})")
        for part in shapely.get_parts(geometry):
            if part.geom_type == "Polygon":
                ring = " ".join(point(x, y) for x, y in part.exterior.coords)
                shapes.append(f'<polygon points="{ring}" fill="{colour}" fill-opacity="0.8" stroke="white" '
                              f'stroke-width="0.5"><title>{tip}</title></polygon>')
            else:
                x, y = point(part.centroid.x, part.centroid.y).split(",")
                shapes.append(f'<circle cx="{x}" cy="{y}" r="3" fill="{colour}"><title>{tip}</title></circle>')
    present = [s for s in colours if s in set(overview["status"])]
    legend = " ".join(f'<span style="display:inline-block;margin-right:12px"><span style="display:inline-block;'
                      f'width:12px;height:12px;background:{colours[s]};margin-right:4px"></span>{html.escape(s)}</span>'
                      for s in present)
    return (f'<div id="offline-tile-map" style="display:none;font-family:sans-serif;margin:12px">'
            f"<h3>{html.escape(title or 'tiles')}: worst status per tile</h3>"
            f"<p>Shown without the interactive map, which needs Leaflet from the internet. "
            f"Hover a tile for its status.</p><div>{legend}</div>"
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" style="background:#f7f7f7">{"".join(shapes)}</svg></div>'
            + SHOW_IF_OFFLINE)
