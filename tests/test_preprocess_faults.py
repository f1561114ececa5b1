"""Preprocessing under faults a real cluster run meets: a decoder that hangs or dies, a very long video,
two runs on one output, a full disk, a source that changes between runs, and list files that disagree
about a label."""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main as cli_main
from preprocess.config import PreprocessConfig
from preprocess.ray_tasks import run_tasks_local
from preprocess.run import preprocess
from shards.lease import LEASE_NAME, Lease, LeaseHeld, LeaseLost
from tests.decode_hooks import HOOK

REPO = Path(__file__).resolve().parents[1]


def _video(path: Path, seconds: float, size: str = "64x48", rate: int = 10, noise: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    vf = ["-vf", "noise=alls=40:allf=t"] if noise else []
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=s={size}:r={rate}:d={seconds}",
                    *vf, "-c:v", "libx264", "-preset", "ultrafast", "-crf", "28", "-pix_fmt", "yuv420p",
                    str(path)], check=True)


def kinetics(root: Path, videos: dict[str, float], *, label: str = "dancing", **kw) -> Path:
    """A minimal Kinetics-600 layout: one train class, ``videos`` maps a YouTube id to seconds of video."""
    rows = ["label,youtube_id,time_start,time_end,split"]
    for yid, seconds in videos.items():
        _video(root / "train" / label / f"{yid}_000000_000010.mp4", seconds, **kw)
        rows.append(f"{label},{yid},0,10,train")
    (root / "kinetics-600_train.csv").write_text("\n".join(rows) + "\n")
    return root


def _cfg(root: Path, out: Path, **kw) -> PreprocessConfig:
    kw.setdefault("max_failed", 1.0)
    return PreprocessConfig(dataset="kinetics600", src=str(root), out=str(out), progress=False, **kw)


def _rows(out: Path, split: str = "train") -> dict[str, dict]:
    rows = pq.read_table(out / "manifest" / split / "videos.parquet").to_pylist()
    return {r["source"].rsplit("/", 1)[-1].split("_")[0]: r for r in rows}


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    """Five 1-second videos (one class), all of which fit one shard."""
    return kinetics(tmp_path_factory.mktemp("k5"), {f"vid{i}": 1.0 for i in range(5)})


# ---------------------------------------------------------------------------------------------------------
# item 3: a hard wall-clock limit per video; item 5: a crash costs one video


def test_a_hung_decoder_is_killed_and_only_its_video_fails(five, tmp_path, monkeypatch):
    monkeypatch.setenv("E3D_DECODE_HOOK", HOOK)
    monkeypatch.setenv("E3D_TEST_HANG", "vid2")
    t0 = time.monotonic()
    summary = preprocess(_cfg(five, tmp_path / "o", shard_size=10, timeout_s=2.0), executor=run_tasks_local)
    took = time.monotonic() - t0
    rows = _rows(tmp_path / "o")
    assert rows["vid2"]["status"] == "failed" and rows["vid2"]["reason"] == "timeout after 2 s"
    assert {k: r["status"] for k, r in rows.items() if k != "vid2"} == dict.fromkeys(
        ["vid0", "vid1", "vid3", "vid4"], "ok")
    assert summary.shards_built == 1 and summary.videos_ok == 4 and summary.videos_failed == 1
    assert took < 60, f"the run took {took:.0f} s"
    assert ("timeout after 2 s", 1) in summary.failure_reasons


def test_a_decoder_that_kills_its_process_loses_only_that_video(five, tmp_path, monkeypatch):
    monkeypatch.setenv("E3D_DECODE_HOOK", HOOK)
    monkeypatch.setenv("E3D_TEST_KILL", "vid1")
    monkeypatch.setenv("E3D_TEST_SEGV", "vid3")
    summary = preprocess(_cfg(five, tmp_path / "o", shard_size=10), executor=run_tasks_local)
    rows = _rows(tmp_path / "o")
    for k, sig in (("vid1", "SIGKILL"), ("vid3", "SIGSEGV")):
        assert rows[k]["status"] == "failed"
        assert rows[k]["reason"].startswith(f"decoder process died from {sig}"), rows[k]["reason"]
    assert [rows[k]["status"] for k in ("vid0", "vid2", "vid4")] == ["ok"] * 3
    assert summary.shard_errors == 0 and summary.shards_built == 1


