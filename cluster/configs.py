"""Load and check the cluster configurations in ``cluster/`` the way Ray and KubeRay read them.

Launcher YAMLs (``ray up``/``ray submit``) go through Ray's own code path: ``prepare_config()`` (merges the
provider's ``defaults.yaml``, folds ``setup_commands`` into the head and worker lists, fills min/max
workers) and then ``validate_config()`` (``jsonschema`` against the ``ray-schema.json`` shipped inside the
installed ``ray`` package, plus Ray's cross-field checks). That is what ``ray up`` runs before it touches a
cloud API; nothing here needs ssh or credentials.

KubeRay manifests (``RayCluster``, ``RayJob``) have no schema in the ray package, so
:func:`kuberay_problems` checks their structure: API version, kind, ``rayVersion`` equal to the installed
Ray, a head group, worker groups with GPU limits, one image everywhere, the shared data volume mounted
at the same path on every pod, and an entrypoint for a ``RayJob``.

Security (issue: no open door): every configuration starts Ray with token authentication
(``RAY_AUTH_MODE=token``; the token from a Kubernetes Secret or the user's ``~/.ray/auth_token``, never from
the repository); a dashboard on a public address without it is reported as such. KubeRay pods run non-root
without privilege escalation or a service-account token, under a NetworkPolicy that keeps Ray's ports
(6379, 10001, 8265) to the cluster's own pods (8265 also to peers the user names). The Dockerfile pins its
base image by digest; nothing downloads a script into a shell.

This module never imports ``pipeline`` (see ``tests/test_layering.py``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from shards.raycluster import RAY_TRAIN_ENV

CLUSTER_DIR = Path(__file__).resolve().parent
REPO_ROOT = CLUSTER_DIR.parent
LAUNCHER_YAMLS = ("local.yaml", "aws-gpu.yaml")
KUBERAY_MANIFESTS = ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml")
NETWORK_POLICY = "kuberay/networkpolicy.yaml"
DOCKERFILE = "kuberay/Dockerfile"
# Ray's client ports the NetworkPolicy must keep inside the cluster: GCS, Ray Client server, dashboard/Jobs API.
RAY_PORTS = (6379, 10001, 8265)
DASHBOARD_PORT = 8265
POD_LABEL = ("app.kubernetes.io/part-of", "efficient3d")
TOKEN_FILE = "~/.ray/auth_token"
_PIPE_TO_SHELL = re.compile(r"\b(curl|wget)\b[^\n|]*\|\s*(sudo\s+)?(env\s+[^|]*?)?\b(sh|bash|zsh|python3?)\b")

KUBERAY_API_VERSION = "ray.io/v1"
KUBERAY_KINDS = ("RayCluster", "RayJob")
GPU_RESOURCE = "nvidia.com/gpu"

# Keys that Ray fills from the provider's defaults.yaml when a config leaves them out. Ray's AWS defaults
# install a nightly Ray wheel in ``setup_commands``, so a config of ours must say every one of them itself.
MUST_NOT_INHERIT = ("setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
                    "worker_start_ray_commands", "file_mounts")


class ClusterConfigError(ValueError):
    """A cluster configuration that Ray (or our structural check) rejects."""


def load_yaml(path: str | Path) -> Any:
    """The single YAML document in ``path``."""
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def ray_schema_path() -> Path:
    """The JSON schema of launcher YAMLs that ships inside the installed ``ray`` package."""
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).resolve().parent / "ray-schema.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is ray installed with its autoscaler?")
    return path


def prepare_launcher_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Ray's own check of a launcher config: ``prepare_config()`` then ``validate_config()``.

    Returns the prepared config (defaults merged, setup commands folded in). Raises
    :class:`ClusterConfigError` with Ray's message when Ray rejects it.
    """
    import click
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    if not isinstance(config, Mapping):
        raise ClusterConfigError(f"a launcher config is a mapping, not {type(config).__name__}")
    try:
        prepared = prepare_config(copy.deepcopy(dict(config)))
        validate_config(prepared)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise ClusterConfigError(f"ray-schema.json: {where}: {exc.message}") from exc
    except click.ClickException as exc:  # prepare_config aborts through Ray's cli_logger
        raise ClusterConfigError(exc.format_message()) from exc
    except (KeyError, TypeError, AssertionError, RuntimeError, ValueError) as exc:  # Ray fails on these too
        raise ClusterConfigError(f"{type(exc).__name__}: {exc}") from exc
    return prepared


