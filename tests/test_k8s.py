"""deploy/k8s: every manifest is valid Kubernetes for the versions we deploy to (kubernetes-validate, strict: an
unknown or misplaced field fails), and the base and the GPU overlay say what operators rely on: probes on the
app's routes, a grace period that outlasts the drain, a read-only model, writable dirs where dpp writes,
non-root, real DPP_* settings, ClientIP affinity, one GPU a replica. No cluster and no network: the overlays are
built here from their patches; where kubectl or kustomize is installed, that output is checked against ours."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import kubernetes_validate
import pytest
import yaml

from app.auth import KeysError, load_keys
from app.settings import env_name, load_settings, setting_fields

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
GPU = K8S / "overlays" / "gpu"
EXAMPLES = K8S / "examples"
# The oldest Kubernetes we deploy to (the preStop sleep action is on by default from 1.30, and PDB's
# unhealthyPodEvictionPolicy is GA in 1.31), and the newest the pinned kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.31", "1.37")
# What a kustomization here may use; this file's builder understands resources, patches and images, and the
# labels transformer changes nothing the checks below look at.
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "labels", "resources", "patches", "images"}
# Variables naming a directory dpp or its libraries write to: each must lie on a writable emptyDir.
WRITTEN_DIRS = ("DPP_DATA_DIR", "DPP_LOG_DIR", "GRADIO_TEMP_DIR", "TMPDIR", "XDG_CACHE_HOME", "CUDA_CACHE_PATH")


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text("utf-8")) if doc]


def _kustomization(directory: Path) -> dict:
    return yaml.safe_load((directory / "kustomization.yaml").read_text("utf-8"))


def _key(doc: dict) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def _merge(base, patch):
    """A strategic-merge patch as kustomize applies the shapes used here: maps merge, lists of named items merge
    by name (containers, env, volumes), other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    named = isinstance(base, list) and isinstance(patch, list) and all(
        isinstance(item, dict) and "name" in item for item in base + patch)
    if named and base and patch:
        by_name = {item["name"]: item for item in patch}
        merged = [_merge(item, by_name.pop(item["name"])) if item["name"] in by_name else item for item in base]
        return [copy.deepcopy(item) for item in by_name.values()] + merged
    return copy.deepcopy(patch)


def _build(directory: Path) -> list[dict]:
    """What `kubectl kustomize DIRECTORY` gives, short of labels."""
    kustomization = _kustomization(directory)
    assert set(kustomization) <= KUSTOMIZATION_FIELDS, set(kustomization) - KUSTOMIZATION_FIELDS
    docs: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        docs += _build(path) if path.is_dir() else _documents(path)
    for entry in kustomization.get("patches", []):
        assert set(entry) == {"path"}, entry
        for patch in _documents(directory / entry["path"]):
            targets = [i for i, doc in enumerate(docs) if _key(doc) == _key(patch)]
            assert len(targets) == 1, f"{entry['path']}: no single {_key(patch)} to patch"
            docs[targets[0]] = _merge(docs[targets[0]], patch)
    for entry in kustomization.get("images", []):
        for doc in docs:
            for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                name, _, tag = container["image"].partition(":")
                if name == entry["name"]:
                    container["image"] = f"{entry.get('newName', name)}:{entry.get('newTag', tag)}"
    return docs


def _kustomize(directory: Path) -> list[dict]:
    """The real build, by kustomize or kubectl; skips where neither is installed."""
    if shutil.which("kustomize"):
        command = ["kustomize", "build", str(directory)]
    elif shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(directory)]
    else:
        pytest.skip("neither kustomize nor kubectl is on PATH: the overlays are checked as this file builds them")
    built = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


