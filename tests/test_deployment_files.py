"""deployments/: every prefect.yaml parses as Prefect reads it, names flows that exist and only
parameters those flows take, keeps secrets out of parameters; the Docker example's image holds the
code where its pull step looks. (The process pool's file also runs for real: tests/test_deployment.py
and, on PostgreSQL, tests/test_sql_deployment_runs.py; Docker is not on the test machines.)"""
from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
import yaml

from jobdb.location import check_no_password, locate

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "deployments").rglob("prefect.yaml"))
DOCKER = ROOT / "deployments" / "docker"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def flow_of(entrypoint: str):
    path, name = entrypoint.split(":")
    assert (ROOT / path).is_file(), entrypoint
    return getattr(importlib.import_module(path[:-3].replace("/", ".")), name)


def test_both_pools_are_described():
    assert [p.relative_to(ROOT).as_posix() for p in FILES] == ["deployments/docker/prefect.yaml",
                                                               "deployments/prefect.yaml"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_prefect_reads_the_file_and_every_parameter_is_real(path):
    from prefect.cli.deploy._models import PrefectYamlModel

    document = load(path)
    PrefectYamlModel.model_validate(document)  # what `prefect deploy` validates before deploying
    assert document["deployments"]
    for deployment in document["deployments"]:
        flow = flow_of(deployment["entrypoint"])
        accepted = set(inspect.signature(flow.fn).parameters)
        given = set(deployment.get("parameters") or {})
        assert given <= accepted, (deployment["name"], sorted(given - accepted))
        job_db = (deployment.get("parameters") or {}).get("job_db")
        if job_db:
            locate(job_db)  # a form that works (raises otherwise)
            check_no_password(job_db)  # a parameter is stored and shown: never a password


def test_the_docker_example_runs_the_image_it_builds():
    document = load(DOCKER / "prefect.yaml")
    build = document["build"][0]["prefect_docker.deployments.steps.build_docker_image"]
    assert (ROOT / build["dockerfile"]).is_file()  # the path `prefect deploy` uses, from the project root
    (deployment,) = document["deployments"]
    variables = deployment["work_pool"]["job_variables"]
    assert variables["image"] == "{{ build-image.image }}" and build["id"] == "build-image"
    dockerfile = (ROOT / build["dockerfile"]).read_text()
    workdir = re.search(r"^WORKDIR\s+(\S+)", dockerfile, re.M).group(1)
    assert document["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == workdir
    for package in ("flows", "tasks", "jobdb"):  # what the entrypoint and the flow import
        assert re.search(rf"^COPY {package} ", dockerfile, re.M), package
    parameters = deployment["parameters"]
    assert locate(parameters["job_db"]).kind == "sql" and parameters["campaign"]
    assert parameters["root_dir"].startswith("s3://")  # a container's own disk goes with it
    mount = variables["volumes"][0].split(":")[1]
    assert variables["env"]["PGPASSFILE"] == mount  # the password comes from a mounted file
    text = (DOCKER / "prefect.yaml").read_text() + dockerfile
    assert not re.search(r"(?i)(password|secret|token)\s*[:=]\s*\S", text.replace("PGPASSFILE", ""))


def test_the_docs_deployment_commands_are_complete():
    """What a platform engineer copies from the docs works as written: every `deployment run` of
    run-jobs gives a `start_job` (there is no default callback), the README names every deployment
    of deployments/prefect.yaml, and a server on another port is told `PREFECT_UI_API_URL`."""
    readme, commands = (ROOT / "README.md").read_text(), (ROOT / "deployments" / "README.md").read_text()
    given = {d["name"]: set(d.get("parameters") or {}) for path in FILES for d in load(path)["deployments"]}
    runs = [(m.group(1), m.group(0)) for text in (readme, commands)
            for m in re.finditer(r"prefect deployment run 'run-jobs/([^']+)'(?:[^`\n]|\n(?!\n|#))*", text)]
    assert runs
    for name, run in runs:  # parameters given: the callback too, unless the deployment's own parameters have it
        assert " -p " not in run or "start_job=" in run or given[name] & {"start_job", "process"}, run
    assert any("start_job=" in run for _, run in runs)
    names = [d["name"] for d in load(ROOT / "deployments" / "prefect.yaml")["deployments"]]
    section = readme[readme.index("## Deployments and backend blocks"):]
    assert all(f"`{name}`" in section for name in names), [n for n in names if f"`{name}`" not in section]
    assert re.search(r"--port \d+.*\n?.*PREFECT_UI_API_URL=http://127\.0\.0\.1:\d+/api", commands)
