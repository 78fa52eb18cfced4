"""The command line's flags for the run-jobs flow's parameters, made from `RunParameters`
(flows/config/run_parameters.py): one flag per parameter, its help the parameter's description
and default, its type, range and choices the parameter's.

Flags left out are not passed: the flow's own defaults apply (the preflight fills them in too).
Two parameters are written in the command line's own form: `backends` as one `--backend SPEC` per
backend (flows/config/backend_spec.py), `process` as `--process-id` plus one flag per other field
of the process (`--namespace`, `--parameter-defaults` JSON, ...).
"""
from __future__ import annotations

import argparse
import json
import typing
from typing import Any, Callable, Dict, Literal, Tuple, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from flows.config.backend_spec import BACKEND_HELP, parse_backend
from flows.config.run_parameters import RunParameters, flag_of

# List parameters: how the command line reads one item, and what that item looks like.
ITEM_FORMS: Dict[str, Tuple[Callable[[str], Any], str]] = {"backends": (parse_backend, BACKEND_HELP)}
PLACEHOLDERS = {int: "N", float: "NUMBER", str: "TEXT"}

# Flow parameter -> the flag a user of this command line writes.
FLAGS = {name: flag_of(name).name for name in RunParameters.model_fields}


def json_object(text: str) -> Dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def add_flow_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per flow parameter (several for a parameter that is a model, such as `process`)."""
    for name, field in RunParameters.model_fields.items():
        flag, kind = flag_of(name), value_type(field.annotation)
        described = help_text(field)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            add_model_flags(parser, name, flag.name, flag.metavar, described, kind)
        elif get_origin(kind) in (list, typing.List):
            parse, form = ITEM_FORMS[name]
            parser.add_argument(flag.name, dest=name, action="append", type=parse, default=argparse.SUPPRESS,
                                metavar=flag.metavar or "VALUE", help=f"{described}; {flag.metavar or 'VALUE'}: "
                                f"{escaped(form)}")
        elif kind is bool:
            turns_off = field.default is True
            parser.add_argument(flag.name, dest=name, action="store_false" if turns_off else "store_true",
                                default=argparse.SUPPRESS,
                                help=f"{described} (default: on; this flag turns it off)" if turns_off else described)
        else:
            choices = get_args(kind) if get_origin(kind) is Literal else None
            parser.add_argument(flag.name, dest=name, type=str if choices else kind, choices=choices,
                                default=argparse.SUPPRESS, metavar=None if choices else flag.metavar or PLACEHOLDERS[kind],
                                help=described + shown_default(field))


def add_model_flags(parser: argparse.ArgumentParser, name: str, flag: str, metavar: str, described: str,
                    model: type[BaseModel]) -> None:
    """`process`: its first field is the parameter's flag (`--process-id ID`), the others follow it."""
    first, *others = model.model_fields.items()
    parser.add_argument(flag, dest=f"{name}.{first[0]}", default=argparse.SUPPRESS, metavar=metavar,
                        help=f"{described}: {escaped(first[1].description or first[0])}")
    for sub, field in others:
        is_mapping = get_origin(value_type(field.annotation)) in (dict, typing.Dict)
        parser.add_argument("--" + sub.replace("_", "-"), dest=f"{name}.{sub}", default=argparse.SUPPRESS,
                            type=json_object if is_mapping else str, metavar="JSON" if is_mapping else "TEXT",
                            help=f"{flag} only: {escaped(field.description or sub)}"
                            + (" (a JSON object)" if is_mapping else ""))


def flow_parameters(args: argparse.Namespace) -> Dict[str, Any]:
    """The run-jobs flow's parameters the user gave as flags (the others keep the flow's defaults)."""
    given = vars(args)
    params = {name: given[name] for name in RunParameters.model_fields if name in given}
    for name, field in RunParameters.model_fields.items():
        model = value_type(field.annotation)
        if isinstance(model, type) and issubclass(model, BaseModel):
            fields = {sub: given[f"{name}.{sub}"] for sub in model.model_fields if f"{name}.{sub}" in given}
            first = next(iter(model.model_fields))
            if first in fields:
                params[name] = fields
    return params


def value_type(annotation: Any) -> Any:
    """The type a flag's value has: `Optional[X]` -> X, `Union[str, Callable]` -> str."""
    if get_origin(annotation) is Union:
        options = [a for a in get_args(annotation) if a is not type(None)]
        return value_type(str if str in options else options[0])
    return annotation


def help_text(field: FieldInfo) -> str:
    return escaped(" ".join((field.description or "").split()))


def shown_default(field: FieldInfo) -> str:
    return "" if field.is_required() or field.default is None else f" (default: {field.default})"


def escaped(text: str) -> str:
    """argparse %-formats help texts."""
    return text.replace("%", "%%")