def test_the_ffmpeg_backend_runs_isolated_too(five, tmp_path):
    # ffprobe and the frame-by-frame ffmpeg pipe run in the decode process under the same limit (here: plenty)
    summary = preprocess(_cfg(five, tmp_path / "o", shard_size=10, decoder="ffmpeg", timeout_s=60),
                         executor=run_tasks_local)
    assert summary.videos_ok == 5
    assert {r["num_frames"] for r in _rows(tmp_path / "o").values()} == {10}


# ---------------------------------------------------------------------------------------------------------
# item 4: memory does not grow with the video's length

_PEAK = """
import json, resource, sys
from preprocess.config import PreprocessConfig
from preprocess.ray_tasks import run_tasks_local
from preprocess.run import preprocess

def hwm_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

# Forget the peak of the imports (Linux: writing 5 to clear_refs resets VmHWM): only preprocessing counts.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
s = preprocess(PreprocessConfig(dataset="kinetics600", src=sys.argv[1], out=sys.argv[2], decoder=sys.argv[3],
                                progress=False), executor=run_tasks_local)
try:
    from preprocess.isolate import shared_worker
    shared_worker().close()  # reaped, so its peak shows in RUSAGE_CHILDREN
except ImportError:
    pass
print(json.dumps({"ok": s.videos_ok, "frames": s.splits[0].frames,
                  "self": hwm_kib(),
                  "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def _peak(root: Path, out: Path, decoder: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _PEAK, str(root), str(out), decoder], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_video_length(tmp_path):
    # 1 minute vs 20 minutes of noisy 64x48 video at 10 frames/s: 600 vs 12000 stored frames of ~3 KB each.
    # Holding the JPEGs (twice, as list and tar blob) costs ~75 MB more for the long one, the ffmpeg backend's
    # raw pipe buffer 55 MB more; spooled and streamed, nothing. "self" is the driver's peak while it
    # preprocesses, "children" the decode process's (it is reaped, so its peak shows in RUSAGE_CHILDREN).
    short = kinetics(tmp_path / "short", {"short": 60.0}, noise=True)
    long = kinetics(tmp_path / "long", {"long": 1200.0}, noise=True)
    for decoder in ("av", "ffmpeg"):
        base = _peak(short, tmp_path / f"o-short-{decoder}", decoder)
        assert base["ok"] == 1 and base["frames"] == 600
        got = _peak(long, tmp_path / f"o-long-{decoder}", decoder)
        assert got["ok"] == 1 and got["frames"] == 12000
        grew_kb = {k: got[k] - base[k] for k in ("self", "children")}
        print(f"{decoder}: peak RSS short {base} long {got} (KiB)")
        assert max(grew_kb.values()) < 10 * 1024, f"{decoder}: peak RSS grew by {grew_kb} KiB for a 20x longer video"


def test_max_frames_cuts_a_long_video_and_says_so(tmp_path):
    root = kinetics(tmp_path / "src", {"longish": 8.0})
    for decoder in ("av", "ffmpeg"):
        out = tmp_path / decoder
        summary = preprocess(_cfg(root, out, decoder=decoder, max_frames=30), executor=run_tasks_local)
        row = _rows(out)["longish"]
        assert summary.videos_ok == 1 and row["status"] == "ok" and row["num_frames"] == 30
        assert "truncated at 30 stored frames (--max-frames)" in row["reason"]


# ---------------------------------------------------------------------------------------------------------
# item 6: an exclusive lease on --out


def _lease_file(out: Path, **over) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    now = time.time()
    info = {"run_id": "f" * 32, "owner": "alice", "host": socket.gethostname(), "pid": os.getpid(), "started": now,
            "heartbeat": now, "ttl_s": 120.0, **over}
    (out / LEASE_NAME).write_text(json.dumps(info))
    return out / LEASE_NAME


def _cli(five: Path, out: Path, *extra: str) -> list[str]:
    return ["preprocess", "kinetics600", "--src", str(five), "--out", str(out), "--no-progress", *extra]


def test_a_second_run_on_the_same_out_exits_2_naming_the_owner(five, tmp_path, capsys):
    out = tmp_path / "o"
    with Lease(str(out)) as first:  # a live run of this process
        other_tmp = out / "shards" / "train" / "shard-000000.tar.tmp-0badc0de"
        other_tmp.parent.mkdir(parents=True)
        other_tmp.write_bytes(b"half a shard of the first run")
        assert cli_main(_cli(five, out)) == 2
        err = capsys.readouterr().err
        assert "is locked by another run" in err and f"pid {os.getpid()}" in err
        assert f"{getpass.getuser()}@{socket.gethostname()}" in err and first.run_id[:8] in err
        assert other_tmp.exists(), "the refused run deleted the first run's temporary file"
        assert not (out / "dataset.json").exists()
        first.check()  # still ours
    assert not (out / LEASE_NAME).exists()


def test_a_dead_holder_on_this_host_is_taken_over_and_its_temporaries_removed(five, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "o"
    _lease_file(out, pid=dead.pid, heartbeat=time.time())
    stale_tmp = out / "shards" / "train" / "shard-000000.tar.tmp-0badc0de"
    stale_tmp.parent.mkdir(parents=True)
    stale_tmp.write_bytes(b"left by the dead run")
    summary = preprocess(_cfg(five, out), executor=run_tasks_local)
    assert summary.videos_ok == 5 and not stale_tmp.exists() and not (out / LEASE_NAME).exists()


def test_a_stale_lease_of_another_host_needs_force_unlock(five, tmp_path, capsys):
    out = tmp_path / "o"
    _lease_file(out, host="node-17", pid=4242, heartbeat=time.time() - 3600)
    assert cli_main(_cli(five, out)) == 2
    err = capsys.readouterr().err
    assert "alice@node-17 pid 4242" in err and "(stale)" in err and "--force-unlock" in err
    summary = preprocess(_cfg(five, out, force_unlock=True), executor=run_tasks_local)
    assert summary.videos_ok == 5 and not (out / LEASE_NAME).exists()


def test_force_unlock_never_takes_a_live_lease(five, tmp_path, capsys):
    out = tmp_path / "o"
    _lease_file(out, host="node-17", pid=4242)  # fresh heartbeat
    assert cli_main(_cli(five, out, "--force-unlock")) == 2
    assert "alice@node-17" in capsys.readouterr().err and (out / LEASE_NAME).exists()


def test_the_heartbeat_advances_and_a_takeover_is_noticed(tmp_path):
    lease = Lease(str(tmp_path / "o"), ttl_s=0.4).acquire()
    try:
        first = json.loads((tmp_path / "o" / LEASE_NAME).read_text())["heartbeat"]
        deadline = time.monotonic() + 30
        while json.loads((tmp_path / "o" / LEASE_NAME).read_text())["heartbeat"] == first:
            assert time.monotonic() < deadline, "no heartbeat in 30 s"
            time.sleep(0.05)
        _lease_file(tmp_path / "o", run_id="e" * 32, host="node-9")  # another run force-unlocked us
        with pytest.raises(LeaseLost, match="alice@node-9"):
            lease.check()
    finally:
        lease.release()
    assert (tmp_path / "o" / LEASE_NAME).exists(), "release deleted the new holder's lease"


def test_the_lease_works_on_object_storage(s3_endpoint):
    import boto3

    bucket = f"e3d-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/shards/k600"
    with Lease(uri), pytest.raises(LeaseHeld, match="is locked by another run"):
        Lease(uri).acquire()
    with Lease(uri) as again:  # released: free again
        again.check()


# ---------------------------------------------------------------------------------------------------------
# item 7: infrastructure errors stop the run (exit 3) instead of failing videos; a rerun resumes


@pytest.fixture
def small_fs(tmp_path):
    """A real 96 KiB tmpfs (a full disk after two or three shards); needs the right to mount (root)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _grow(mnt: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)