def validate_launcher_yaml(path: str | Path) -> dict[str, Any]:
    """Load a launcher YAML and run Ray's check on it; returns the prepared config."""
    try:
        return prepare_launcher_config(load_yaml(path))
    except ClusterConfigError as exc:
        raise ClusterConfigError(f"{path}: {exc}") from exc


def launcher_problems(raw: Mapping[str, Any], *, code_mount: str = "~/efficient3d", env_dir: str = "~/e3d-venv",
                      local_root: str | Path = REPO_ROOT, require_gpu_workers: bool = False) -> list[str]:
    """What this project needs from a launcher YAML beyond Ray's schema; empty when all is there.

    ``raw`` is the YAML as written (before ``prepare_config``). Checked: no command list or file mount is
    inherited from Ray's provider defaults; the code is mounted at ``code_mount`` from a local directory
    holding ``pyproject.toml`` (relative paths resolve against ``local_root``, the directory ``ray up`` is
    run from); every node installs ffmpeg with apt-get, installs the project editable into ``env_dir`` and
    puts ``env_dir/bin`` first on the login shell's PATH (``ray submit`` runs ``python <script>`` there);
    with ``require_gpu_workers``, some worker node type declares GPUs.
    """
    problems = [f"{key}: not set, so Ray's provider default is used" for key in MUST_NOT_INHERIT if key not in raw]
    common = [str(c) for c in raw.get("setup_commands") or []]
    for key, value in RAY_TRAIN_ENV.items():
        if not any(f"export {key}={value}" in c and ".bashrc" in c for c in common):
            problems.append(f"setup_commands: {key}={value} is not exported in ~/.bashrc ({RAY_TRAIN_ENV_WHY})")
    mounts = raw.get("file_mounts") or {}
    local = mounts.get(code_mount)
    if local is None:
        problems.append(f"file_mounts: nothing mounted at {code_mount}")
    else:
        src = Path(str(local)).expanduser()
        src = src if src.is_absolute() else Path(local_root) / src
        if not (src / "pyproject.toml").is_file():
            problems.append(f"file_mounts: {code_mount} <- {local} has no pyproject.toml (relative to {local_root})")

    env_home = env_dir.replace("~", "$HOME", 1)
    common = list(raw.get("setup_commands") or [])
    for role in ("head", "worker"):
        commands = "\n".join(common + list(raw.get(f"{role}_setup_commands") or []))
        if not re.search(r"apt-get[^\n]* install[^\n]*\bffmpeg\b", commands):
            problems.append(f"{role} setup: ffmpeg is not installed with apt-get")
        if not re.search(rf"pip install[^\n]* -e {re.escape(code_mount)}(\s|$)", commands):
            problems.append(f"{role} setup: the project is not installed with pip install -e {code_mount}")
        path_line = f'export PATH="{env_home}/bin:$PATH"'
        if not any(path_line in c and ".bashrc" in c for c in commands.splitlines()):
            problems.append(f"{role} setup: {path_line} is not added to ~/.bashrc")

    problems += _launcher_security_problems(raw, local_root)

    if require_gpu_workers:
        head = raw.get("head_node_type")
        gpu_types = [name for name, nt in (raw.get("available_node_types") or {}).items()
                     if name != head and (nt.get("resources") or {}).get("GPU", 0) > 0]
        if not gpu_types:
            problems.append("available_node_types: no worker node type declares GPU resources")
    return problems


