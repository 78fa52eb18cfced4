"""Static openEO metadata: capabilities, collections, processes, file formats."""
from __future__ import annotations

from typing import Any, Dict, List

API_VERSION = "1.2.0"
BACKEND_VERSION = "0.1.0-sim"
STAC_VERSION = "1.0.0"

# (path, methods) as listed in the capabilities document (openEO path-parameter style).
ENDPOINTS: List[Dict[str, Any]] = [
    {"path": "/me", "methods": ["GET"]},
    {"path": "/collections", "methods": ["GET"]},
    {"path": "/collections/{collection_id}", "methods": ["GET"]},
    {"path": "/processes", "methods": ["GET"]},
    {"path": "/file_formats", "methods": ["GET"]},
    {"path": "/jobs", "methods": ["GET", "POST"]},
    {"path": "/jobs/{job_id}", "methods": ["GET", "PATCH", "DELETE"]},
    {"path": "/jobs/{job_id}/results", "methods": ["GET", "POST", "DELETE"]},
    {"path": "/jobs/{job_id}/logs", "methods": ["GET"]},
]


def capabilities(api_url: str, basic: bool = True, oidc: bool = False) -> Dict[str, Any]:
    """The capabilities document; the credentials endpoints listed are the login methods offered."""
    credentials = ([{"path": "/credentials/basic", "methods": ["GET"]}] if basic else []) + (
        [{"path": "/credentials/oidc", "methods": ["GET"]}] if oidc else [])
    return {
        "api_version": API_VERSION,
        "backend_version": BACKEND_VERSION,
        "stac_version": STAC_VERSION,
        "type": "Catalog",
        "id": "openeo-simulator",
        "title": "openEO backend simulator",
        "description": "Local simulation of an openEO batch-job backend for tests and benchmarks.",
        "production": False,
        "endpoints": credentials + ENDPOINTS,
        "billing": {"currency": "credits", "default_plan": "free", "plans": [
            {"name": "free", "description": "Simulated free plan", "paid": False},
        ]},
        "links": [
            {"rel": "self", "href": api_url, "type": "application/json"},
            {"rel": "data", "href": api_url + "collections", "type": "application/json"},
        ],
    }


def well_known(root_url: str, api_url: str) -> Dict[str, Any]:
    return {"versions": [{"url": api_url, "api_version": API_VERSION, "production": True}]}


_BANDS = [
    ("B02", "blue", 0.490),
    ("B03", "green", 0.560),
    ("B04", "red", 0.665),
    ("B08", "nir", 0.842),
    ("SCL", None, None),
]


def collection(api_url: str, collection_id: str = "SENTINEL2_L2A") -> Dict[str, Any]:
    bands = []
    for name, common, wl in _BANDS:
        b: Dict[str, Any] = {"name": name}
        if common:
            b["common_name"] = common
            b["center_wavelength"] = wl
        bands.append(b)
    return {
        "stac_version": STAC_VERSION,
        "stac_extensions": ["https://stac-extensions.github.io/datacube/v2.2.0/schema.json"],
        "type": "Collection",
        "id": collection_id,
        "title": "Sentinel-2 L2A (simulated)",
        "description": "Simulated Sentinel-2 level-2A surface reflectance.",
        "license": "proprietary",
        "providers": [{"name": "openEO simulator", "roles": ["host"]}],
        "extent": {
            "spatial": {"bbox": [[-180.0, -56.0, 180.0, 83.0]]},
            "temporal": {"interval": [["2017-03-28T00:00:00Z", None]]},
        },
        "cube:dimensions": {
            "x": {"type": "spatial", "axis": "x", "extent": [-180.0, 180.0], "reference_system": 4326},
            "y": {"type": "spatial", "axis": "y", "extent": [-56.0, 83.0], "reference_system": 4326},
            "t": {"type": "temporal", "extent": ["2017-03-28T00:00:00Z", None]},
            "bands": {"type": "bands", "values": [b[0] for b in _BANDS]},
        },
        "summaries": {"eo:bands": bands},
        "links": [
            {"rel": "self", "href": f"{api_url}collections/{collection_id}", "type": "application/json"},
            {"rel": "root", "href": api_url, "type": "application/json"},
        ],
    }