def test_a_full_disk_stops_the_run_without_failing_videos_and_a_rerun_resumes(five, small_fs):
    from preprocess.isolate import InfrastructureError

    out = small_fs / "o"
    with pytest.raises(InfrastructureError, match="No space left on device"):
        preprocess(_cfg(five, out, shard_size=1), executor=run_tasks_local)
    done = sorted(p.name for p in out.glob("records/train/*.json"))
    assert 0 < len(done) < 5, done
    assert not (out / "manifest").exists() and not (out / "dataset.json").exists()  # no video marked failed
    assert not list(out.rglob("*.tmp-*")) and not (out / LEASE_NAME).exists()
    _grow(small_fs)
    summary = preprocess(_cfg(five, out, shard_size=1), executor=run_tasks_local)
    assert summary.shards_skipped == len(done) and summary.videos_ok == 5 and summary.videos_failed == 0


@pytest.mark.ray
@pytest.mark.slow
def test_cli_exits_3_on_a_full_disk_under_ray(ray_local, five, small_fs, capsys):
    out = small_fs / "o"
    assert cli_main(_cli(five, out, "--shard-size", "1")) == 3
    err = capsys.readouterr().err
    assert "infrastructure failure" in err and "No space left on device" in err and "rerun" in err
    _grow(small_fs)
    assert cli_main(_cli(five, out, "--shard-size", "1")) == 0