def _launcher_security_problems(raw: Mapping[str, Any], local_root: str | Path) -> list[str]:
    """Token authentication on every node (and for drivers on the head), the token synced from outside the
    repository, no downloaded script piped into a shell, no token written into a command."""
    problems = []
    common = [str(c) for c in raw.get("setup_commands") or []]
    exported = any("export RAY_AUTH_MODE=token" in c and ".bashrc" in c for c in common)
    for role in ("head", "worker"):
        starts = [str(c) for c in raw.get(f"{role}_start_ray_commands") or []]
        ray_starts = [c for c in starts if re.search(r"\bray start\b", c)]
        if not exported and not all("RAY_AUTH_MODE=token" in c for c in ray_starts):
            problems.append(f"{role}_start_ray_commands: Ray starts without token authentication "
                            f"(RAY_AUTH_MODE=token is neither exported in ~/.bashrc nor set on `ray start`)")
            if role == "head" and any(re.search(r"--dashboard-host[= ](?!127\.0\.0\.1|localhost)\S+", c)
                                      for c in ray_starts):
                problems.append(f"head_start_ray_commands: the dashboard and Jobs API (port {DASHBOARD_PORT}) listen "
                                "on a public address without authentication: anyone who reaches the head can run code")
    mounts = raw.get("file_mounts") or {}
    token_src = mounts.get(TOKEN_FILE)
    if token_src is None:
        problems.append(f"file_mounts: the token is not synced to {TOKEN_FILE} on every node")
    else:
        src = Path(str(token_src)).expanduser()
        src = src if src.is_absolute() else Path(local_root) / src
        root = Path(local_root).resolve()
        if src.resolve() == root or root in src.resolve().parents:
            problems.append(f"file_mounts: {TOKEN_FILE} <- {token_src} lies inside the repository; keep the token "
                            "out of it (e.g. ~/.ray/auth_token from `ray get-auth-token --generate`)")
    every = [str(c) for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                                "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
             for c in raw.get(key) or []]
    for c in every:
        if _PIPE_TO_SHELL.search(c):
            problems.append(f"a downloaded script is piped into a shell: {c!r}")
        if re.search(r"RAY_AUTH_TOKEN=(?!\$)\S", c):
            problems.append(f"a literal token in a command (it would be in the repository): {c[:60]!r}...")
    return problems


def dockerfile_problems(text: str) -> list[str]:
    """The base image pinned by digest (``FROM image:tag@sha256:<64 hex>``), nothing piped into a shell."""
    problems = []
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    if not froms:
        problems.append("no FROM line")
    for image in froms:
        if not re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", image):
            problems.append(f"FROM {image}: not pinned by digest (image:tag@sha256:<64 hex digits>)")
    for line in text.splitlines():
        if _PIPE_TO_SHELL.search(line):
            problems.append(f"a downloaded script is piped into a shell: {line.strip()!r}")
    return problems


