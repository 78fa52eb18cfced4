"""Local openEO backend simulator (API 1.2 batch-job subset) for tests and benchmarks.

URL layout (root ``sim.url``, API root ``sim.api_url`` = ``<root>/openeo/1.2/``):

    GET  /.well-known/openeo                      version discovery
    GET  /openeo/1.2/                             capabilities
    GET  /openeo/1.2/credentials/basic            HTTP Basic -> {"access_token": ...}
    GET  /openeo/1.2/credentials/oidc             the trusted OIDC provider (OIDC mode: `oidc_issuer`)
    GET  /openeo/1.2/me | /collections[/{id}] | /processes | /file_formats
    POST|GET /openeo/1.2/jobs                     create (201) | list (?limit=&cursor=)
    GET|PATCH|DELETE /openeo/1.2/jobs/{id}
    POST|GET|DELETE  /openeo/1.2/jobs/{id}/results   start (202) | results | cancel (204)
    GET|HEAD /openeo/1.2/jobs/{id}/results/assets/{name}   asset bytes (Range supported)
    GET  /openeo/1.2/jobs/{id}/logs               ?level=&offset=
    GET|HEAD /_assets/{job_id}/{name}?size=N      unauthenticated "foreign" asset host
    GET|PATCH /_sim/config, GET /_sim/counters, POST /_sim/reset, POST /_sim/outage {"seconds": s}
"""
from simulator.config import SimulatorConfig
from simulator.runner import Simulator, start_simulator

__all__ = ["SimulatorConfig", "Simulator", "start_simulator"]