# ---------------------------------------------------------------------------------------------------------
# item 8: a changed source is re-decoded; conflicting labels are refused


def test_a_changed_source_is_redecoded_and_an_untouched_one_is_not(tmp_path):
    root = kinetics(tmp_path / "src", {f"vid{i}": 1.0 for i in range(3)})
    out = tmp_path / "o"
    first = preprocess(_cfg(root, out, shard_size=1), executor=run_tasks_local)
    assert first.shards_built == 3
    victim = next(root.glob("train/dancing/vid1_*.mp4"))

    # same bytes, new mtime (a copy without -t): small files are compared by content, so nothing to redo
    os.utime(victim, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert preprocess(_cfg(root, out, shard_size=1), executor=run_tasks_local).shards_built == 0

    # same size and mtime, other content: the hash catches it, and only that video's shard is rebuilt
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-200] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert victim.stat().st_size == st.st_size
    again = preprocess(_cfg(root, out, shard_size=1), executor=run_tasks_local)
    assert again.shards_built == 1 and again.shards_skipped == 2

    # another video of another length: re-decoded, and the shard holds the new frames
    _video(victim, 2.0)
    third = preprocess(_cfg(root, out, shard_size=1), executor=run_tasks_local)
    assert third.shards_built == 1 and _rows(out)["vid1"]["num_frames"] == 20


