"""Cluster configurations (cluster/): the launcher YAMLs pass Ray's own check and broken copies fail it, the
KubeRay manifests have the structure KubeRay needs, the documented commands parse, and — against a real
local head on loopback — `ray submit`'s command and a Jobs API submission both preprocess a dataset."""

from __future__ import annotations

import copy
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import ray

from cluster import configs
from cluster.configs import ClusterConfigError, kuberay_problems, launcher_problems, prepare_launcher_config
from pipeline.cli import build_parser
from preprocess.synth import SynthConfig, generate
from shards.manifest import verify
from tests.helpers import free_port, wait_for

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHERS = {"local": CLUSTER / "local.yaml", "aws-gpu": CLUSTER / "aws-gpu.yaml"}
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob.yaml"
VENV_BIN = Path(sys.executable).parent


# ---------------------------------------------------------------------------------------------------------
# Launcher YAMLs: Ray's prepare_config() + validate_config()


def test_the_schema_is_the_one_ray_uses():
    import json

    from ray.autoscaler._private import util

    path = configs.ray_schema_path()
    assert path.parent == Path(util.__file__).resolve().parents[1]  # ray/autoscaler/ray-schema.json
    schema = json.loads(path.read_text())
    assert "available_node_types" in schema["properties"] and schema["additionalProperties"] is False


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_yaml_passes_rays_own_check(name):
    raw = configs.load_yaml(LAUNCHERS[name])
    prepared = configs.validate_launcher_yaml(LAUNCHERS[name])
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # prepare_config folded the common setup into both roles, as `ray up` will run it.
    for role in ("head", "worker"):
        assert prepared[f"{role}_setup_commands"][: len(raw["setup_commands"])] == raw["setup_commands"]
    assert launcher_problems(raw, require_gpu_workers=name == "aws-gpu") == []
    if name == "local":
        assert prepared["provider"]["worker_ips"] and prepared["provider"]["head_ip"]
    else:
        gpus = {n: t["resources"].get("GPU", 0) for n, t in prepared["available_node_types"].items()}
        assert gpus[prepared["head_node_type"]] == 0 and max(gpus.values()) >= 8
        assert prepared["available_node_types"]["head"]["resources"] == {"CPU": 0}


def test_the_check_leaves_the_callers_config_alone():
    config = configs.load_yaml(LAUNCHERS["aws-gpu"])
    before = copy.deepcopy(config)
    prepare_launcher_config(config)
    assert config == before