def _env(container: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {e.get("name"): e for e in container.get("env") or [] if isinstance(e, Mapping)}


RAY_TRAIN_ENV_WHY = ("Ray Train's controller takes a worker's report only at each health check, 2 s by default; "
                     "see shards/raycluster.RAY_TRAIN_ENV")


def ray_env_problems(template: Mapping[str, Any] | None, where: str) -> list[str]:
    """Every Ray container of a pod template sets :data:`shards.raycluster.RAY_TRAIN_ENV`, as the embedded Ray
    does (Ray Train's controller runs in one of them)."""
    problems = []
    for i, c in enumerate(_containers(template)):
        env = _env(c)
        for key, value in RAY_TRAIN_ENV.items():
            if (env.get(key) or {}).get("value") != value:
                problems.append(f"{where}.spec.containers[{i}]: env {key} is not {value!r} ({RAY_TRAIN_ENV_WHY})")
    return problems


def pod_security_problems(template: Mapping[str, Any] | None, where: str, *, token_auth_by_operator: bool = False,
                          dashboard_public: bool = False) -> list[str]:
    """Token auth env from a Secret, non-root without privilege escalation, no service-account token, and
    the label the NetworkPolicy selects, for one pod template."""
    problems = []
    template = template or {}
    spec = template.get("spec") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if labels.get(POD_LABEL[0]) != POD_LABEL[1]:
        problems.append(f"{where}.metadata.labels: no {POD_LABEL[0]}: {POD_LABEL[1]} (the NetworkPolicy selects it)")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{where}.spec.automountServiceAccountToken: not false (Ray needs no Kubernetes API token)")
    if (spec.get("securityContext") or {}).get("runAsNonRoot") is not True:
        problems.append(f"{where}.spec.securityContext.runAsNonRoot: not true")
    for i, c in enumerate(spec.get("containers") or []):
        cw = f"{where}.spec.containers[{i}]"
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cw}.securityContext.allowPrivilegeEscalation: not false")
        if sc.get("privileged"):
            problems.append(f"{cw}.securityContext.privileged: true")
        if token_auth_by_operator:
            continue
        env = _env(c)
        mode = (env.get("RAY_AUTH_MODE") or {}).get("value")
        token = env.get("RAY_AUTH_TOKEN") or {}
        if mode != "token":
            problems.append(f"{cw}: Ray runs without token authentication (env RAY_AUTH_MODE is {mode!r}, not 'token')")
            if dashboard_public and i == 0:
                problems.append(f"{cw}: the dashboard and Jobs API (port {DASHBOARD_PORT}) listen on 0.0.0.0 without "
                                "authentication: anyone who reaches the pod can run code")
        if "value" in token:
            problems.append(f"{cw}: RAY_AUTH_TOKEN is written into the manifest; take it from a Secret (secretKeyRef)")
        elif not ((token.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name"):
            problems.append(f"{cw}: RAY_AUTH_TOKEN does not come from a Secret (valueFrom.secretKeyRef)")
    return problems


def _port_numbers(rule: Mapping[str, Any]) -> set[int] | None:
    """The ports an ingress rule admits; None for every port."""
    ports = rule.get("ports")
    if not ports:
        return None
    return {int(p["port"]) for p in ports if isinstance(p, Mapping) and str(p.get("port", "")).isdigit()}


def networkpolicy_problems(doc: Mapping[str, Any]) -> list[str]:
    """The NetworkPolicy selects the Ray pods and admits Ray's ports (6379, 10001, 8265) only from those pods,
    except 8265 (dashboard / Jobs API) from peers the user names."""
    if not isinstance(doc, Mapping) or doc.get("kind") != "NetworkPolicy":
        return ["not a NetworkPolicy"]
    spec = doc.get("spec") or {}
    problems = []
    if ((spec.get("podSelector") or {}).get("matchLabels") or {}).get(POD_LABEL[0]) != POD_LABEL[1]:
        problems.append(f"spec.podSelector: does not select {POD_LABEL[0]}: {POD_LABEL[1]}")
    if "Ingress" not in (spec.get("policyTypes") or []):
        problems.append("spec.policyTypes: no Ingress")
    own = {"podSelector": {"matchLabels": {POD_LABEL[0]: POD_LABEL[1]}}}
    for i, rule in enumerate(spec.get("ingress") or []):
        peers = rule.get("from")
        ports = _port_numbers(rule)
        outside = [p for p in peers or [{}] if p != own]
        if not outside:
            continue  # the cluster's own pods: any port
        admitted = set(RAY_PORTS) if ports is None else ports & set(RAY_PORTS)
        if admitted - {DASHBOARD_PORT}:
            problems.append(f"spec.ingress[{i}]: admits port(s) {sorted(admitted - {DASHBOARD_PORT})} from outside "
                            "the cluster's pods")
        if any("ipBlock" in p for p in outside) and DASHBOARD_PORT in admitted:
            problems.append(f"spec.ingress[{i}]: admits the dashboard from an ipBlock; name pods or namespaces")
    return problems


def _containers(template: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    return list(((template or {}).get("spec") or {}).get("containers") or [])


def _pvc_mounts(template: Mapping[str, Any] | None) -> set[tuple[str, str]]:
    """``(claimName, mountPath)`` of every PersistentVolumeClaim the pod's first container mounts."""
    spec = (template or {}).get("spec") or {}
    claims = {v.get("name"): v["persistentVolumeClaim"].get("claimName")
              for v in spec.get("volumes") or [] if v.get("persistentVolumeClaim")}
    containers = _containers(template)
    mounts = containers[0].get("volumeMounts") or [] if containers else []
    return {(claims[m.get("name")], m.get("mountPath")) for m in mounts if m.get("name") in claims}


def _quantity(value: Any) -> float:
    """A Kubernetes quantity as a number (only the plain integers a GPU count uses)."""
    try:
        return float(str(value))
    except ValueError:
        return -1.0


def kuberay_problems(doc: Mapping[str, Any], *, ray_version: str | None = None,
                     require_gpu: bool = True) -> list[str]:
    """Structural problems of a KubeRay ``RayCluster`` or ``RayJob`` manifest; empty when none.

    ``ray_version`` defaults to the installed ray's; the manifest's ``rayVersion`` must equal it.
    """
    if ray_version is None:
        import ray

        ray_version = ray.__version__
    if not isinstance(doc, Mapping):
        return [f"a manifest is a mapping, not {type(doc).__name__}"]
    problems: list[str] = []
    if doc.get("apiVersion") != KUBERAY_API_VERSION:
        problems.append(f"apiVersion is {doc.get('apiVersion')!r}, not {KUBERAY_API_VERSION!r}")
    kind = doc.get("kind")
    if kind not in KUBERAY_KINDS:
        return [*problems, f"kind is {kind!r}, not one of {', '.join(KUBERAY_KINDS)}"]
    meta = doc.get("metadata") or {}
    if not (meta.get("name") or meta.get("generateName")):
        problems.append("metadata: no name")
    spec = doc.get("spec")
    if not isinstance(spec, Mapping):
        return [*problems, "spec: missing"]

    if kind == "RayJob":
        entrypoint = spec.get("entrypoint")
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            problems.append("spec.entrypoint: missing")
        if "clusterSelector" in spec:  # runs on an existing RayCluster, which is checked on its own
            return problems
        cluster = spec.get("rayClusterSpec")
        prefix = "spec.rayClusterSpec"
        if not isinstance(cluster, Mapping):
            return [*problems, f"{prefix}: missing (and no clusterSelector)"]
    else:
        cluster, prefix = spec, "spec"

    if str(cluster.get("rayVersion")) != ray_version:
        problems.append(f"{prefix}.rayVersion is {cluster.get('rayVersion')!r}, the installed ray is {ray_version!r}")

    head = cluster.get("headGroupSpec")
    if not isinstance(head, Mapping):
        return [*problems, f"{prefix}.headGroupSpec: missing"]
    by_operator = ((cluster.get("authOptions") or {}).get("mode") == "token")  # KubeRay >= 1.5.1 injects the env
    head_params = head.get("rayStartParams") or {}
    public = str(head_params.get("dashboard-host", "127.0.0.1")) not in ("127.0.0.1", "localhost")
    problems += pod_security_problems(head.get("template"), f"{prefix}.headGroupSpec.template",
                                      token_auth_by_operator=by_operator, dashboard_public=public)
    problems += ray_env_problems(head.get("template"), f"{prefix}.headGroupSpec.template")
    for i, g in enumerate(cluster.get("workerGroupSpecs") or []):
        if isinstance(g, Mapping):
            problems += pod_security_problems(g.get("template"), f"{prefix}.workerGroupSpecs[{i}].template",
                                              token_auth_by_operator=by_operator)
            problems += ray_env_problems(g.get("template"), f"{prefix}.workerGroupSpecs[{i}].template")
    if kind == "RayJob" and spec.get("submissionMode", "K8sJobMode") == "K8sJobMode" and not by_operator:
        sub = spec.get("submitterPodTemplate")
        if not isinstance(sub, Mapping):
            problems.append("spec.submitterPodTemplate: missing; the submitter pod needs the token to reach the "
                            "Jobs API")
        else:
            problems += pod_security_problems(sub, "spec.submitterPodTemplate")
    images: set[str] = set()
    head_containers = _containers(head.get("template"))
    if not head_containers:
        problems.append(f"{prefix}.headGroupSpec.template.spec.containers: none")
    else:
        images.add(str(head_containers[0].get("image") or ""))
    if not isinstance(head.get("rayStartParams", {}), Mapping):
        problems.append(f"{prefix}.headGroupSpec.rayStartParams: not a mapping")
    head_mounts = _pvc_mounts(head.get("template"))

    groups = cluster.get("workerGroupSpecs")
    if not isinstance(groups, list) or not groups:
        return [*problems, f"{prefix}.workerGroupSpecs: none"]
    gpu_groups = []
    names = set()
    for i, g in enumerate(groups):
        where = f"{prefix}.workerGroupSpecs[{i}]"
        if not isinstance(g, Mapping):
            problems.append(f"{where}: not a mapping")
            continue
        name = g.get("groupName")
        if not name:
            problems.append(f"{where}.groupName: missing")
        elif name in names:
            problems.append(f"{where}.groupName: {name!r} twice")
        names.add(name)
        counts = {k: g.get(k) for k in ("replicas", "minReplicas", "maxReplicas")}
        if not all(isinstance(v, int) and v >= 0 for v in counts.values()):
            problems.append(f"{where}: replicas, minReplicas and maxReplicas must be integers >= 0, got {counts}")
        elif not counts["minReplicas"] <= counts["replicas"] <= counts["maxReplicas"]:
            problems.append(f"{where}: needs minReplicas <= replicas <= maxReplicas, got {counts}")
        if not isinstance(g.get("rayStartParams", {}), Mapping):
            problems.append(f"{where}.rayStartParams: not a mapping")
        containers = _containers(g.get("template"))
        if not containers:
            problems.append(f"{where}.template.spec.containers: none")
            continue
        images.add(str(containers[0].get("image") or ""))
        limits = (containers[0].get("resources") or {}).get("limits") or {}
        if GPU_RESOURCE in limits:
            if _quantity(limits[GPU_RESOURCE]) < 1:
                problems.append(f"{where}: {GPU_RESOURCE} limit {limits[GPU_RESOURCE]!r} is not a count >= 1")
            else:
                gpu_groups.append(name)
        missing = head_mounts - _pvc_mounts(g.get("template"))
        if missing:
            problems.append(f"{where}: does not mount the head's shared volume(s) {sorted(missing)} at the same path")
    if require_gpu and not gpu_groups:
        problems.append(f"{prefix}.workerGroupSpecs: no group with a {GPU_RESOURCE} limit")
    if "" in images:
        problems.append(f"{prefix}: a Ray container has no image")
    elif len(images) > 1:
        problems.append(f"{prefix}: head and workers use different images {sorted(images)}; code and Python must match")
    return problems


def validate_kuberay_manifest(path: str | Path, *, ray_version: str | None = None,
                              require_gpu: bool = True) -> dict[str, Any]:
    """Load a KubeRay manifest and raise :class:`ClusterConfigError` listing every structural problem."""
    doc = load_yaml(path)
    problems = kuberay_problems(doc, ray_version=ray_version, require_gpu=require_gpu)
    if problems:
        raise ClusterConfigError(f"{path}: " + "; ".join(problems))
    return doc


ALL_CONFIGS = (*LAUNCHER_YAMLS, *KUBERAY_MANIFESTS, NETWORK_POLICY, DOCKERFILE)


def check_all(root: str | Path = CLUSTER_DIR, *, names: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Every configuration under ``root``: ``{relative path: problems}`` (Ray's error counts as one)."""
    root = Path(root)
    results: dict[str, list[str]] = {}
    for name in names or ALL_CONFIGS:
        path = root / name
        if name == DOCKERFILE:
            problems = dockerfile_problems(path.read_text(encoding="utf-8"))
        elif name == NETWORK_POLICY:
            problems = networkpolicy_problems(load_yaml(path))
        elif name in LAUNCHER_YAMLS:
            try:
                validate_launcher_yaml(path)
                problems = launcher_problems(load_yaml(path), require_gpu_workers=name != "local.yaml")
            except ClusterConfigError as exc:
                problems = [str(exc)]
        else:
            problems = kuberay_problems(load_yaml(path))
        results[name] = problems
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m cluster.configs [DIR]``: check every configuration in ``cluster/`` (or a copy of it in
    DIR); non-zero on any problem."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    bad = 0
    for name, problems in check_all(args[0] if args else CLUSTER_DIR).items():
        print(f"{name}: {'OK' if not problems else ''}")
        for p in problems:
            print(f"  {p}")
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
