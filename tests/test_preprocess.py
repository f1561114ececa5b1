"""End-to-end preprocessing on the synthetic datasets: adapters, manifests, round trip, determinism,
resume after kill -9, verify, failure policy, and the same shards from real Ray tasks and the CLI."""

from __future__ import annotations

import filecmp
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from preprocess.config import PreprocessConfig
from preprocess.datasets import get_adapter
from preprocess.ray_tasks import run_tasks_local
from preprocess.run import make_tasks, preprocess
from preprocess.synth import SynthConfig, generate
from shards.format import iter_samples
from shards.manifest import read_dataset_info, read_table, verify
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("kinetics600", "jester", "ucf101")
SYNTH = SynthConfig(num_classes=2, videos_per_class=2, seconds=1.0, seed=3, bad_inputs=True)


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """Each synthetic dataset once per session: {dataset: SynthReport}."""
    base = tmp_path_factory.mktemp("synth")
    return {d: generate(d, base / d, SYNTH) for d in DATASETS}


def _cfg(report, out, **kw) -> PreprocessConfig:
    kw.setdefault("max_failed", 1.0)
    kw.setdefault("shard_size", 3)
    return PreprocessConfig(dataset=report.dataset, src=str(report.root), out=str(out), progress=False, **kw)


@pytest.fixture(scope="session")
def processed(synth, tmp_path_factory):
    """Each dataset preprocessed once in-process: {dataset: (out_dir, summary)}."""
    base = tmp_path_factory.mktemp("shards")
    out = {}
    for d, report in synth.items():
        o = base / d
        out[d] = (o, preprocess(_cfg(report, o), executor=run_tasks_local))
    return out


def _all_rows(out: Path) -> dict[str, list[dict]]:
    rows = defaultdict(list)
    for split_dir in sorted((out / "manifest").iterdir()):
        for r in pq.read_table(split_dir / "videos.parquet").to_pylist():
            rows[r["source"]].append(r)
    return rows


def _tree_digest(out: Path, *, with_records=True) -> dict[str, str]:
    skip = () if with_records else ("records",)
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.relative_to(out).parts[0] not in skip}


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_synthetic_entry_lands_in_the_manifest_as_expected(synth, processed, dataset):
    report = synth[dataset]
    out, summary = processed[dataset]
    rows = _all_rows(out)
    kinds_seen = set()
    for item in report.items:
        got = rows.get(item.relpath)
        assert got, f"{item.kind} {item.relpath!r} is not in any manifest"
        statuses = {r["status"] for r in got}
        assert statuses == {item.expect}, f"{item.kind} {item.relpath}: {statuses} != {item.expect}"
        if item.expect != "ok":
            assert all(r["reason"] for r in got), f"{item.relpath}: no reason recorded"
        kinds_seen.add(item.kind)
    assert {"normal", "missing_file", "unlisted_file", "unknown_label"} <= kinds_seen
    assert summary.videos_ok == len({i.relpath for i in report.items if i.expect == "ok"})


@pytest.mark.parametrize("dataset", DATASETS)
def test_shards_round_trip_frames_and_metadata(synth, processed, dataset):
    report = synth[dataset]
    out, _ = processed[dataset]
    info = read_dataset_info(str(out))
    assert info["classes"] == list(report.classes)
    by_source = {i.relpath: i for i in report.items}
    samples = 0
    for shard in sorted(out.glob("shards/*/*.tar")):
        with shard.open("rb") as f:
            for s in iter_samples(f, source=str(shard)):
                samples += 1
                item = by_source[s.meta["source"]]
                assert s.meta["label"] == item.label
                assert s.label_index == (report.classes.index(item.label) if item.label else -1)
                frames = s.decode()
                assert frames.shape == (s.meta["num_frames"], s.meta["height"], s.meta["width"], 3)
                assert min(s.meta["height"], s.meta["width"]) <= 128
                stride = 2 if dataset == "jester" else 1
                assert s.meta["stride"] == stride
                assert s.meta["num_frames"] == math.ceil(s.meta["source_frames"] / stride)
                if item.frames is not None and item.kind not in ("vfr", "truncated"):
                    assert s.meta["source_frames"] == item.frames, item
                src = report.root / item.relpath
                if dataset == "jester":
                    files = sorted(src.iterdir())
                    assert [bytes(j) for j in s.jpegs()] == [f.read_bytes() for f in files[::2]]
                    assert s.meta["fps"] == pytest.approx(6.0)
                elif item.kind in ("normal", "weird_name", "odd_size", "rotated"):
                    ref = _ffmpeg_rgb(src, s.meta["width"], s.meta["height"])
                    assert ref.shape == frames.shape
                    assert np.abs(frames.astype(np.int16) - ref).mean() < 8, item
    assert samples == sum(1 for i in report.items if i.expect == "ok")


