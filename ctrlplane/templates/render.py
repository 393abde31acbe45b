"""Template parameters: checking the values an environment is asked for against a template's
declarations, and putting them in place of ``{{name}}`` in the image, env values, label values,
health checks' targets and routes' paths.

Every offending parameter is named at once (``details`` maps each to what is wrong), so a caller
fixes them in one round, and nothing is written before the check passes.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from ctrlplane.errors import InvalidInput
from ctrlplane.health.schemas import HealthCheckCreate
from ctrlplane.health.service import validate_target_ports, validate_timing
from ctrlplane.instances.schemas import InstanceCreate
from ctrlplane.network.schemas import RouteCreate
from ctrlplane.network.service import check_route
from ctrlplane.templates.schemas import Parameter, ParameterValue, TemplateSpec

REFERENCE = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")


def _typed(parameter: Parameter, value: Any) -> tuple[ParameterValue | None, str | None]:
    """``value`` as the parameter's type, or why it is not one. Strings that spell the type are
    accepted ("8080" for an integer, "true" for a boolean): values also come from CLI flags."""
    kind = parameter.type
    if kind == "integer":
        if isinstance(value, bool):
            return None, "must be an integer"
        if isinstance(value, int):
            return value, None
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,18}", value):
            return int(value), None
        return None, "must be an integer"
    if kind == "boolean":
        if isinstance(value, bool):
            return value, None
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true", None
        return None, "must be a boolean"
    if not isinstance(value, str):
        if isinstance(value, bool) or not isinstance(value, int):
            return None, f"must be a {'string' if kind == 'string' else 'value of ' + repr(parameter.values)}"
        value = str(value)
    if len(value) > 1024:
        return None, "must be at most 1024 characters"
    if kind == "enum" and value not in (parameter.values or []):
        return None, f"must be one of {', '.join(parameter.values or [])}"
    if parameter.pattern is not None and re.fullmatch(parameter.pattern, value) is None:
        return None, f"must match {parameter.pattern}"
    return value, None


def check_declarations(parameters: list[Parameter], spec: TemplateSpec) -> None:
    """400 naming every parameter declaration that cannot work (and every ``{{name}}`` the spec
    references without declaring it), then checks the spec renders into a valid instance."""
    problems: dict[str, str] = {}
    names = [p.name for p in parameters]
    for name in {n for n in names if names.count(n) > 1}:
        problems[name] = "declared more than once"
    for parameter in parameters:
        if parameter.type == "enum" and not parameter.values:
            problems[parameter.name] = "an enum needs values"
            continue
        if parameter.type != "enum" and parameter.values is not None:
            problems[parameter.name] = "values is only for enum parameters"
            continue
        if parameter.pattern is not None:
            if parameter.type != "string":
                problems[parameter.name] = "pattern is only for string parameters"
                continue
            try:
                re.compile(parameter.pattern)
            except re.error as exc:
                problems[parameter.name] = f"pattern does not compile: {exc}"
                continue
        if parameter.default is not None:
            _, why = _typed(parameter, parameter.default)
            if why is not None:
                problems[parameter.name] = f"default {why}"
    for name in sorted(set(references(spec)) - set(names)):
        problems[name] = "referenced as {{" + name + "}} but not declared"
    if problems:
        raise InvalidInput(
            "invalid template parameters: " + ", ".join(sorted(problems)), details={"parameters": problems}
        )
    samples = {p.name: _sample(p) for p in parameters}
    instance = render(spec, samples, name="template-check")
    checks, routes = render_extras(spec, samples)
    check_extras(instance, checks, routes)


def check_extras(instance: InstanceCreate, checks: list[HealthCheckCreate], routes: list[RouteCreate]) -> None:
    """400 for a health check or route the instance's API would refuse for what it is (timing,
    target, path, a port the instance does not have); per-instance limits are checked on create."""
    ports = [{"container_port": p.container_port, "protocol": p.protocol} for p in instance.ports]
    names = [c.name for c in checks]
    for duplicate in sorted({n for n in names if names.count(n) > 1}):
        raise InvalidInput(f"health check {duplicate!r} is declared more than once", details={"name": duplicate})
    for check in checks:
        validate_timing(check.interval, check.timeout)
        validate_target_ports(check.type, check.target, ports)
    for route in routes:
        check_route(ports, path=route.path, port=route.port, protocol=route.protocol)


def _sample(parameter: Parameter) -> ParameterValue:
    if parameter.default is not None:
        return parameter.default
    if parameter.type == "integer":
        return 1
    if parameter.type == "boolean":
        return True
    if parameter.type == "enum":
        return (parameter.values or ["x"])[0]
    return "x"


def references(spec: TemplateSpec) -> list[str]:
    texts = [
        spec.image,
        *spec.env.values(),
        *spec.labels.values(),
        *(c.target for c in spec.health_checks),
        *(r.path for r in spec.routes),
    ]
    return [match.group(1) for text in texts for match in REFERENCE.finditer(text)]


def resolve(parameters: list[Parameter], given: dict[str, Any]) -> dict[str, ParameterValue]:
    """The value of every declared parameter (given, else its default), or 400 naming every
    parameter that is missing, unknown or of the wrong type or pattern."""
    problems: dict[str, str] = {}
    declared = {p.name: p for p in parameters}
    for name in given:
        if name not in declared:
            problems[name] = "unknown parameter"
    values: dict[str, ParameterValue] = {}
    for parameter in parameters:
        if parameter.name in given:
            value, why = _typed(parameter, given[parameter.name])
            if why is not None:
                problems[parameter.name] = why
            elif value is not None:
                values[parameter.name] = value
        elif parameter.required:
            problems[parameter.name] = "required"
        elif parameter.default is not None:
            values[parameter.name] = parameter.default
    if problems:
        raise InvalidInput(
            "invalid parameters: " + ", ".join(f"{k} ({v})" for k, v in sorted(problems.items())),
            details={"parameters": problems},
        )
    return values


def _text(value: ParameterValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _fill(text: str, values: dict[str, ParameterValue]) -> str:
    return REFERENCE.sub(lambda m: _text(values.get(m.group(1), "")), text)


def render(spec: TemplateSpec, values: dict[str, ParameterValue], *, name: str) -> InstanceCreate:
    """The instance the spec describes with ``values`` in place; 400 when the result is not a valid
    instance (an image reference a value made malformed, say)."""
    body = msgspec.to_builtins(spec)
    del body["health_checks"], body["routes"]
    body["image"] = _fill(spec.image, values)
    body["env"] = {k: _fill(v, values) for k, v in spec.env.items()}
    body["labels"] = {k: _fill(v, values) for k, v in spec.labels.items()}
    body["name"] = name
    try:
        return msgspec.convert(body, InstanceCreate)
    except msgspec.ValidationError as exc:
        raise InvalidInput(
            f"the template does not render into a valid instance: {exc}", details={"spec": str(exc)}
        ) from None


def render_extras(
    spec: TemplateSpec, values: dict[str, ParameterValue]
) -> tuple[list[HealthCheckCreate], list[RouteCreate]]:
    """The spec's health checks and routes with ``values`` in place of ``{{name}}`` in targets and
    paths; 400 when a value made one invalid."""
    checks = [msgspec.structs.replace(c, target=_fill(c.target, values)) for c in spec.health_checks]
    routes = [msgspec.structs.replace(r, path=_fill(r.path, values)) for r in spec.routes]
    try:
        return (
            msgspec.convert(msgspec.to_builtins(checks), list[HealthCheckCreate]),
            msgspec.convert(msgspec.to_builtins(routes), list[RouteCreate]),
        )
    except msgspec.ValidationError as exc:
        raise InvalidInput(
            f"the template's health checks or routes do not render: {exc}", details={"spec": str(exc)}
        ) from None