class Built:
    """One kustomization's objects, and the parts the checks read."""

    def __init__(self, directory: Path):
        self.docs = _build(directory)
        self.by_key = {_key(doc): doc for doc in self.docs}
        assert len(self.by_key) == len(self.docs), "two objects of one kind share a name"

    def get(self, kind: str) -> dict:
        found = [doc for doc in self.docs if doc["kind"] == kind]
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    @property
    def deployment(self) -> dict:
        return self.get("Deployment")

    @property
    def pod(self) -> dict:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def container(self) -> dict:
        (container,) = [c for c in self.pod["containers"] if c["name"] == "dpp"]
        return container

    @property
    def config(self) -> dict[str, str]:
        refs = [source["configMapRef"]["name"] for source in self.container.get("envFrom", [])]
        assert len(refs) == 1
        return self.by_key[("ConfigMap", refs[0])]["data"]

    @property
    def environment(self) -> dict[str, str]:
        """The container's variables: the ConfigMap's, then its own env (which win), literal values only."""
        own = {item["name"]: item["value"] for item in self.container.get("env", []) if "value" in item}
        return {**self.config, **own}

    def port(self, name_or_number) -> int:
        if isinstance(name_or_number, int):
            return name_or_number
        (port,) = [p["containerPort"] for p in self.container["ports"] if p["name"] == name_or_number]
        return port

    def mount_of(self, path: str) -> tuple[dict, dict]:
        """The volume mount holding `path` (the deepest), and its volume."""
        holding = [m for m in self.container["volumeMounts"]
                   if PurePosixPath(path).is_relative_to(PurePosixPath(m["mountPath"]))]
        assert holding, f"{path} lies on no volume: the root filesystem is read-only"
        mount = max(holding, key=lambda m: len(PurePosixPath(m["mountPath"]).parts))
        (volume,) = [v for v in self.pod["volumes"] if v["name"] == mount["name"]]
        return mount, volume


@pytest.fixture(scope="module")
def base() -> Built:
    return Built(BASE)


@pytest.fixture(scope="module")
def gpu() -> Built:
    return Built(GPU)


def _kustomizations() -> list[Path]:
    return sorted(path.parent for path in K8S.rglob("kustomization.yaml"))


def _resource_files() -> list[Path]:
    """Every file that holds whole objects: the kustomizations' resources and the examples (patches are partial
    and are checked built)."""
    files = [directory / resource for directory in _kustomizations()
             for resource in _kustomization(directory).get("resources", [])]
    return sorted({path.resolve() for path in files if path.is_file()} | set(EXAMPLES.glob("*.yaml")))


def _quantity_gib(quantity: str) -> float:
    units = {"Gi": 1.0, "Mi": 1 / 1024, "G": 1e9 / 2**30, "M": 1e6 / 2**30}
    for unit, scale in units.items():
        if str(quantity).endswith(unit):
            return float(str(quantity)[:-len(unit)]) * scale
    return float(quantity) / 2**30


# --- valid Kubernetes --------------------------------------------------------------------------------------