def _ffmpeg_rgb(path: Path, w: int, h: int) -> np.ndarray:
    """Independent reference decode: the ffmpeg binary, autorotated and scaled, as RGB."""
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-vf", f"scale={w}:{h}", "-fps_mode",
                          "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3).astype(np.int16)


def test_keys_are_unique_and_names_round_trip(synth, processed):
    for dataset in DATASETS:
        out, _ = processed[dataset]
        keys, sources = [], []
        for shard in sorted(out.glob("shards/*/*.tar")):
            with shard.open("rb") as f:
                for s in iter_samples(f):
                    keys.append(s.key)
                    sources.append(s.meta["source"])
        assert len(set(keys)) == len(keys)
        assert set(sources) == {i.relpath for i in synth[dataset].items if i.expect == "ok"}


def test_shards_are_balanced_and_mix_classes(synth, tmp_path):
    report = synth["kinetics600"]
    _, tasks = make_tasks(_cfg(report, tmp_path, shard_size=2))
    by_set = defaultdict(list)
    for t in tasks:
        by_set[t.shard_set].append(len(t.items))
    for sizes in by_set.values():
        assert max(sizes) - min(sizes) <= 1
    # the same plan whatever the order of the listing
    _, again = make_tasks(_cfg(report, tmp_path, shard_size=2))
    assert [t.plan_hash() for t in tasks] == [t.plan_hash() for t in again]


def test_ucf_splits_share_one_copy_of_each_video(processed):
    out, _ = processed["ucf101"]
    info = read_dataset_info(str(out))
    assert set(info["splits"]) == {"train1", "test1", "train2", "test2", "train3", "test3"}
    for k in (1, 2, 3):
        train = set(read_table(str(out), f"train{k}", "videos").to_pandas().query("status == 'ok'")["source"])
        test = set(read_table(str(out), f"test{k}", "videos").to_pandas().query("status == 'ok'")["source"])
        assert train and test and not train & test
        groups = {int(s.split("_g")[-1][:2]) for s in test}
        assert all(7 * (k - 1) < g <= 7 * k for g in groups)
    stored = [p for p in out.glob("shards/*/*.tar")]
    n = sum(len(list(iter_samples(p.open("rb")))) for p in stored)
    ok_sources = set()
    for split in info["splits"]:
        ok_sources |= set(read_table(str(out), split, "videos").to_pandas().query("status == 'ok'")["source"])
    assert n == len(ok_sources)  # each video stored once, whatever the number of splits it is in


def test_same_input_gives_byte_identical_output(synth, processed, tmp_path):
    out, _ = processed["ucf101"]
    again = tmp_path / "again"
    preprocess(_cfg(synth["ucf101"], again), executor=run_tasks_local)
    assert _tree_digest(again) == _tree_digest(out)


def test_rerun_skips_finished_shards(synth, tmp_path):
    out = tmp_path / "o"
    first = preprocess(_cfg(synth["jester"], out), executor=run_tasks_local)
    before = _tree_digest(out)
    second = preprocess(_cfg(synth["jester"], out), executor=run_tasks_local)
    assert first.shards_built > 0 and second.shards_built == 0
    assert second.shards_skipped == first.shards_built
    assert _tree_digest(out) == before


def test_changed_settings_rebuild_instead_of_reusing(synth, tmp_path):
    out = tmp_path / "o"
    preprocess(_cfg(synth["jester"], out), executor=run_tasks_local)
    second = preprocess(_cfg(synth["jester"], out, short_side=64), executor=run_tasks_local)
    assert second.shards_skipped == 0 and second.shards_built > 0
    with next(out.glob("shards/*/*.tar")).open("rb") as f:
        assert next(iter_samples(f)).meta["height"] == 64



