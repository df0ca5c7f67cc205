"""Mini-world data sets in the registry: `miniworld/<domain>/<label set>/<split>` and `miniworld-train`."""
from __future__ import annotations

from training.miniworld.dataset import LABEL_SETS, SPLITS, MiniWorldClassification, MiniWorldFinetune, MiniWorldTask
from training.miniworld.world import DOMAINS, Split

from .registry import DatasetRequest, register_dataset, register_dataset_family

# at 32x32 an L-inf budget of 4/255 plays the role 1/255 plays on 224x224 ImageNet (README, docs/evaluation.md)
MINIWORLD_REFERENCE_EPS = 4 / 255
_SEED_SPLITS = {"train": Split.TRAIN, "val": Split.VAL, "test": Split.TEST}


@register_dataset_family("miniworld", reference_eps=MINIWORLD_REFERENCE_EPS)
def build_miniworld(name: str, req: DatasetRequest) -> MiniWorldClassification:
    """Zero-shot task `miniworld/<domain>/<label set>/<split>`; `req.limit` images (default 512)."""
    parts = name.split("/")
    if len(parts) != 4:
        raise KeyError(
            f"mini-world data sets are named miniworld/<domain>/<label set>/<split> with domain in {DOMAINS}, "
            f"label set in {LABEL_SETS}, split in {SPLITS}; got {name!r}"
        )
    _, domain, label_set, split = parts
    task = MiniWorldTask(domain, label_set, split, n=req.limit or 512, world_seed=req.seed, seed_split=_SEED_SPLITS.get(req.split, Split.TEST))
    return MiniWorldClassification(task)


@register_dataset("miniworld-train", reference_eps=MINIWORLD_REFERENCE_EPS)
def build_miniworld_train(req: DatasetRequest) -> MiniWorldFinetune:
    """Fine-tuning set (ImageNet stand-in): plain domain, 48 seen colour+shape classes."""
    return MiniWorldFinetune(n=req.limit or 4096, world_seed=req.seed, split=_SEED_SPLITS.get(req.split, Split.TRAIN))


def standard_eval_names(label_sets: tuple[str, ...] = LABEL_SETS) -> list[str]:
    """The mini world's zero-shot suite: every domain x label set on seen combinations, plus held-out ones."""
    names = [f"miniworld/{d}/{ls}/seen" for d in DOMAINS for ls in label_sets]
    names += [f"miniworld/{d}/color_shape/{sp}" for d in ("plain",) for sp in SPLITS[1:]]
    return names
