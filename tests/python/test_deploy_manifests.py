"""What can be checked here of the Kubernetes/KServe deployment (deploy/kserve/) without a
cluster or Docker: the manifests parse and say what the server does, the Dockerfile builds with
the README's install command, probes name routes the server has, the container's arguments are
flags of ``inferline serve``, and the termination grace period covers the drain."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from inferline.cli import main
from inferline.engine import Engine
from inferline.server import create_app

yaml = pytest.importorskip("yaml")  # PyYAML, installed with Ray Serve (the test extras)

ROOT = Path(__file__).resolve().parents[2]
KSERVE = ROOT / "deploy" / "kserve"
MARGIN_S = 5  # seconds the pod gets past the drain, for uvicorn to close and the process to exit


def load(name: str) -> dict[str, Any]:
    docs = list(yaml.safe_load_all((KSERVE / name).read_text()))
    assert len(docs) == 1, f"{name}: expected one document, got {len(docs)}"
    doc: dict[str, Any] = docs[0]
    return doc


def container() -> dict[str, Any]:
    runtime = load("servingruntime.yaml")
    (c,) = runtime["spec"]["containers"]
    return dict(c)


def serve_help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def option(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def readme_install_command() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Install, run, test", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "README: no bash block under 'Install, run, test'"
    lines = [ln.split("#", 1)[0].strip() for ln in block.group(1).splitlines()]
    installs = [ln for ln in lines if ln.startswith("pip install")]
    assert len(installs) == 1, f"README install block: {installs}"
    return installs[0]


def dockerfile_runs(stage: int) -> list[str]:
    text = (KSERVE / "Dockerfile").read_text()
    text = re.sub(r"\\\n\s*", " ", text)  # join continued lines
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    return [ln[len("RUN ") :].strip() for ln in stages[stage].splitlines() if ln.startswith("RUN ")]


def test_manifests_parse_as_kserve_objects() -> None:
    runtime = load("servingruntime.yaml")
    isvc = load("inferenceservice.yaml")
    assert (runtime["apiVersion"], runtime["kind"]) == (
        "serving.kserve.io/v1alpha1",
        "ServingRuntime",
    )
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert set(runtime["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats


def test_dockerfile_builds_with_the_readme_install_command() -> None:
    install = readme_install_command()
    assert install == "pip install ."
    build = dockerfile_runs(0)
    assert install in build, f"the build stage runs {build}, not the README's {install!r}"
    text = (KSERVE / "Dockerfile").read_text()
    assert "COPY . ." in text
    entry = re.search(r"^ENTRYPOINT (.*)$", text, re.M)
    cmd = re.search(r"^CMD (.*)$", text, re.M)
    assert entry is not None and cmd is not None
    assert yaml.safe_load(entry.group(1)) == ["inferline"]
    assert yaml.safe_load(cmd.group(1))[:2] == ["serve", "/mnt/models"]


def test_probes_name_the_servers_health_routes() -> None:
    c = container()
    http_port = int(option(c["args"], "--port"))
    routes = {getattr(r, "path", None) for r in create_app(Engine()).routes}
    probes = {k: c[k]["httpGet"] for k in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/v2/health/live"
    assert probes["readinessProbe"]["path"] == "/v2/health/ready"
    for name, probe in probes.items():
        assert probe["path"] in routes, f"{name}: no route {probe['path']}"
        assert probe["port"] == http_port, f"{name} probes port {probe['port']}"
    ports = {p["containerPort"] for p in c["ports"]}
    assert ports == {http_port, int(option(c["args"], "--grpc-port"))} == {8080, 8001}


def test_container_arguments_are_flags_of_inferline_serve(
    capsys: pytest.CaptureFixture[str],
) -> None:
    c = container()
    assert c["command"] == ["inferline"]
    assert c["args"][:2] == ["serve", "/mnt/models"]
    text = (KSERVE / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (.*)$", text, re.M)
    assert cmd is not None
    assert yaml.safe_load(cmd.group(1)) == c["args"], "the image's CMD and the runtime differ"
    usage = serve_help(capsys)
    for flag in (a for a in c["args"] if a.startswith("--")):
        assert flag in usage, f"inferline serve has no {flag}"


def test_grace_period_is_the_drain_timeout_plus_a_margin(
    capsys: pytest.CaptureFixture[str],
) -> None:
    drain = float(option(container()["args"], "--drain-timeout"))
    default = re.search(
        r"--drain-timeout DRAIN_TIMEOUT .*? \(default: ([0-9.]+)\)", serve_help(capsys)
    )
    assert default is not None, "inferline serve --help shows no --drain-timeout default"
    assert drain == float(default.group(1)), "the runtime's drain differs from the CLI default"
    isvc = load("inferenceservice.yaml")
    assert isvc["spec"]["predictor"]["terminationGracePeriodSeconds"] == drain + MARGIN_S
    # and the manifest's comment says the same figures
    text = (KSERVE / "inferenceservice.yaml").read_text()
    assert f"--drain-timeout ({drain:g}) + {MARGIN_S} s" in text