def _mutations(value, rng, depth=0):
    """One hostile variant of a JSON value: a key dropped or a value swapped for another JSON type, at a
    random depth."""
    odd = [None, True, -1, 2**70, 1.5, float("nan"), float("inf"), "", "x" * 3, [], {}, [1, "a"], {"a": 1}]
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = sorted(value)[rng.integers(len(value))]
        out = dict(value)
        if rng.random() < 0.3:
            del out[key]
        else:
            out[key] = _mutations(value[key], rng, depth + 1)
        return out
    if isinstance(value, list) and value and rng.random() < 0.8:
        i = int(rng.integers(len(value)))
        return value[:i] + [_mutations(value[i], rng, depth + 1)] + value[i + 1:]
    return odd[rng.integers(len(odd))]


def test_shard_record_round_trips_and_rejects_hostile_json(processed):
    from preprocess.shard_record import RecordError, ShardRecord

    files = sorted((processed["ucf101"][0] / "records").rglob("*.json"))
    raw = [json.loads(f.read_text()) for f in files]
    for f, d in zip(files, raw, strict=True):
        rec = ShardRecord.from_dict(d, f.name)
        # the typed record writes back exactly the bytes that are on disk
        assert json.dumps(rec.to_dict(), sort_keys=True, indent=1).encode() == f.read_bytes()
    assert any(not v.ok for d in raw for v in ShardRecord.from_dict(d).videos)  # failed rows parse too
    rng = np.random.default_rng(0)
    rejected = 0
    for _ in range(3000):
        d = _mutations(raw[rng.integers(len(raw))], rng)
        try:
            rec = ShardRecord.from_dict(d)
        except RecordError as exc:
            rejected += 1
            assert str(exc).startswith("record")  # names where the problem is
            continue
        assert ShardRecord.from_dict(rec.to_dict()) == rec
    assert rejected > 2000
    for junk in (None, [], "x", 3, {"record_version": 2}):
        with pytest.raises(RecordError):
            ShardRecord.from_dict(junk)


def test_a_damaged_record_is_rebuilt_not_trusted(synth, processed, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(processed["jester"][0], out)
    reference = _tree_digest(out)
    records = sorted(out.glob("records/*/*.json"))
    records[0].write_bytes(records[0].read_bytes()[:-40])  # truncated
    moved = json.loads(records[1].read_text())
    records[1].write_text(json.dumps({**moved, "index": moved["index"] + 99}))  # names another shard
    own = json.loads(records[2].read_text())
    records[2].write_text(json.dumps({**own, "videos": [{**own["videos"][0], "num_frames": "many"}]}))
    summary = preprocess(_cfg(synth["jester"], out), executor=run_tasks_local)
    assert summary.shards_built == 3 and summary.shard_errors == 0
    assert _tree_digest(out) == reference


_CHILD = """
import sys
from preprocess.config import PreprocessConfig
from preprocess.ray_tasks import run_tasks_local
from preprocess.run import preprocess
preprocess(PreprocessConfig(dataset=sys.argv[1], src=sys.argv[2], out=sys.argv[3], shard_size=1,
                            max_failed=1.0, progress=False), executor=run_tasks_local)
"""


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["mid-shard-write", "after-first-record"])
def test_kill_9_then_rerun_gives_identical_output(synth, tmp_path, moment):
    report = synth["kinetics600"]
    reference = tmp_path / "ref"
    preprocess(_cfg(report, reference, shard_size=1), executor=run_tasks_local)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, report.dataset, str(report.root), str(out)], cwd=REPO)
    if moment == "mid-shard-write":
        def cond():
            return any(".tmp-" in p.name for p in out.glob("shards/*/*"))
    else:
        def cond():
            return any(out.glob("records/*/*.json"))
    # Polls the child's output files every 2 ms: the mid-shard-write moment is short.
    hit = wait_for(cond, proc, timeout=120.0, interval=0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert hit and proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "dataset.json").exists()
    summary = preprocess(_cfg(report, out, shard_size=1), executor=run_tasks_local)
    assert not list(out.rglob("*.tmp-*"))
    if moment == "after-first-record":
        assert summary.shards_skipped >= 1
    assert _tree_digest(out) == _tree_digest(reference)


