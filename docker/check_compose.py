"""Offline check of docker/compose.yaml and the Dockerfiles' settings (no Docker engine needed).

`make lint` runs it. It checks what a broken deployment would only show at run time: every ``ANIMATE_*``
variable that compose.yaml or a Dockerfile sets is a real field of ``animate.settings.Settings`` and parses
(``${VAR:-default}`` read as its default); the four services exist; the worker reserves a GPU, mounts the
weights read-only and shares the files volume with the API; the databases have health checks the API and
worker wait for. Exit 1 with one line per problem.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from animate.settings import Settings

DOCKER = Path(__file__).resolve().parent
PREFIX = "ANIMATE_"
DELIMITER = "__"
_DEFAULT = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}")


def _interpolate(value: Any) -> str:
    """``${VAR:-default}`` -> ``default`` (compose's syntax), everything else as written."""
    return _DEFAULT.sub(lambda m: m.group(1), str(value))


def setting_problem(name: str) -> str | None:
    """Why ``name`` is not a Settings field (``ANIMATE_A__B`` -> ``Settings.a.b``), or None."""
    parts = name[len(PREFIX) :].lower().split(DELIMITER)
    model: type[BaseModel] = Settings
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return f"{name}: {model.__name__} has no field {part!r}"
        annotation = field.annotation
        if depth < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return f"{name}: {part!r} is not a settings group"
            model = annotation
    return None


def parse_problem(environment: dict[str, str]) -> str | None:
    """Settings built from exactly these variables, or why they do not parse."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(PREFIX)}
    try:
        for key in saved:
            del os.environ[key]
        os.environ.update(environment)
        Settings()
    except ValidationError as exc:
        return " ".join(str(exc).split())
    finally:
        for key in environment:
            os.environ.pop(key, None)
        os.environ.update(saved)
    return None


def dockerfile_settings(path: Path) -> dict[str, str]:
    """``ANIMATE_*`` values of the ``ENV`` instructions (``KEY=value`` form, backslash continuations)."""
    text = path.read_text().replace("\\\n", " ")
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip().startswith("ENV "):
            for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", line):
                if key.startswith(PREFIX):
                    found[key] = value
    return found


def check(compose_path: Path = DOCKER / "compose.yaml") -> list[str]:
    problems: list[str] = []
    compose = yaml.safe_load(compose_path.read_text())
    services = compose.get("services", {})
    missing = {"api", "worker", "redis", "postgres"} - set(services)
    if missing:
        problems.append(f"compose.yaml: missing services {sorted(missing)}")

    environments = {f"compose.yaml {name}": svc.get("environment") or {} for name, svc in services.items()}
    environments |= {f"{p.name}": dockerfile_settings(p) for p in sorted(DOCKER.glob("Dockerfile*"))}
    for where, environment in environments.items():
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        settings = {k: _interpolate(v) for k, v in environment.items() if k.startswith(PREFIX)}
        problems += [f"{where}: {p}" for k in settings if (p := setting_problem(k))]
        if settings and (p := parse_problem(settings)):
            problems.append(f"{where}: settings do not parse: {p}")

    worker = services.get("worker", {})
    devices = worker.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    if not any("gpu" in d.get("capabilities", []) for d in devices):
        problems.append("compose.yaml worker: no GPU reservation (deploy.resources.reservations.devices)")
    worker_volumes = [_interpolate(v) for v in worker.get("volumes", [])]
    if not any(v.endswith(":/weights:ro") for v in worker_volumes):
        problems.append("compose.yaml worker: the weights must be mounted read-only at /weights")
    api_volumes = {v.split(":")[0] for v in services.get("api", {}).get("volumes", [])}
    if not api_volumes & {v.split(":")[0] for v in worker_volumes}:
        problems.append("compose.yaml: the API and the worker share no files volume")
    for name in ("api", "worker"):
        for dependency, condition in (services.get(name, {}).get("depends_on") or {}).items():
            if condition.get("condition") == "service_healthy" and "healthcheck" not in services.get(
                dependency, {}
            ):
                problems.append(f"compose.yaml {name}: waits for {dependency}, which has no healthcheck")
    for path in sorted(DOCKER.glob("Dockerfile*")):
        text = path.read_text()
        if "HEALTHCHECK" not in text:
            problems.append(f"{path.name}: no HEALTHCHECK")
        if not re.search(r"^USER (?!root|0\b)", text, re.MULTILINE):
            problems.append(f"{path.name}: runs as root (no USER)")
        if re.search(r"^(COPY|ADD) .*weights", text, re.MULTILINE):
            problems.append(f"{path.name}: copies weights into the image")
    return problems


def main() -> int:
    problems = check()
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print("docker/compose.yaml and docker/Dockerfile.*: settings and structure ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
