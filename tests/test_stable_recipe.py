"""The stable recipe in the loop (issue 12): precise BN, warm-up + cosine per step, linear lr scaling, model EMA,
best checkpoint by validation video top-1; resumed mid-epoch bit-identically. Tiny shards of tests/test_train.py.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import RaiseAt
from tests.test_train import tiny_cfg, tiny_shards  # noqa: F401  (tiny_shards: the session fixture)
from training.checkpoints import load_checkpoint
from training.config import TrainConfig
from training.loop import LocalSession, checkpoint_members, checkpoint_score, train_loop

STABLE = {"schedule": "cosine", "warmup_epochs": 1, "precise_bn": 2, "ema": 0.9, "epochs": 2,
          "checkpoint_every_steps": 2}


def _ckpt(run) -> dict:
    return load_checkpoint(run / "checkpoints" / "last" / "checkpoint.pt")[1]


def test_stable_recipe_resumes_mid_epoch_bit_identically(tiny_shards, tmp_path):  # noqa: F811
    straight = train_loop(tiny_cfg(tiny_shards, tmp_path / "straight", **STABLE))
    cfg = tiny_cfg(tiny_shards, tmp_path / "broken", **STABLE)
    with pytest.raises(RuntimeError, match="injected fault at step 5"):
        train_loop(cfg, hooks=RaiseAt(5))
    resumed = train_loop(cfg, hooks=RaiseAt(5))
    assert resumed["resumed_at_step"] == 4
    a, b = _ckpt(tmp_path / "straight"), _ckpt(tmp_path / "broken")
    ma, mb = checkpoint_members(a)[0], checkpoint_members(b)[0]
    for k in ma["state_dict"]:  # raw weights and BN buffers
        assert torch.equal(ma["state_dict"][k], mb["state_dict"][k]), k
    for k in ma["ema"]["state_dict"]:  # the EMA, which is also the checkpoint's loadable model
        assert torch.equal(ma["ema"]["state_dict"][k], mb["ema"]["state_dict"][k]), k
        assert torch.equal(a["state_dict"][k], ma["ema"]["state_dict"][k]), k
    assert ma["scheduler"] == mb["scheduler"] and ma["ema"]["updates"] == 6
    assert straight["eval_video_top1"] == resumed["eval_video_top1"]
    # the summary says which weights the final evaluation used and which epoch was best
    assert "EMA 0.9" in straight["eval_weights"] and "precise over 2 batches" in straight["eval_weights"]
    assert [h["epoch"] for h in straight["val_history"]] == [0, 1] == [h["epoch"] for h in resumed["val_history"]]
    best = max(straight["val_history"], key=lambda h: (h["video_top1"], -h["loss"]))
    assert straight["best_epoch"] == best["epoch"] + 1 and straight["best_val_top1"] == best["video_top1"]


def test_precise_bn_changes_bn_statistics_only_and_warmup_cosine_lr(tiny_shards, tmp_path):  # noqa: F811
    """Same seed with and without precise BN: identical weights (training-mode BN uses batch statistics and
    precise BN draws no random numbers), different running statistics. The lr follows warm-up + cosine per
    step, scaled linearly by batch/128."""
    common = {"schedule": "cosine", "warmup_epochs": 1, "epochs": 2, "lr": 0.32, "lr_scaling": "linear",
              "final_eval": False}
    session = LocalSession(tmp_path / "plain" / "checkpoints")
    train_loop(tiny_cfg(tiny_shards, tmp_path / "plain", **common), session)
    train_loop(tiny_cfg(tiny_shards, tmp_path / "precise", precise_bn=2, **common))
    plain, precise = _ckpt(tmp_path / "plain")["state_dict"], _ckpt(tmp_path / "precise")["state_dict"]
    stats = [k for k in plain if k.endswith(("running_mean", "running_var"))]
    assert stats
    for k in plain:
        if k not in stats:
            assert torch.equal(plain[k], precise[k]), k
    assert all(not torch.equal(plain[k], precise[k]) for k in stats)
    # 3 steps per epoch (batch 4, 12 training clips), lr 0.32 * 4 / 128 = 0.01, warm-up over the first epoch
    # lr after epoch 1 (3 steps: warm-up over) and after epoch 2 (6 steps: the cosine's end)
    assert [r["lr"] for r in session.reports if r.get("kind") == "epoch"] == pytest.approx([0.01, 0.0])
    state = checkpoint_members(_ckpt(tmp_path / "plain"))[0]["scheduler"]
    assert state["last_epoch"] == 6 and state["base_lrs"] == pytest.approx([0.01])


def test_checkpoint_score_prefers_top1_then_lower_loss():
    assert checkpoint_score({"video_top1": 0.5, "loss": 9.0}) > checkpoint_score({"video_top1": 0.49, "loss": 0.0})
    assert checkpoint_score({"video_top1": 0.5, "loss": 0.3}) > checkpoint_score({"video_top1": 0.5, "loss": 0.4})
    assert checkpoint_score({"video_top1": 0.5, "loss": float("nan")}) > checkpoint_score(
        {"video_top1": 0.49999, "loss": 0.0})  # one video in 100,000
    assert checkpoint_score(None) == -1.0


def test_recipe_options_are_checked():
    with pytest.raises(ValueError, match="warmup_epochs needs"):
        TrainConfig.for_dataset("jester", "s", "o", warmup_epochs=1)
    with pytest.raises(ValueError, match="ema"):
        TrainConfig.for_dataset("jester", "s", "o", ema=1.0)
    with pytest.raises(ValueError, match="lr_scaling"):
        TrainConfig.for_dataset("jester", "s", "o", lr_scaling="sqrt")
    with pytest.raises(ValueError, match="precise_bn"):
        TrainConfig.for_dataset("jester", "s", "o", precise_bn=-1)