BREAKAGES = {
    # caught by ray-schema.json (additionalProperties / types / required)
    "misspelled top-level key": lambda c: c.__setitem__("max_worker", 4),
    "provider without a type": lambda c: c["provider"].pop("type"),
    "setup commands not a list": lambda c: c.__setitem__("setup_commands", "apt-get install ffmpeg"),
    "node type without node_config": lambda c: c["available_node_types"]["gpu-1x"].pop("node_config"),
    "fractional GPU count": lambda c: c["available_node_types"]["gpu-1x"]["resources"].__setitem__("GPU", 0.5),
    "unknown key in a node type": lambda c: c["available_node_types"]["gpu-1x"].__setitem__("min_worker", 1),
    # caught by Ray's cross-field checks
    "head type not a node type": lambda c: c.__setitem__("head_node_type", "gpu-head"),
    "min_workers above max_workers": lambda c: c["available_node_types"]["gpu-1x"].__setitem__("min_workers", 99),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_aws_yaml_fails_rays_check(breakage):
    config = configs.load_yaml(LAUNCHERS["aws-gpu"])
    prepare_launcher_config(config)  # the intact copy passes
    BREAKAGES[breakage](config)
    with pytest.raises(ClusterConfigError):
        prepare_launcher_config(config)


@pytest.mark.parametrize("breakage", ["no worker_ips", "no head_ip", "node types on-prem", "misspelled key"])
def test_a_broken_local_yaml_fails_rays_check(breakage):
    config = configs.load_yaml(LAUNCHERS["local"])
    prepare_launcher_config(config)
    if breakage == "no worker_ips":
        config["provider"].pop("worker_ips")
    elif breakage == "no head_ip":
        config["provider"].pop("head_ip")
    elif breakage == "node types on-prem":  # the local provider has exactly one, its own
        config["available_node_types"] = {"gpu": {"resources": {"GPU": 1}, "node_config": {}}}
    else:
        config["file_mount"] = config.pop("file_mounts")
    with pytest.raises(ClusterConfigError):
        prepare_launcher_config(config)


def test_without_our_command_lists_ray_would_install_its_nightly_wheel():
    """Why launcher_problems insists on every command list: Ray's AWS defaults fill in what is missing."""
    config = configs.load_yaml(LAUNCHERS["aws-gpu"])
    del config["setup_commands"]
    prepared = prepare_launcher_config(config)  # Ray itself is happy...
    assert any("ray-wheels" in c for c in prepared["head_setup_commands"])  # ...with a nightly Ray on the head
    assert "setup_commands: not set, so Ray's provider default is used" in launcher_problems(config)


@pytest.mark.parametrize("breakage", ["no ffmpeg", "no editable install", "env not on PATH", "code not mounted",
                                      "mount of a dir without the project", "no GPU workers"])
def test_launcher_problems_catch_a_missing_project_step(breakage):
    config = configs.load_yaml(LAUNCHERS["aws-gpu"])
    assert launcher_problems(config, require_gpu_workers=True) == []
    setup = config["setup_commands"]
    if breakage == "no ffmpeg":
        setup[0] = setup[0].replace(" ffmpeg", "")
    elif breakage == "no editable install":
        config["setup_commands"] = [c.replace(" -e ~/efficient3d", " ray[default]") for c in setup]
    elif breakage == "env not on PATH":
        config["setup_commands"] = [c for c in setup if ".bashrc" not in c]
    elif breakage == "code not mounted":
        config["file_mounts"] = {}
    elif breakage == "mount of a dir without the project":
        config["file_mounts"] = {"~/efficient3d": "./cluster"}
    else:
        for t in config["available_node_types"].values():
            t["resources"].pop("GPU", None)
    assert launcher_problems(config, require_gpu_workers=True), breakage


def test_the_yamls_agree_on_what_every_node_runs():
    local, aws = (configs.load_yaml(p) for p in (LAUNCHERS["local"], LAUNCHERS["aws-gpu"]))
    assert local["setup_commands"] == aws["setup_commands"]
    token = {"~/.ray/auth_token": "~/.ray/auth_token"}  # from the user's machine, never from the repository
    assert local["file_mounts"] == aws["file_mounts"] == {"~/efficient3d": ".", **token}
    # ray submit's driver runs on the head: there, and only there, RAY_ADDRESS defaults to the local cluster.
    for cfg in (local, aws):
        assert any("RAY_ADDRESS" in c for c in cfg["head_setup_commands"])
        assert not any("RAY_ADDRESS" in c for c in cfg["setup_commands"] + cfg["worker_setup_commands"])


def test_check_all_reports_every_configuration_clean():
    assert configs.check_all() == {name: [] for name in configs.ALL_CONFIGS}
    assert set(configs.ALL_CONFIGS) >= {*configs.LAUNCHER_YAMLS, *configs.KUBERAY_MANIFESTS,
                                        "kuberay/networkpolicy.yaml", "kuberay/Dockerfile"}


# ---------------------------------------------------------------------------------------------------------
# KubeRay manifests


@pytest.mark.parametrize("path", [RAYCLUSTER, RAYJOB], ids=["raycluster", "rayjob"])
def test_kuberay_manifest_structure(path):
    doc = configs.validate_kuberay_manifest(path)
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == ray.__version__
    gpu = [g for g in spec["workerGroupSpecs"]
           if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu


def test_rayjob_runs_the_raycluster_spec_and_our_cli():
    cluster, job = configs.load_yaml(RAYCLUSTER), configs.load_yaml(RAYJOB)
    assert (cluster["kind"], job["kind"]) == ("RayCluster", "RayJob")
    assert job["spec"]["rayClusterSpec"] == cluster["spec"], "rayjob.yaml drifted from raycluster.yaml"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "pipeline"]
    args = build_parser().parse_args(argv[3:])
    assert (args.command, args.dataset) == ("preprocess", "kinetics600")
    assert args.src.startswith("/data/") and args.out.startswith("/data/")  # on the shared volume


def test_the_shared_volume_and_the_image():
    pvc = configs.load_yaml(CLUSTER / "kuberay" / "pvc.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in pvc["spec"]["accessModes"]
    head = configs.load_yaml(RAYCLUSTER)["spec"]["headGroupSpec"]["template"]
    assert (pvc["metadata"]["name"], "/data") in configs._pvc_mounts(head)
    dockerfile = (CLUSTER / "kuberay" / "Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:(\S+?)-py3\d+-gpu@sha256:[0-9a-f]{64}$", dockerfile, re.M)
    assert base and base.group(1) == ray.__version__
    pin = re.search(r'"ray\[default\]==([^"]+)"', (REPO / "pyproject.toml").read_text())
    assert pin and pin.group(1) == ray.__version__
    assert re.search(r"apt-get install[^\n]*ffmpeg", dockerfile) and "pip install --no-cache-dir -e" in dockerfile


KUBERAY_BREAKAGES = {
    "old apiVersion": lambda d: d.__setitem__("apiVersion", "ray.io/v1alpha1"),
    "unknown kind": lambda d: d.__setitem__("kind", "RayService2"),
    "rayVersion of another ray": lambda d: d["spec"].__setitem__("rayVersion", "2.9.0"),
    "no headGroupSpec": lambda d: d["spec"].pop("headGroupSpec"),
    "no worker groups": lambda d: d["spec"].__setitem__("workerGroupSpecs", []),
    "no GPU limit": lambda d: d["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resources"][
        "limits"].pop("nvidia.com/gpu"),
    "zero GPUs": lambda d: d["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resources"][
        "limits"].__setitem__("nvidia.com/gpu", "0"),
    "replicas above max": lambda d: d["spec"]["workerGroupSpecs"][0].__setitem__("replicas", 99),
    "two images": lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].__setitem__(
        "image", "rayproject/ray:2.60.0"),
    "worker without the data volume": lambda d: d["spec"]["workerGroupSpecs"][1]["template"]["spec"][
        "containers"][0]["volumeMounts"].pop(0),
    "no containers": lambda d: d["spec"]["headGroupSpec"]["template"]["spec"].__setitem__("containers", []),
    "worker on Ray Train's 2-s report poll": lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"][
        "containers"][0].__setitem__("env", [e for e in d["spec"]["workerGroupSpecs"][0]["template"]["spec"][
            "containers"][0]["env"] if e["name"] != "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]),
}


@pytest.mark.parametrize("breakage", sorted(KUBERAY_BREAKAGES))
def test_a_broken_raycluster_is_caught(breakage):
    doc = configs.load_yaml(RAYCLUSTER)
    assert kuberay_problems(doc) == []
    KUBERAY_BREAKAGES[breakage](doc)
    assert kuberay_problems(doc), breakage


@pytest.mark.parametrize("breakage", ["no entrypoint", "empty entrypoint", "no cluster", "broken cluster spec"])
def test_a_broken_rayjob_is_caught(breakage):
    doc = configs.load_yaml(RAYJOB)
    assert kuberay_problems(doc) == []
    if breakage == "no entrypoint":
        doc["spec"].pop("entrypoint")
    elif breakage == "empty entrypoint":
        doc["spec"]["entrypoint"] = "  "
    elif breakage == "no cluster":
        doc["spec"].pop("rayClusterSpec")
    else:
        doc["spec"]["rayClusterSpec"]["rayVersion"] = "1.0.0"
    assert kuberay_problems(doc), breakage
    # an existing cluster chosen by clusterSelector stands in for rayClusterSpec
    if breakage == "no cluster":
        doc["spec"]["clusterSelector"] = {"ray.io/cluster": "efficient3d"}
        assert kuberay_problems(doc) == []


# ---------------------------------------------------------------------------------------------------------
# The documented commands


def _readme_commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith(("ray ", "kubectl ", "docker "))]


@pytest.mark.parametrize("doc", ["README.md", "cluster/README.md"])
def test_documented_cluster_commands_name_real_files_and_parse(doc):
    commands = _readme_commands((REPO / doc).read_text())
    assert any(c.startswith("ray submit cluster/aws-gpu.yaml pipeline/cli.py preprocess kinetics600") for c in commands)
    assert any(c.startswith("ray job submit --address http://") and " --working-dir . -- python -m pipeline " in c
               for c in commands)
    assert any(c.startswith("kubectl apply -f cluster/kuberay/") for c in commands)
    parser = build_parser()
    for c in commands:
        argv = shlex.split(c.split(" #")[0])
        for path in (a for a in argv if a.startswith("cluster/")):
            assert (REPO / path).exists(), f"{doc}: {c!r} names {path}, which does not exist"
        if argv[:2] == ["ray", "submit"]:
            rest = argv[argv.index("pipeline/cli.py") + 1:]
        elif argv[:3] == ["ray", "job", "submit"]:
            rest = argv[argv.index("--") + 1:]
            assert rest[:3] == ["python", "-m", "pipeline"], c
            rest = rest[3:]
        else:
            continue
        parser.parse_args(rest)  # exits (fails the test) on an option the CLI does not have


# ---------------------------------------------------------------------------------------------------------
# A real head on loopback: `ray submit`'s command and the Jobs API


def _status(url: str, token: str | None = None) -> int:
    """The HTTP status of a GET (0 when nothing answers); ``token`` goes in an ``Authorization: Bearer`` header."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _answers(url: str, token: str | None = None) -> bool:
    return _status(url, token) == 200


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A real Ray head with its dashboard (Jobs API) on loopback, in its own process group.

    Token authentication is on, as every configuration in cluster/ starts it (RAY_AUTH_MODE=token, the
    token in RAY_AUTH_TOKEN); the project's environment is first on the head's PATH, as the launcher YAMLs
    arrange. Torn down with SIGKILL to its process group — never `ray stop`, which would stop every Ray on
    this machine.
    """
    gcs, dash = free_port(), free_port()
    temp_dir = f"/tmp/e3dhead2-{os.getpid()}"  # short: Ray's unix socket paths break when it is long
    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    log = tmp_path_factory.mktemp("head") / "head.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true", "--num-cpus=1",
             f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
             f"--temp-dir={temp_dir}"],
            stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{dash}"
        assert wait_for(lambda: _answers(f"{url}/api/version", token), proc, timeout=90), log.read_text()[-3000:]
        yield {"gcs": f"127.0.0.1:{gcs}", "url": url, "env": env, "log": log, "token": token}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def jester(tmp_path_factory):
    return generate("jester", tmp_path_factory.mktemp("src") / "jester",
                    SynthConfig(num_classes=2, videos_per_class=2, seed=0))