def test_verify_passes_then_catches_damage(processed, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(processed["kinetics600"][0], out)
    assert verify(str(out)).ok
    shard = sorted(out.glob("shards/train/*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0xFF
    shard.write_bytes(bytes(data))
    r = verify(str(out))
    assert not r.ok and any("sha256" in p and shard.name in p for p in r.problems)
    shard.unlink()
    r = verify(str(out))
    assert any("missing" in p for p in r.problems)
    cli = subprocess.run([sys.executable, "-m", "pipeline", "verify", str(out)], capture_output=True, text=True,
                         cwd=REPO)
    assert cli.returncode == 1 and "MISMATCH" in cli.stdout


def test_verify_reads_samples_like_the_loader(processed, tmp_path):
    """A shard whose bytes match the manifest but whose sample metadata the loader would refuse (offset
    table one entry short) or whose first frame is not a JPEG fails verify, naming the shard and the sample."""
    from shards.format import TarSampleWriter

    out = tmp_path / "copy"
    shutil.copytree(processed["kinetics600"][0], out)
    shard = sorted(out.glob("shards/train/*.tar"))[0]
    with open(shard, "rb") as f:
        samples = list(iter_samples(f))
    assert len(samples) >= 2
    bad_offsets, bad_jpeg = samples[0].key, samples[1].key
    with open(shard, "wb") as f:
        w = TarSampleWriter(f)
        for smp in samples:
            meta, frames = dict(smp.meta), smp.frames
            if smp.key == bad_offsets:
                meta["num_frames"] += 1  # the offset table no longer has num_frames + 1 entries
            if smp.key == bad_jpeg:
                frames = b"\x00" * len(frames)
            w.write(smp.key, smp.label_index, meta, frames)
        w.close()
    table_path = out / "manifest" / "train" / "shards.parquet"
    rows = pq.read_table(table_path).to_pylist()
    rel = shard.relative_to(out).as_posix()
    for row in rows:  # make the manifest agree with the damaged bytes: only the sample check can catch it
        if row["path"] == rel:
            row["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
            row["bytes"] = shard.stat().st_size
            row["index_path"] = row["index_sha256"] = None  # the index (rightly) no longer matches either
    pq.write_table(pq.read_table(table_path).from_pylist(rows, schema=pq.read_schema(table_path)), table_path)
    r = verify(str(out))
    assert not any("sha256" in p or "size" in p for p in r.problems), r.problems
    assert any(bad_offsets in p and "offset table" in p and shard.name in p for p in r.problems), r.problems
    assert any(bad_jpeg in p and shard.name in p for p in r.problems), r.problems
    assert len(r.problems) == 2


def test_failure_threshold_sets_the_exit_code(synth, processed, tmp_path):
    _, summary = processed["kinetics600"]
    assert summary.failed_fraction > 0 and summary.exit_code == 0  # max_failed=1.0
    strict = preprocess(_cfg(synth["kinetics600"], processed["kinetics600"][0], max_failed=0.0),
                        executor=run_tasks_local)
    assert strict.exit_code == 1 and "FAILED" in strict.format()


def test_a_crashing_task_loses_no_other_work(synth, tmp_path):
    report = synth["kinetics600"]
    out = tmp_path / "o"

    def flaky_executor(tasks):
        first, *rest = tasks
        yield first, OSError("disk on fire")  # this shard's task died for good
        yield from run_tasks_local(rest)

    summary = preprocess(_cfg(report, out, shard_size=2), executor=flaky_executor)
    assert summary.shard_errors == 1
    rows = [r for rows in _all_rows(out).values() for r in rows]
    crashed = [r for r in rows if "disk on fire" in r["reason"]]
    assert crashed and all(r["status"] == "failed" for r in crashed)
    assert any(r["status"] == "ok" for r in rows)
    # the next run redoes only the crashed shard
    again = preprocess(_cfg(report, out, shard_size=2), executor=run_tasks_local)
    assert again.shards_built == 1 and again.shard_errors == 0


def test_unknown_dataset_and_split_are_refused(synth):
    with pytest.raises(ValueError, match="valid"):
        get_adapter("kinetics700")
    with pytest.raises(ValueError, match="unknown split"):
        get_adapter("jester").list(synth["jester"].root, ["training"])


@pytest.mark.ray
@pytest.mark.slow
def test_ray_tasks_write_the_same_shards(ray_local, synth, processed, tmp_path):
    from preprocess.ray_tasks import run_tasks_ray

    out = tmp_path / "ray"
    summary = preprocess(_cfg(synth["jester"], out), executor=run_tasks_ray)
    assert summary.shard_errors == 0
    assert _tree_digest(out) == _tree_digest(processed["jester"][0])


@pytest.mark.ray
@pytest.mark.slow
def test_cli_preprocess_with_embedded_ray(synth, processed, tmp_path):
    """``python pipeline/cli.py preprocess ...``: the form ``ray submit`` runs on a cluster head."""
    out = tmp_path / "cli"
    report = synth["ucf101"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "pipeline/cli.py", "preprocess", "ucf101", "--src", str(report.root),
                           "--out", str(out), "--shard-size", "3", "--max-failed", "1", "--num-cpus", "1"],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "failed fraction" in proc.stdout and "train1" in proc.stdout
    assert _tree_digest(out) == _tree_digest(processed["ucf101"][0])
    strict = subprocess.run([sys.executable, "-m", "pipeline", "preprocess", "ucf101", "--src", str(report.root),
                             "--out", str(out), "--shard-size", "3", "--max-failed", "0", "--num-cpus", "1",
                             "--no-progress"], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert strict.returncode == 1  # bad inputs exceed a zero threshold; finished shards were reused
    assert "skipped (already done) " in strict.stdout
    assert filecmp.cmp(out / "dataset.json", processed["ucf101"][0] / "dataset.json", shallow=False)
    assert json.loads((out / "dataset.json").read_text())["dataset"] == "ucf101"


def _die_once_then_work(task):
    """Kills its own Ray worker the first time it sees a shard (a system failure), then behaves."""
    from preprocess.shard_task import process_shard

    marker = Path(task.out_root) / f"died-{task.shard_set}-{task.index}"
    if task.index == 0 and not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("x")
        os._exit(1)
    return process_shard(task)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_retries_a_dead_worker(ray_local, synth, processed, tmp_path):
    import ray.cloudpickle

    from preprocess.ray_tasks import run_tasks_ray

    # Workers cannot import this test module: ship the helper by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    out = tmp_path / "retry"

    def executor(tasks):
        return run_tasks_ray(tasks, fn=_die_once_then_work)

    summary = preprocess(_cfg(synth["jester"], out), executor=executor)
    assert list(out.glob("died-*")), "no worker was killed"
    assert summary.shard_errors == 0
    for p in out.glob("died-*"):
        p.unlink()
    assert _tree_digest(out) == _tree_digest(processed["jester"][0])


@pytest.fixture
def ray_head(tmp_path):
    """A separate real Ray head on loopback (``ray start --head --block``), torn down with its process group."""
    port = 6400 + os.getpid() % 500
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "head.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
             f"--port={port}", "--num-cpus=1", "--include-dashboard=false", "--temp-dir=/tmp/e3dhead"],
            stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        assert wait_for(lambda: b"Ray runtime started" in log.read_bytes(), proc, timeout=90), log.read_text()
        yield f"127.0.0.1:{port}", env
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.ray
@pytest.mark.slow
def test_preprocess_on_an_existing_cluster(ray_head, synth, processed, tmp_path):
    address, env = ray_head
    out = tmp_path / "remote"
    base = [sys.executable, "-m", "pipeline", "preprocess", "jester", "--src", str(synth["jester"].root),
            "--shard-size", "3", "--max-failed", "1", "--no-progress"]
    proc = subprocess.run([*base, "--out", str(out), "--address", address], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Started a local Ray instance" not in proc.stderr  # it joined the head instead
    assert _tree_digest(out) == _tree_digest(processed["jester"][0])
    out2 = tmp_path / "remote-env"
    proc = subprocess.run([*base, "--out", str(out2)], cwd=REPO, env={**env, "RAY_ADDRESS": address},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Started a local Ray instance" not in proc.stderr, proc.stderr[-3000:]
    assert _tree_digest(out2) == _tree_digest(processed["jester"][0])
