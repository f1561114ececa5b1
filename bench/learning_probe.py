"""Learning probe: one recipe, one process (world size 1), no Ray, no checkpoints -- the quick look that chose
what ``bench/bench_learning.py`` (the real loop through Ray Train, several seeds) should measure.

Same data as the demo's training stage (synthetic Jester, 4 motion directions, 60 videos per class per split,
48 px) made under ``/tmp/stable/data`` (first argument's ``"root"`` to change it), ShuffleNetV2 0.25x,
16x48x48 clips, batch 16, full-short-side crops, the paper's SGD (momentum 0.9, dampening 0.9, wd 1e-3),
contiguous memory format; the project's own loader, ``training.precise_bn``, ``training.schedule``,
``training.ema`` and ``training.evaluate``. Prints one line per epoch (validation video top-1 over the centre
clips, validation loss, last training loss) and a JSON summary per seed::

    python bench/learning_probe.py '{"seeds": [0], "lr": 0.08, "sched": "cosine", "warm": 3, "pbn": 8, "tag": "x"}'

Keys (all optional): seeds, epochs, lr, sched (constant | cosine; constant with warm > 0 warms up then holds),
warm (epochs), pbn (precise-BN batches), ema (decay), bs (batch), opt (sgd | adamw), wd, damp (SGD dampening),
val_every, head_mult (classifier lr factor), T (frames per clip), S (crop side, px), tag, root.
"""
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from preprocess.config import PreprocessConfig
from preprocess.ray_tasks import run_tasks_local
from preprocess.run import preprocess
from preprocess.synth import SynthConfig, generate
from training.data import ClipLoader, ClipNormalizer, ClipStream, LoaderConfig, normalization_for, shard_specs
from training.ema import ModelEMA
from training.evaluate import evaluate, expected_clips
from training.models import get_model
from training.precise_bn import update_bn_stats
from training.schedule import WarmupCosine, warmup_cosine

torch.set_num_threads(1)
SPEC = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {"seeds": [0]}
root = Path(SPEC.pop("root", "/tmp/stable/data"))
shards = root / "shards"
if not (shards / "dataset.json").exists():
    generate("jester", root / "src", SynthConfig(num_classes=4, videos_per_class=60, seed=3, bad_inputs=False))
    preprocess(PreprocessConfig(dataset="jester", src=str(root / "src"), out=str(shards),
                                splits=("train", "validation"), short_side=48, shard_size=16, progress=False),
               executor=run_tasks_local)

def run(seed, epochs=45, lr=0.08, sched="constant", warm=0, pbn=0, ema=0.0, bs=16, tag="", opt="sgd", wd=1e-3,
        damp=0.9, val_every=1, head_mult=1.0, T=16, S=48):
    torch.manual_seed(seed)
    model = get_model("shufflenetv2_0.25x", num_classes=4)
    norm = ClipNormalizer(normalization_for("jester"))
    common = dict(clip_len=T, size=S, num_workers=0, seed=seed, batch_size=bs)
    tl = ClipLoader(ClipStream(shard_specs(str(shards), "train", videos=False),
                               LoaderConfig.for_dataset("jester", "train", scales=(1.0,), **common)),
                    generator=torch.Generator().manual_seed(seed))
    vs = shard_specs(str(shards), "validation", videos=True)
    head = [p for n, p in model.named_parameters() if n.startswith("classifier")]
    body = [p for n, p in model.named_parameters() if not n.startswith("classifier")]
    groups = [{"params": body}, {"params": head, "lr": lr * head_mult}]
    opt = (torch.optim.AdamW(groups, lr=lr, weight_decay=wd) if opt == "adamw" else
           torch.optim.SGD(groups, lr=lr, momentum=0.9, dampening=damp, weight_decay=wd))
    spe = len(tl)
    sch = (warmup_cosine(opt, epochs * spe, warm * spe) if sched == "cosine" else
           torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(epochs * spe, warm * spe, final_factor=1.0))
           if sched == "constant" and warm else None)
    e = ModelEMA(model, ema) if ema else None
    hist = []
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        for b in tl:
            loss = F.cross_entropy(model(norm(b["clips"])), b["labels"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sch:
                sch.step()
            if e:
                e.update(model)
        vm = e.module if e else model
        if (ep + 1) % val_every and ep + 1 != epochs:
            continue
        if pbn:
            pl = ClipLoader(ClipStream(shard_specs(str(shards), "train", videos=False),
                                       LoaderConfig.for_dataset("jester", "train", scales=(1.0,), **common)),
                            generator=torch.Generator().manual_seed(seed + 1000 + ep))
            pl.set_epoch(ep)
            update_bn_stats(vm, (b["clips"] for b in pl), pbn, prepare=norm)
        lcfg = LoaderConfig.for_dataset("jester", "val", **common)
        r = evaluate(vm, ClipLoader(ClipStream(vs, lcfg)), norm, torch.device("cpu"), num_classes=4,
                     expected=expected_clips(vs, lcfg))
        hist.append((ep, round(r.video_top1, 3), round(r.loss, 3)))
        print(tag, seed, ep, hist[-1], round(loss.item(), 3), flush=True)
    lcfg = LoaderConfig.for_dataset("jester", "eval", **common)
    r = evaluate(vm, ClipLoader(ClipStream(vs, lcfg)), norm, torch.device("cpu"), num_classes=4,
                 expected=expected_clips(vs, lcfg))
    first = next((h[0] + 1 for h in hist if h[1] >= 0.9), None)
    res = {"tag": tag, "seed": seed, "final_eval": round(r.video_top1, 3), "first_0.9": first,
           "last5_val": [h[1] for h in hist[-5:]], "secs": round(time.time() - t0), "hist": hist}
    print(json.dumps(res), flush=True)
    return res

if __name__ == "__main__":
    for seed in SPEC.pop("seeds"):
        run(seed, **SPEC)