def test_a_large_source_is_compared_by_size_and_mtime(tmp_path, monkeypatch):
    import preprocess.shard_task as st

    monkeypatch.setattr(st, "HASH_LIMIT", 0)  # every source counts as large: no content hash
    root = kinetics(tmp_path / "src", {"big": 1.0})
    out = tmp_path / "o"
    preprocess(_cfg(root, out), executor=run_tasks_local)
    rec = json.loads(next(out.glob("records/train/*.json")).read_text())
    assert "sha256" not in rec["videos"][0]["source_stamp"]
    victim = next(root.glob("train/dancing/big_*.mp4"))
    os.utime(victim, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert preprocess(_cfg(root, out), executor=run_tasks_local).shards_built == 1


def test_a_video_with_two_labels_is_refused_as_a_conflict(tmp_path):
    import numpy as np

    from shards.format import encode_jpeg_rgb

    root = tmp_path / "jester"
    root.mkdir()
    (root / "jester-v1-labels.csv").write_text("Swiping Left\nSwiping Right\n")
    for vid in ("1", "2"):
        d = root / "20bn-jester-v1" / vid
        d.mkdir(parents=True)
        for i in range(1, 5):
            (d / f"{i:05d}.jpg").write_bytes(encode_jpeg_rgb(np.full((24, 32, 3), 40 * i, np.uint8), 90))
    (root / "jester-v1-train.csv").write_text("1;Swiping Left\n2;Swiping Left\n")
    (root / "jester-v1-validation.csv").write_text("1;Swiping Right\n2;Swiping Left\n")
    out = tmp_path / "o"
    summary = preprocess(PreprocessConfig(dataset="jester", src=str(root), out=str(out), progress=False,
                                          max_failed=1.0), executor=run_tasks_local)
    for split in ("train", "validation"):
        rows = {r["source"]: r for r in pq.read_table(out / "manifest" / split / "videos.parquet").to_pylist()}
        bad = rows["20bn-jester-v1/1"]
        assert bad["status"] == "failed" and bad["shard"] is None
        assert bad["reason"] == "label conflict: listed as 'Swiping Left' in train, 'Swiping Right' in validation"
        assert rows["20bn-jester-v1/2"]["status"] == "ok"
    assert summary.videos_ok == 1


# ---------------------------------------------------------------------------------------------------------
# Ray at the edge: tasks declare their memory; the driver's wait is bounded


def _assigned_resources(task):
    import ray

    return ray.get_runtime_context().get_assigned_resources()


def _stuck(task):
    import threading

    threading.Event().wait()  # a task that never returns (an NFS write that hangs, say)


@pytest.mark.ray
def test_ray_tasks_declare_memory_and_a_stuck_task_stops_the_run(ray_local, five, tmp_path):
    import ray.cloudpickle

    from preprocess.isolate import InfrastructureError
    from preprocess.ray_tasks import run_tasks_ray
    from preprocess.run import make_tasks

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    _, tasks = make_tasks(_cfg(five, tmp_path / "o"))
    ((_, got),) = list(run_tasks_ray(tasks[:1], fn=_assigned_resources, memory_bytes=300 << 20))
    assert got.get("memory") == 300 << 20 and got.get("CPU") == 1
    t0 = time.monotonic()
    with pytest.raises(InfrastructureError, match=r"no shard task finished in 3 s; 1 cancelled"):
        list(run_tasks_ray(tasks[:1], fn=_stuck, memory_bytes=64 << 20, stall_timeout_s=3))
    assert time.monotonic() - t0 < 60


_PERMISSION_PROBE = """
import json, sys
from preprocess.config import PreprocessConfig
from preprocess.ray_tasks import run_tasks_local
from preprocess.run import preprocess
cfg = PreprocessConfig(dataset="kinetics600", src=sys.argv[1], out=sys.argv[2], progress=False, shard_size=1,
                       max_failed=1.0)
try:
    s = preprocess(cfg, executor=run_tasks_local)
    print(json.dumps({"ok": s.videos_ok, "failed": s.videos_failed}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def _file_permissions_apply() -> list[str]:
    """A command prefix under which file modes bind: as root, drop the capabilities that override them (the
    suite runs as root in CI, where a chmod alone would change nothing)."""
    if os.geteuid() != 0:
        return []
    import shutil

    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to run without root's permission override")
    caps = "-dac_override,-dac_read_search,-fowner"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]


def test_permission_denied_stops_the_run_without_failing_videos_and_a_rerun_resumes(five, tmp_path):
    """Issue 11 item 7, permission denied: an output folder the run may not write is an infrastructure error
    (stop, say so, mark no video failed), not five bad videos; once the folder is writable a rerun finishes."""
    out = tmp_path / "o"
    locked = out / "shards" / "train"
    locked.mkdir(parents=True)
    locked.chmod(0o555)
    cmd = [*_file_permissions_apply(), sys.executable, "-c", _PERMISSION_PROBE, str(five), str(out)]
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": repo}
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=repo, env=env)
    result = json.loads(first.stdout.strip().splitlines()[-1]) if first.stdout.strip() else {}
    assert result.get("error") == "InfrastructureError", (result, first.stderr[-2000:])
    assert "Permission denied" in result["message"] and str(locked) in result["message"]
    assert not (out / "manifest").exists() and not (out / "dataset.json").exists()  # no video marked failed
    assert not (out / LEASE_NAME).exists()
    locked.chmod(0o755)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=repo, env=env)
    assert json.loads(second.stdout.strip().splitlines()[-1]) == {"ok": 5, "failed": 0}, second.stderr[-2000:]
