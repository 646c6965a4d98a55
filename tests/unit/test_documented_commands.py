"""Every command the README and ``docs/`` show runs as written.

The shell blocks are read from the Markdown files themselves and each command is checked against
what it calls: ``make`` targets exist and ``make -n`` accepts them (with their variables); ``mlflow
run`` entry points and ``-P`` parameters are the MLproject's; every ``curl`` of the gateway names a
route and method it has, and its JSON body is valid JSON that the route's own request model accepts;
``mlflow models serve`` is given what it needs here. The commands that need a running stack run for
real in the integration tests (the stack, serving-by-name and gateway modules).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass

import pytest

from gateway import schemas
from tests.conftest import PROJECT_DIR

DOCUMENTS = [PROJECT_DIR / "README.md", PROJECT_DIR / "SECURITY.md", *sorted((PROJECT_DIR / "docs").glob("*.md"))]
SHELL_BLOCK = re.compile(r"```(?:bash|sh|shell)\n(.*?)```", re.S)
GATEWAY = re.compile(r"^(?:https?://(?:127\.0\.0\.1|localhost):8000)?(/[^?\s]*)")


@dataclass(frozen=True)
class Command:
    where: str
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.words)}"


def commands() -> list[Command]:
    """Every simple command of every shell block: continuations joined, comments dropped, pipes and
    ``;`` split, the page's shell variables (``G=...``) substituted."""
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        variables: dict[str, str] = {}  # a page defines G once for its examples
        for block in SHELL_BLOCK.finditer(text):
            line_number = text[:block.start()].count("\n") + 2
            for line in block.group(1).replace("\\\n", " ").splitlines():
                lexer = shlex.shlex(line, posix=True, punctuation_chars=";|&")
                lexer.whitespace_split, lexer.commenters = True, "#"
                words: list[str] = []
                for word in [*lexer, ";"]:
                    if word and set(word) <= set(";|&"):
                        if words:
                            found.append(Command(f"{document.name}:{line_number}", tuple(words)))
                        words = []
                        continue
                    word = re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), m.group(0)), word)
                    if not words and re.fullmatch(r"[A-Z]\w*=.*", word) and word.split("=")[0] in ("G", "M"):
                        name, value = word.split("=", 1)
                        variables[name] = value
                        continue
                    words.append(word)
                line_number += 1 + line.count("\\")
    return found


ALL = commands()


def program(command: Command) -> tuple[str, list[str]]:
    """The program and its arguments, past ``NAME=value`` assignments."""
    words = list(command.words)
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
        words.pop(0)
    return (words[0], words[1:]) if words else ("", [])


def of(name: str, *first: str) -> list[Command]:
    chosen = [c for c in ALL if program(c)[0] == name and program(c)[1][:len(first)] == list(first)]
    assert chosen, f"no documented {name} {' '.join(first)} command: the extraction is broken"
    return chosen


def project_parameters() -> dict[str, set[str]]:
    from mlflow.projects._project_spec import load_project

    project = load_project(str(PROJECT_DIR))
    return {name: set(project.get_entry_point(name).parameters) for name in project._entry_points}


def check_mlflow_run_arguments(arguments: list[str], command: Command, entry_point: str = "main") -> None:
    entry_points = project_parameters()
    i = 0
    while i < len(arguments):
        word = arguments[i]
        if word in ("-e", "--entry-point"):
            entry_point = arguments[i + 1]
            assert entry_point in entry_points, f"{command}: no entry point {entry_point}"
        elif word == "-P":
            name = arguments[i + 1].split("=", 1)[0]
            assert name in entry_points[entry_point], f"{command}: {entry_point} has no parameter {name}"
        i += 2 if word in ("-e", "--entry-point", "-P", "--experiment-name", "--env-manager") else 1


@pytest.mark.parametrize("command", of("make"), ids=str)
def test_a_documented_make_command_names_real_targets_and_make_accepts_it(command):
    _, arguments = program(command)
    variables = dict(word.split("=", 1) for word in arguments if "=" in word)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_EXPERIMENT_")}
    dry = subprocess.run(["make", "-n", *arguments], cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                         timeout=60)
    assert dry.returncode == 0, f"{command}: {dry.stderr}"
    if "ARGS" in variables:
        target = "score" if "score" in arguments else "main"  # `make score` runs that entry point
        check_mlflow_run_arguments(shlex.split(variables["ARGS"]), command, target)
        assert variables["ARGS"] in dry.stdout, f"{command}: ARGS not passed on"


@pytest.mark.parametrize("command", of("mlflow", "run"), ids=str)
def test_a_documented_mlflow_run_names_entry_points_and_parameters_of_the_project(command):
    _, arguments = program(command)
    assert "--env-manager" in arguments and "local" in arguments, f"{command}: needs --env-manager local here"
    check_mlflow_run_arguments(arguments[2:], command)


@pytest.mark.parametrize("command", of("mlflow", "models", "serve"), ids=str)
def test_a_documented_mlflow_models_serve_has_what_it_needs_here(command):
    words = " ".join(command.words)
    assert "--env-manager local" in words and "MLFLOW_TRACKING_URI=" in words and ".venv/bin" in words, command


def gateway_operations() -> dict[tuple[str, re.Pattern[str]], str | None]:
    """(method, path pattern) of every gateway operation, with the name of its request body's model."""
    from contract.settings import Settings
    from gateway.app import create_app

    document = create_app(Settings(stack_dir=PROJECT_DIR / ".stack")).openapi()
    operations = {}
    for path, methods in document["paths"].items():
        pattern = re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path)) + "$")
        for method, operation in methods.items():
            ref = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            operations[method.upper(), pattern] = ref.get("$ref", "").rsplit("/", 1)[-1] or None
    return operations


OPERATIONS = gateway_operations()


def curl_request(arguments: list[str]) -> tuple[str, str | None, str | None]:
    """(method, URL, JSON body) of a curl command."""
    method, url, body = None, None, None
    for i, word in enumerate(arguments):
        if word == "-X":
            method = arguments[i + 1]
        elif word in ("-d", "--data", "--data-binary"):
            body = arguments[i + 1]
        elif word.startswith(("http", "/")) or "$" in word:
            url = url or word
    return method or ("POST" if body is not None else "GET"), url, body


@pytest.mark.parametrize("command", of("curl"), ids=str)
def test_a_documented_curl_of_the_gateway_names_a_route_it_has_with_a_body_its_model_accepts(command):
    method, url, body = curl_request(program(command)[1])
    assert url, f"{command}: no URL"
    if ":5002" in url or ":5001" in url:  # MLflow's scoring server, or ours
        assert url.endswith(("/invocations", "/ping", "/health", "/version")), command
        return
    path = GATEWAY.match(url)
    assert path, f"{command}: not a gateway URL"
    matched = [model for (verb, pattern), model in OPERATIONS.items()
               if verb == method and pattern.match(path.group(1))]
    assert matched, f"{command}: the gateway has no {method} {path.group(1)}"
    if body is None or body.startswith("@"):
        return
    parsed = json.loads(body)  # a body in the docs is valid JSON: no "..." in place of the rest
    if matched[0]:
        getattr(schemas, matched[0]).model_validate(parsed)


def test_every_kind_of_documented_command_is_checked():
    checked = ("make", "mlflow", "curl")
    others = {program(c)[0] for c in ALL} - set(checked)
    # what the other commands are, for a reader of a failure: plain shell, or checked elsewhere
    assert others <= {"", "cp", "head", "jq", "docker", "source", "export", "kubectl", "zcat"}, others