def test_every_yaml_file_is_a_kustomization_a_resource_a_patch_or_an_example():
    used = {path.resolve() for path in _resource_files()}
    for directory in _kustomizations():
        used.add((directory / "kustomization.yaml").resolve())
        used |= {(directory / entry["path"]).resolve() for entry in _kustomization(directory).get("patches", [])}
    files = {path.resolve() for path in K8S.rglob("*.yaml")} | {path.resolve() for path in K8S.rglob("*.yml")}
    assert files - used == set()
    assert {path.name for path in _resource_files()} >= {
        "configmap.yaml", "deployment.yaml", "service.yaml", "pvc-model.yaml", "hpa.yaml", "pdb.yaml",
        "secret-api-keys.yaml", "pv-model-nfs.yaml"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", _resource_files(), ids=lambda path: str(path.relative_to(K8S)))
def test_every_manifest_is_valid_kubernetes(path, version):
    docs = _documents(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("directory", [BASE, GPU], ids=["base", "gpu"])
def test_every_built_object_is_valid_kubernetes(directory, version):
    for doc in _build(directory):
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("directory", [BASE, GPU], ids=["base", "gpu"])
def test_kustomize_builds_what_these_checks_read(directory):
    """kubectl's (or kustomize's) own build is valid, and equal to ours but for the labels it sets."""
    real = _kustomize(directory)
    for doc in real:
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)
    added = {}
    for entry in _kustomization(BASE).get("labels", []):
        added.update(entry["pairs"])

    def without_added(value):
        if isinstance(value, dict):
            return {key: without_added(item) for key, item in value.items()
                    if not (key in added and item == added[key]) and not (key == "labels" and item == {})}
        if isinstance(value, list):
            return [without_added(item) for item in value]
        return value

    def by_key(docs):
        return {_key(doc): without_added(doc) for doc in docs}

    ours = by_key(_build(directory))
    theirs = by_key(real)
    assert set(ours) == set(theirs)
    for key in ours:
        if key[0] == "Deployment":  # env order aside (kustomize puts a patch's new items first, as we do)
            for doc in (ours[key], theirs[key]):
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    container["env"] = sorted(container.get("env", []), key=lambda item: item["name"])
        assert ours[key] == theirs[key], key


# --- what operators rely on --------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["base", "gpu"])
def test_the_configmap_holds_real_settings_that_load(profile, request):
    built: Built = request.getfixturevalue(profile)
    names = {env_name(f.name): f for f in setting_fields()}
    for variable in built.environment:
        if variable.startswith("DPP_"):
            assert variable in names, f"{variable} is no setting of dpp"
            assert not names[variable].metadata["secret"], f"{variable} is a secret: a Secret, not a ConfigMap"
    assert all(isinstance(value, str) for value in built.config.values()), "ConfigMap values are strings"
    settings = load_settings({}, built.environment)  # raises SettingsError on a value dpp would refuse
    assert settings.port == built.port("http")
    assert settings.host == "0.0.0.0"
    assert settings.effective_device == {"base": "cpu", "gpu": "cuda"}[profile]
    assert settings.metrics_open, "Prometheus scrapes without a key"
    assert settings.proxies, "DPP_TRUSTED_PROXIES names the cluster's pod network (EDIT comment)"


def test_service_links_cannot_set_dpp_variables(base):
    # A Service named dpp would otherwise put DPP_PORT=tcp://10.x.x.x:80 into every pod's environment.
    assert base.pod["enableServiceLinks"] is False


@pytest.mark.parametrize("profile", ["base", "gpu"])
def test_probes_ask_the_apps_own_routes(profile, request):
    built: Built = request.getfixturevalue(profile)
    container, settings = built.container, load_settings({}, built.environment)
    startup, ready, live = container["startupProbe"], container["readinessProbe"], container["livenessProbe"]
    for probe in (startup, ready, live):
        assert built.port(probe["httpGet"]["port"]) == settings.port
        assert probe.get("timeoutSeconds", 1) < probe.get("periodSeconds", 10)
    assert ready["httpGet"]["path"] == "/readyz" and ready["periodSeconds"] == 10
    assert live["httpGet"]["path"] == "/healthz" and live["periodSeconds"] == 30
    assert startup["httpGet"]["path"] in ("/readyz", "/healthz")
    allowed = startup.get("initialDelaySeconds", 0) + startup["periodSeconds"] * startup["failureThreshold"]
    assert allowed >= 600, "a big model may take minutes to load"
    # A rollout is not called failed while a new pod may still be loading its model.
    assert built.deployment["spec"]["progressDeadlineSeconds"] > allowed


@pytest.mark.parametrize("profile", ["base", "gpu"])
def test_the_grace_period_outlasts_the_prestop_sleep_and_the_drain(profile, request):
    built: Built = request.getfixturevalue(profile)
    drain = load_settings({}, built.environment).drain_seconds
    assert float(built.config["DPP_DRAIN_SECONDS"]) == drain
    sleep = built.container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert 0 < sleep < 30
    assert built.pod["terminationGracePeriodSeconds"] > drain + sleep


@pytest.mark.parametrize("profile", ["base", "gpu"])
def test_pods_run_as_the_images_user_with_nothing_to_spare(profile, request):
    built: Built = request.getfixturevalue(profile)
    pod, container = built.pod["securityContext"], built.container["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 10001
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["runAsNonRoot"] is True and container["runAsUser"] == 10001
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container["seccompProfile"] == {"type": "RuntimeDefault"}
    assert built.pod["automountServiceAccountToken"] is False
    assert built.container["image"] == {"base": "dpp:0.1.0", "gpu": "dpp:0.1.0-gpu"}[profile]
    assert {"name": "dpp", "newName": "dpp", "newTag": "0.1.0"} in _kustomization(BASE)["images"]


def test_the_gpu_overlay_runs_the_image_of_a_gpu_bundle():
    (image,) = _kustomization(GPU)["images"]
    assert image["newTag"] == "0.1.0-gpu"  # not the base's image, which is built from a CPU bundle
    assert "--cuda cu126" in (GPU / "kustomization.yaml").read_text()


@pytest.mark.parametrize("profile", ["base", "gpu"])
def test_the_model_is_shared_read_only_and_every_written_dir_is_writable(profile, request):
    built: Built = request.getfixturevalue(profile)
    environment = built.environment
    mount, volume = built.mount_of(environment["DPP_MODEL_DIR"])
    assert mount["readOnly"] is True and volume["persistentVolumeClaim"]["readOnly"] is True
    claim = built.by_key[("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])]
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert "storageClassName" in claim["spec"], "left for the operator, with its EDIT comment"
    for variable in WRITTEN_DIRS:
        if variable in environment:
            mount, volume = built.mount_of(environment[variable])
            assert not mount.get("readOnly") and "emptyDir" in volume, variable
            assert volume["emptyDir"].get("sizeLimit"), f"{variable}: an unbounded emptyDir can fill the node"
    assert {"DPP_DATA_DIR", "DPP_LOG_DIR", "GRADIO_TEMP_DIR"} <= set(environment)
    # Jobs and logs do not share a volume with the temporary files, so that none fills the others.
    volumes = {built.mount_of(environment[v])[1]["name"] for v in ("DPP_DATA_DIR", "DPP_LOG_DIR", "GRADIO_TEMP_DIR")}
    assert len(volumes) == 3
    mounted = {m["name"] for m in built.container["volumeMounts"]}
    assert mounted == {v["name"] for v in built.pod["volumes"]}, "every volume is mounted, every mount has one"


def test_the_keys_come_from_an_optional_secret_whose_example_holds_no_key(base, tmp_path):
    mount, volume = base.mount_of(base.config["DPP_API_KEYS_FILE"])
    assert mount["readOnly"] is True
    secret = volume["secret"]
    assert secret["optional"] is True
    (example,) = _documents(EXAMPLES / "secret-api-keys.yaml")
    assert example["metadata"]["name"] == secret["secretName"]
    assert ("Secret", secret["secretName"]) not in base.by_key, "an apply would overwrite the real keys"
    (item,) = secret["items"]
    assert PurePosixPath(mount["mountPath"]) / item["path"] == PurePosixPath(base.config["DPP_API_KEYS_FILE"])
    assert set(example["stringData"]) == {item["key"]}
    # Applied as it stands, the example stops dpp at start instead of becoming a key anyone can read here.
    keys = tmp_path / "keys.txt"
    keys.write_text(example["stringData"][item["key"]], "utf-8")
    with pytest.raises(KeysError, match="holds no key"):
        load_keys(keys, "")


def test_the_service_keeps_each_client_on_one_replica(base):
    service, pod_labels = base.get("Service"), base.deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["externalTrafficPolicy"] == "Local", "the pods see the clients' own addresses"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert base.port(port["targetPort"]) == load_settings({}, base.environment).port


def test_two_replicas_an_autoscaler_from_two_and_one_always_available(base):
    deployment, hpa, pdb = base.deployment, base.get("HorizontalPodAutoscaler"), base.get("PodDisruptionBudget")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in base.container["resources"]["requests"], "utilisation is of the request"
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # The rollout never goes below two serving replicas on CPU: a new pod loads before an old one goes.
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


@pytest.mark.parametrize("profile", ["base", "gpu"])
def test_prometheus_finds_the_metrics_port(profile, request):
    built: Built = request.getfixturevalue(profile)
    annotations = built.deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == load_settings({}, built.environment).port


def test_the_cpu_profile_asks_for_no_gpu(base):
    assert "nvidia.com/gpu" not in yaml.safe_dump(base.docs)
    assert "tolerations" not in base.pod


def test_the_gpu_overlay_gives_each_replica_one_gpu(base, gpu):
    resources = gpu.container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] in (1, "1")
    assert resources["requests"].get("nvidia.com/gpu", 1) in (1, "1")  # unset: the limit
    assert gpu.config["DPP_DEVICE"] == "cuda"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu.pod["tolerations"]
    assert _quantity_gib(resources["limits"]["memory"]) > _quantity_gib(base.container["resources"]["limits"]["memory"])
    assert gpu.deployment["spec"]["replicas"] == 2
    # No spare GPU for a surge pod: one replica at a time is replaced, the other serves.
    assert gpu.deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    hpa = gpu.get("HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] == 2 < hpa["maxReplicas"] <= 4
    assert hpa["maxReplicas"] < base.get("HorizontalPodAutoscaler")["spec"]["maxReplicas"]
    # Everything else is the base's: the overlay changes only the GPU's settings.
    assert {k: v for k, v in gpu.config.items() if k != "DPP_DEVICE"} == \
        {k: v for k, v in base.config.items() if k != "DPP_DEVICE"}