def _check_shards(out: Path, report) -> None:
    result = verify(str(out))
    assert result.ok, result.problems
    expected = sum(1 for it in report.items if it.expect == "ok")
    assert result.shards_checked >= 1 and result.samples_checked == expected


@pytest.mark.ray
@pytest.mark.slow
def test_jobs_api_preprocesses_on_the_head(head, jester, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    out = tmp_path / "shards"
    sid = f"e3d-preprocess-{os.getpid()}-{time.monotonic_ns()}"
    # The dashboard and the Jobs API answer nobody without the token, and nobody with a wrong one.
    assert _status(f"{head['url']}/api/version") == 401 and _status(f"{head['url']}/api/jobs/") == 401
    assert _status(f"{head['url']}/api/jobs/", "0" * 64) == 403
    assert _status(f"{head['url']}/api/jobs/", head["token"]) == 200
    client_env = {**head["env"], "PATH": os.environ.get("PATH", "")}
    without = {k: v for k, v in client_env.items() if k != "RAY_AUTH_TOKEN"}
    without["HOME"] = str(tmp_path)  # no ~/.ray/auth_token there either
    refused = subprocess.run([str(VENV_BIN / "ray"), "job", "submit", "--address", head["url"], "--", "true"],
                             cwd=REPO, env=without, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "Authentication" in refused.stdout + refused.stderr, refused.stderr[-2000:]
    # The README's form: `RAY_AUTH_MODE=token RAY_AUTH_TOKEN=... ray job submit --address http://HEAD:8265
    # --working-dir . -- python -m pipeline ...`
    proc = subprocess.run(
        [str(VENV_BIN / "ray"), "job", "submit", "--address", head["url"], "--submission-id", sid,
         "--working-dir", ".", "--", "python", "-m", "pipeline", "preprocess", "jester", "--src", str(jester.root),
         "--out", str(out), "--max-failed", "1", "--no-progress"],
        cwd=REPO, env=client_env, capture_output=True, text=True, timeout=240)
    client = JobSubmissionClient(head["url"], headers={"Authorization": f"Bearer {head['token']}"})
    logs = client.get_job_logs(sid)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs[-3000:]
    info = client.get_job_info(sid)
    assert info.status == JobStatus.SUCCEEDED
    assert info.runtime_env["working_dir"].startswith("gcs://")  # the repository was uploaded with the job
    assert "e3d: joining the existing Ray cluster at" in logs  # the driver joined the head
    assert re.search(r"failed fraction .*: OK", logs), logs[-3000:]
    _check_shards(out, jester)
    # the e3d verify command agrees
    check = subprocess.run([sys.executable, "-m", "pipeline", "verify", str(out)], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0 and " OK" in check.stdout, check.stdout + check.stderr


@pytest.mark.ray
@pytest.mark.slow
def test_ray_submit_runs_the_uploaded_cli_in_the_heads_login_shell(head, jester, tmp_path, monkeypatch):
    """`ray submit cluster/aws-gpu.yaml pipeline/cli.py preprocess ...` with only its ssh steps replaced.

    Ray's own `submit` command builds the remote command; the head is emulated by a fresh HOME holding only
    the uploaded script, the environment at ~/e3d-venv and a ~/.bashrc written by the YAML's own setup
    commands; the command then runs in Ray's login-shell wrapper, as ssh would run it, with no venv on PATH.
    """
    from click.testing import CliRunner
    from ray.autoscaler._private.command_runner import _with_interactive
    from ray.scripts import scripts

    calls = {}
    monkeypatch.setattr(scripts, "rsync", lambda cfg, src, dst, *a, **kw: calls.update(cfg=cfg, src=src, dst=dst))
    monkeypatch.setattr(scripts, "exec_cluster", lambda cfg, *a, cmd=None, **kw: calls.update(cmd=cmd))
    monkeypatch.chdir(REPO)
    out = tmp_path / "shards"
    result = CliRunner().invoke(scripts.submit, [
        "cluster/aws-gpu.yaml", "pipeline/cli.py", "preprocess", "jester", "--src", str(jester.root), "--out",
        str(out), "--max-failed", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert calls["src"] == "pipeline/cli.py" and calls["dst"] == "~/cli.py"
    assert calls["cmd"].startswith("python ~/cli.py preprocess jester --src ")

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / calls["src"], home / Path(calls["dst"]).name)  # only the script is uploaded
    (home / "e3d-venv").symlink_to(VENV_BIN.parent)  # what the YAML's uv commands build
    bare_path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                if p and Path(p).resolve() != VENV_BIN.resolve()) or "/usr/bin:/bin"
    # The token reaches the head as the YAMLs' file_mounts put it there: ~/.ray/auth_token, not the environment.
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(head["token"])
    env = {k: v for k, v in head["env"].items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    env.update({"HOME": str(home), "PATH": bare_path, "RAY_ADDRESS": head["gcs"]})
    prepared = configs.validate_launcher_yaml(LAUNCHERS["aws-gpu"])
    for c in prepared["head_setup_commands"]:
        if ".bashrc" in c:  # the PATH, RAY_AUTH_MODE and RAY_ADDRESS lines; the rest needs sudo and the network
            subprocess.run(["bash", "-c", c], env=env, check=True, timeout=30)
    bashrc = (home / ".bashrc").read_text()
    assert 'export PATH="$HOME/e3d-venv/bin:$PATH"' in bashrc and "RAY_ADDRESS" in bashrc
    assert "export RAY_AUTH_MODE=token" in bashrc

    remote = " ".join(_with_interactive(calls["cmd"]))  # what ssh hands to the head's shell
    proc = subprocess.run(remote, shell=True, executable="/bin/bash", cwd=home, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "e3d: joining the existing Ray cluster at" in proc.stderr, proc.stderr[-3000:]  # joined the head
    assert re.search(r"failed fraction .*: OK", proc.stdout), proc.stdout[-3000:]
    _check_shards(out, jester)


# ---------------------------------------------------------------------------------------------------------
# No open door: token authentication, pod security, network policy, pinned installs


def _without_auth(config: dict) -> dict:
    config["setup_commands"] = [c for c in config["setup_commands"] if "RAY_AUTH_MODE" not in c]
    return config


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_a_launcher_yaml_that_exposes_the_dashboard_without_auth_fails(name):
    config = _without_auth(configs.load_yaml(LAUNCHERS[name]))
    problems = launcher_problems(config, require_gpu_workers=name == "aws-gpu")
    assert any("without token authentication" in p for p in problems)
    assert any("listen on a public address without authentication" in p for p in problems)
    # setting it on each `ray start` instead of in ~/.bashrc is also token auth
    for role in ("head", "worker"):
        config[f"{role}_start_ray_commands"] = [c.replace("ray start", "RAY_AUTH_MODE=token ray start")
                                                for c in config[f"{role}_start_ray_commands"]]
    assert not any("authentication" in p for p in launcher_problems(config))


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_a_launcher_yaml_without_the_report_poll_setting_fails(name):
    """Every node exports shards.raycluster.RAY_TRAIN_ENV, as the embedded Ray sets it (Ray Train's controller
    takes a worker's report only at each health check, 2 s by default)."""
    config = configs.load_yaml(LAUNCHERS[name])
    config["setup_commands"] = [c for c in config["setup_commands"] if "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" not in c]
    problems = launcher_problems(config, require_gpu_workers=name == "aws-gpu")
    assert any("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.5 is not exported" in p for p in problems)


def test_python_m_cluster_configs_fails_on_a_config_without_auth(tmp_path):
    copy_dir = tmp_path / "cluster"
    shutil.copytree(CLUSTER, copy_dir, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    text = (copy_dir / "local.yaml").read_text()
    (copy_dir / "local.yaml").write_text("\n".join(ln for ln in text.splitlines() if "RAY_AUTH_MODE" not in ln))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    bad = subprocess.run([sys.executable, "-m", "cluster.configs", str(copy_dir)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "local.yaml: \n" in bad.stdout, bad.stdout + bad.stderr
    assert "without authentication" in bad.stdout
    good = subprocess.run([sys.executable, "-m", "cluster.configs"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert good.returncode == 0, good.stdout + good.stderr


@pytest.mark.parametrize("breakage", ["curl | sh", "token in the repo", "token in a command", "no token mount"])
def test_launcher_security_problems_are_caught(breakage, tmp_path):
    config = configs.load_yaml(LAUNCHERS["aws-gpu"])
    if breakage == "curl | sh":
        config["setup_commands"].insert(1, "curl -LsSf https://astral.sh/uv/install.sh | env UV_NO_MODIFY_PATH=1 sh")
    elif breakage == "token in the repo":
        config["file_mounts"]["~/.ray/auth_token"] = "./cluster/auth_token"
    elif breakage == "token in a command":
        config["head_start_ray_commands"][1] = "RAY_AUTH_TOKEN=abc123 " + config["head_start_ray_commands"][1]
    else:
        config["file_mounts"].pop("~/.ray/auth_token")
    assert launcher_problems(config, require_gpu_workers=True), breakage


def _pods(doc: dict) -> list[dict]:
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    return [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]


SECURITY_BREAKAGES = {
    "no RAY_AUTH_MODE": lambda d: _pods(d)[0]["spec"]["containers"][0]["env"].__setitem__(
        slice(None), [e for e in _pods(d)[0]["spec"]["containers"][0]["env"] if e["name"] != "RAY_AUTH_MODE"]),
    "literal token": lambda d: next(e for e in _pods(d)[1]["spec"]["containers"][0]["env"]
                                    if e["name"] == "RAY_AUTH_TOKEN").update(value="abc"),
    "runs as root": lambda d: _pods(d)[2]["spec"]["securityContext"].__setitem__("runAsNonRoot", False),
    "privilege escalation": lambda d: _pods(d)[1]["spec"]["containers"][0]["securityContext"].pop(
        "allowPrivilegeEscalation"),
    "service-account token": lambda d: _pods(d)[0]["spec"].pop("automountServiceAccountToken"),
    "not selected by the policy": lambda d: _pods(d)[2]["metadata"]["labels"].clear(),
}


@pytest.mark.parametrize("breakage", sorted(SECURITY_BREAKAGES))
@pytest.mark.parametrize("path", [RAYCLUSTER, RAYJOB], ids=["raycluster", "rayjob"])
def test_kuberay_security_breakages_are_caught(path, breakage):
    doc = configs.load_yaml(path)
    assert kuberay_problems(doc) == []
    SECURITY_BREAKAGES[breakage](doc)
    problems = kuberay_problems(doc)
    assert problems, breakage
    if breakage == "literal token":
        assert any("written into the manifest" in p for p in problems)
    if breakage == "no RAY_AUTH_MODE":  # the head's dashboard is on 0.0.0.0: said plainly
        assert any("listen on 0.0.0.0 without authentication" in p for p in problems)


def test_the_operators_auth_options_stand_in_for_the_env():
    doc = configs.load_yaml(RAYCLUSTER)
    for pod in _pods(doc):
        env = pod["spec"]["containers"][0]["env"]
        env[:] = [e for e in env if not e["name"].startswith("RAY_AUTH")]
    assert kuberay_problems(doc)
    doc["spec"]["authOptions"] = {"mode": "token"}  # KubeRay >= 1.5.1 makes the Secret and injects the env
    assert kuberay_problems(doc) == []


def test_the_rayjob_submitter_carries_the_token():
    doc = configs.load_yaml(RAYJOB)
    doc["spec"].pop("submitterPodTemplate")
    assert any("submitterPodTemplate" in p for p in kuberay_problems(doc))


NETPOL = CLUSTER / "kuberay" / "networkpolicy.yaml"


@pytest.mark.parametrize("breakage", ["gcs from anywhere", "all ports to named clients", "ipBlock dashboard",
                                      "wrong selector", "no ingress type", "a rule with no peers"])
def test_a_leaky_network_policy_is_caught(breakage):
    doc = configs.load_yaml(NETPOL)
    assert configs.networkpolicy_problems(doc) == []
    rules = doc["spec"]["ingress"]
    if breakage == "gcs from anywhere":
        rules.append({"ports": [{"protocol": "TCP", "port": 6379}]})
    elif breakage == "all ports to named clients":
        rules[1].pop("ports")
    elif breakage == "ipBlock dashboard":
        rules[1]["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}})
    elif breakage == "wrong selector":
        doc["spec"]["podSelector"] = {"matchLabels": {"app": "other"}}
    elif breakage == "no ingress type":
        doc["spec"]["policyTypes"] = ["Egress"]
    else:
        rules.append({"ports": [{"protocol": "TCP", "port": 10001}]})
    assert configs.networkpolicy_problems(doc), breakage


def test_the_dockerfile_pins_its_base_and_pipes_nothing_into_a_shell():
    text = (CLUSTER / "kuberay" / "Dockerfile").read_text()
    assert configs.dockerfile_problems(text) == []
    unpinned = re.sub(r"@sha256:[0-9a-f]{64}", "", text)
    assert any("not pinned by digest" in p for p in configs.dockerfile_problems(unpinned))
    piped = text + "\nRUN curl -fsSL https://example.org/install.sh | bash\n"
    assert any("piped into a shell" in p for p in configs.dockerfile_problems(piped))
    pins = (REPO / "pyproject.toml").read_text()
    for pkg in ("av", "opencv-python-headless"):  # FFmpeg-linked: a new major must not arrive unannounced
        assert re.search(rf'"{pkg}>=[\d.]+,<[\d.]+"', pins), pkg
