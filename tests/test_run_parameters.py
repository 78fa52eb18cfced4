"""The run-jobs flow's parameters have one home, `RunParameters` (flows/config/run_parameters.py):
the flow's signature, the deployment form, the preflight and the command line's flags all come
from it, each parameter with the same default, range and description."""
from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import annotated_types
import pytest

from flows.config.params import SetupError
from flows.config.preflight import preflight
from flows.config.run_parameters import RunParameters
from flows.console.cli import FLAGS, build_parser
from flows.console.flags import flow_parameters, value_type
from flows.run_jobs import run_jobs
from tests.flow_helpers import make_db

ROOT = Path(__file__).resolve().parents[1]
FIELDS = RunParameters.model_fields
SCHEMA_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}
CALLBACK = "flows.tiling.example_callbacks:composite_over_tile_bbox"


def words(text: str) -> str:
    return " ".join(text.split())


def test_the_flow_signature_is_the_model():
    signature = inspect.signature(run_jobs)
    assert list(signature.parameters) == list(FIELDS)
    for name, field in FIELDS.items():
        parameter = signature.parameters[name]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, name
        if field.is_required():
            assert parameter.default is inspect.Parameter.empty, name
        else:
            assert parameter.default == field.default, name


@pytest.mark.parametrize("schema_of", ["prefect deploy", "flow.deploy / serve"])
def test_the_deployment_form_describes_and_types_every_parameter(schema_of):
    """`prefect deploy` builds the form with parameter_schema(flow) (cli/deploy/_core.py); a flow's
    own `.deploy()`/`.serve()` use `flow.parameters`, built from the function."""
    from prefect.utilities.callables import parameter_schema

    schema = (parameter_schema(run_jobs) if schema_of == "prefect deploy" else run_jobs.parameters)
    schema = schema.model_dump_for_openapi()
    properties = schema["properties"]
    assert list(properties) == list(FIELDS)
    assert set(schema["required"]) == {name for name, field in FIELDS.items() if field.is_required()}
    for name, field in FIELDS.items():
        prop = properties[name]
        assert prop.get("description") == words(field.description), name
        assert prop.get("type") or prop.get("anyOf") or prop.get("$ref") or prop.get("allOf"), f"{name}: no type"
        if not field.is_required():
            assert prop["default"] == field.default, name
        kind = value_type(field.annotation)
        if kind in SCHEMA_TYPES:
            typed = [prop.get("type")] + [option.get("type") for option in prop.get("anyOf", [])]
            assert SCHEMA_TYPES[kind] in typed, (name, prop)
    assert properties["max_start_workers"]["maximum"] == 100 and properties["backends"]["minItems"] == 1


def out_of_range(field):
    """A value the field's declared range refuses, or None when it declares none."""
    for bound in field.metadata:
        if isinstance(bound, annotated_types.Gt):
            return bound.gt
        if isinstance(bound, annotated_types.Ge):
            return bound.ge - 1
        if isinstance(bound, annotated_types.Le):
            return bound.le + 1
    return None


def test_the_preflight_checks_the_flows_defaults_and_ranges(tmp_path):
    db = make_db(tmp_path / "jobs.parquet", 2)
    given = {"job_db": str(db), "backends": [{"name": "a", "url": "http://127.0.0.1:9"}], "start_job": CALLBACK}
    checked = preflight(given, connect=False)
    signature = inspect.signature(run_jobs)
    for name, parameter in signature.parameters.items():
        if name not in given:
            assert getattr(checked, name) == parameter.default, name
    ranged = {name: bad for name, field in FIELDS.items() if (bad := out_of_range(field)) is not None}
    assert {"max_start_workers", "poll_interval_seconds", "failure_threshold", "max_attempts"} <= set(ranged)
    for name, bad in ranged.items():
        with pytest.raises(SetupError) as refused:
            preflight({**given, name: bad}, connect=False)
        assert refused.value.parameter == name, (name, bad, refused.value)


def test_the_preflight_does_not_import_prefect():
    code = ("import sys; import flows.console.cli, flows.config.preflight; "
            "assert 'prefect' not in sys.modules, sorted(m for m in sys.modules if m.startswith('prefect'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr


def sample(kind, field):
    """A command-line value for the flag and the parameter value it must give."""
    if kind is bool:
        return [], not field.default
    value = {int: 3, float: 2.5, str: "some/value"}[kind]
    return [str(value)], value


def test_every_parameter_is_a_flag_with_its_description_default_and_type():
    parser = build_parser()
    by_flag = {flag: action for action in parser._actions for flag in action.option_strings}
    assert set(FLAGS) == set(FIELDS)
    assert flow_parameters(parser.parse_args([])) == {}  # a flag left out keeps the flow's default
    for name, field in FIELDS.items():
        action = by_flag[FLAGS[name]]
        assert words(field.description) in words(action.help.replace("%%", "%")), name
        shown = f"(default: {field.default})"
        has_default = not field.is_required() and field.default is not None and not isinstance(field.default, bool)
        assert (shown in action.help) == has_default, (name, action.help)
        kind = value_type(field.annotation)
        if kind in (int, float, str):
            assert action.type is kind, name
            argv, expected = sample(kind, field)
            assert flow_parameters(parser.parse_args([FLAGS[name], *argv]))[name] == expected, name
        elif kind is bool:
            assert flow_parameters(parser.parse_args([FLAGS[name]]))[name] is (not field.default), name
    process = flow_parameters(parser.parse_args(["--process-id", "udp", "--parameter-defaults", '{"a": 1}']))
    assert process == {"process": {"process_id": "udp", "parameter_defaults": {"a": 1}}}
    backends = flow_parameters(parser.parse_args(["--backend", "a=http://x", "--backend", "b=http://y,parallel_jobs=3"]))
    assert [b["name"] for b in backends["backends"]] == ["a", "b"] and backends["backends"][1]["parallel_jobs"] == 3


def test_a_flow_called_from_python_keeps_its_keywords():
    """`run_jobs(job_db=..., backends=..., ...)`: Prefect binds the generated signature."""
    from prefect.utilities.callables import get_call_parameters, parameters_to_args_kwargs

    call = get_call_parameters(run_jobs.fn, (), {"job_db": "x.csv", "backends": ["b"], "campaign": "c"})
    assert call["campaign"] == "c" and call["max_start_workers"] == 5 and set(call) == set(FIELDS)
    args, kwargs = parameters_to_args_kwargs(run_jobs.fn, call)
    assert args == () and kwargs == call
    with pytest.raises(TypeError):
        get_call_parameters(run_jobs.fn, (), {"job_db": "x.csv", "backends": ["b"], "no_such_parameter": 1})
