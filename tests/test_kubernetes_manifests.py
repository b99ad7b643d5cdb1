"""deploy/kubernetes: every manifest is valid for the Kubernetes version the README names, and the Deployment
keeps the promises of the replica design (probes, graceful stops, no root, secrets out of the ConfigMap)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from bot.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
README = (ROOT / "README.md").read_text()
SECRET_KEYS = {"MicrosoftAppPassword", "NOTIFY_TOKEN", "PRICES_TOKEN", "METRICS_TOKEN", "DATABASE_URL"}
DRAIN_SECONDS = 15 + 10  # BotApplication: in-flight requests (shutdown_timeout), then the delivery worker's stop


def kubernetes_version() -> str:
    found = re.search(r"validated\s+against\s+the\s+schema\s+of\s+Kubernetes\s+(\d+\.\d+)", README)
    assert found, "README 'Running on Kubernetes' must name the Kubernetes version the manifests are checked for"
    return f"{found.group(1)}.0"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


MANIFESTS = sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
RESOURCES = {d["kind"]: d for p in MANIFESTS for d in documents(p) if p.name != "secret.example.yaml"}


def deployment() -> dict[str, Any]:
    return RESOURCES["Deployment"]


def pod() -> dict[str, Any]:
    return dict(deployment()["spec"]["template"]["spec"])


def container() -> dict[str, Any]:
    containers = pod()["containers"]
    assert len(containers) == 1
    return dict(containers[0])


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_valid_kubernetes(path: Path) -> None:
    for document in documents(path):
        kubernetes_validate.validate(document, kubernetes_version(), strict=True)


def test_a_misspelt_field_is_refused() -> None:
    """The validation above is strict: an unknown field fails, so it cannot pass by accident."""
    broken = yaml.safe_load((DEPLOY / "deployment.yaml").read_text())
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/healthz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_version(), strict=True)


def test_the_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS if p.name != "secret.example.yaml")
    assert set(RESOURCES) == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
    assert [i["name"] for i in kustomization["images"]] == [container()["image"]]


def test_three_replicas_roll_without_an_unavailable_pod() -> None:
    spec = deployment()["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] >= 1
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert RESOURCES["Service"]["spec"]["selector"].items() <= labels.items()
    budget = RESOURCES["PodDisruptionBudget"]["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["maxUnavailable"] == 1


def test_probes_readiness_on_healthz_liveness_on_livez_and_a_startup_probe() -> None:
    c = container()
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port_names == {"http": 3978}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    config = RESOURCES["ConfigMap"]["data"]
    startup = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    assert startup > int(config["DATABASE_STARTUP_TIMEOUT"]), "a slow database at start-up must not get it killed"
    assert RESOURCES["Service"]["spec"]["ports"][0]["targetPort"] == "http"


def test_a_stopping_pod_leaves_the_service_first_and_drains_inside_the_grace_period() -> None:
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and int(pre_stop[1]) >= 3
    lease = int(RESOURCES["ConfigMap"]["data"]["LEASE_SECONDS"])
    assert pod()["terminationGracePeriodSeconds"] > lease + DRAIN_SECONDS + int(pre_stop[1])


def test_non_root_read_only_root_filesystem_with_a_writable_tmp_and_no_capabilities() -> None:
    p, c = pod(), container()
    assert p["securityContext"]["runAsNonRoot"] is True
    assert p["securityContext"]["runAsUser"] == 10001  # the image's USER
    assert p["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in p["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert "USER 10001:10001" in (ROOT / "Containerfile").read_text()


def test_requests_and_limits_are_set() -> None:
    resources = container()["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]


def test_secrets_come_from_the_secret_and_nothing_secret_sits_in_the_configmap() -> None:
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container()["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert set(refs) == SECRET_KEYS
    assert all(r["key"] == name and r["name"] == "price-watch" for name, r in refs.items())
    required = {name for name, r in refs.items() if not r.get("optional")}
    assert {"MicrosoftAppPassword", "DATABASE_URL", "METRICS_TOKEN"} <= required
    assert not SECRET_KEYS & RESOURCES["ConfigMap"]["data"].keys()
    assert container()["envFrom"] == [{"configMapRef": {"name": "price-watch"}}]
    example = documents(DEPLOY / "secret.example.yaml")[0]
    assert example["kind"] == "Secret" and set(example["stringData"]) == SECRET_KEYS


def test_metrics_are_annotated_for_scraping() -> None:
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == container()["ports"][0]["containerPort"]


def pod_environment(app_id: str) -> dict[str, str]:
    """What the bot sees in a pod: the ConfigMap, the Secret's keys, REPLICA_ID."""
    env = {**RESOURCES["ConfigMap"]["data"], "MicrosoftAppId": app_id, "REPLICA_ID": "price-watch-abc12"}
    env.update({key: "s3cret" for key in SECRET_KEYS})
    env["DATABASE_URL"] = "postgresql://bot:s3cret@postgres:5432/pricewatch?sslmode=require"
    return env


def test_the_settings_start_the_bot_once_the_app_id_is_filled_in(tmp_path: Path) -> None:
    config = load_config(pod_environment("00000000-0000-0000-0000-0000000000aa"), tmp_path / "none.env")
    assert (config.host, config.port) == ("0.0.0.0", 3978)
    assert config.database_url.startswith("postgresql://")


def test_the_start_up_guard_holds_while_the_app_id_is_empty(tmp_path: Path) -> None:
    from bot.config import ConfigError

    with pytest.raises(ConfigError, match="MicrosoftAppId"):
        load_config(pod_environment(""), tmp_path / "none.env")