COLLECTION_IDS = ["SENTINEL2_L2A"]


def collections(api_url: str) -> Dict[str, Any]:
    return {
        "collections": [collection(api_url, cid) for cid in COLLECTION_IDS],
        "links": [{"rel": "self", "href": api_url + "collections", "type": "application/json"}],
    }


def _param(name: str, description: str, schema: Any, optional: bool = False) -> Dict[str, Any]:
    p = {"name": name, "description": description, "schema": schema}
    if optional:
        p["optional"] = True
        p["default"] = None
    return p


_CUBE = {"type": "object", "subtype": "datacube"}

PROCESSES: List[Dict[str, Any]] = [
    {
        "id": "load_collection",
        "summary": "Load a collection",
        "description": "Loads a collection from the current back-end by its id.",
        "categories": ["cubes", "import"],
        "parameters": [
            _param("id", "The collection id.", {"type": "string", "subtype": "collection-id"}),
            _param("spatial_extent", "Bounding box.", [{"type": "object", "subtype": "bounding-box"}, {"type": "null"}]),
            _param("temporal_extent", "Temporal interval.", [{"type": "array", "subtype": "temporal-interval"}, {"type": "null"}]),
            _param("bands", "Bands to load.", [{"type": "array", "items": {"type": "string"}}, {"type": "null"}], optional=True),
            _param("properties", "Metadata filters.", [{"type": "object"}, {"type": "null"}], optional=True),
        ],
        "returns": {"description": "A data cube.", "schema": _CUBE},
    },
    {
        "id": "filter_bands",
        "summary": "Filter the bands by names",
        "description": "Filters the bands in the data cube so that bands that don't match are removed.",
        "categories": ["cubes", "filter"],
        "parameters": [
            _param("data", "A data cube with bands.", _CUBE),
            _param("bands", "A list of band names.", {"type": "array", "items": {"type": "string"}}, optional=True),
        ],
        "returns": {"description": "A data cube.", "schema": _CUBE},
    },
    {
        "id": "reduce_dimension",
        "summary": "Reduce dimensions",
        "description": "Applies a reducer to a data cube dimension.",
        "categories": ["cubes", "reducer"],
        "parameters": [
            _param("data", "A data cube.", _CUBE),
            _param("reducer", "A reducer.", {"type": "object", "subtype": "process-graph"}),
            _param("dimension", "The dimension.", {"type": "string"}),
        ],
        "returns": {"description": "A data cube.", "schema": _CUBE},
    },
    {
        "id": "mean",
        "summary": "Arithmetic mean",
        "description": "The arithmetic mean of an array of numbers.",
        "categories": ["math > statistics", "reducer"],
        "parameters": [_param("data", "An array of numbers.", {"type": "array", "items": {"type": ["number", "null"]}})],
        "returns": {"description": "The mean.", "schema": {"type": ["number", "null"]}},
    },
    {
        "id": "save_result",
        "summary": "Save processed data",
        "description": "Makes the processed data available in the given file format.",
        "categories": ["cubes", "export"],
        "parameters": [
            _param("data", "The data to deliver.", _CUBE),
            _param("format", "The file format.", {"type": "string", "subtype": "output-format"}),
            _param("options", "File format options.", {"type": "object", "subtype": "output-format-options"}, optional=True),
        ],
        "returns": {"description": "Always true.", "schema": {"type": "boolean"}},
    },
]


def processes() -> Dict[str, Any]:
    return {"processes": PROCESSES, "links": []}


def file_formats() -> Dict[str, Any]:
    raster = ["raster"]
    return {
        "input": {},
        "output": {
            "GTiff": {"title": "GeoTiff", "gis_data_types": raster, "parameters": {}},
            "netCDF": {"title": "Network Common Data Form", "gis_data_types": raster, "parameters": {}},
        },
    }
