"""How much do a few annotated images give? Fine-tune a model on N training images of one cluster, score that
cluster's test images, against the model as it was.

For each N of ``--counts``: a zip of N training images of ``--cluster`` (the first N of the split's training
images of that cluster, in a seeded order) and that cluster's CV images, with a split file that marks them so;
then ``train_and_predicted_masks.py train --init MODEL --data ZIP --split SPLIT`` (the ``finetune`` preset), and
``evaluate`` of the fine-tuned model and of the starting model on the cluster's test images (``--subset all`` of
a zip of them). Writes ``experiments/results/finetune_few.json`` and keeps each run's small files under ``--keep``.

    python experiments/finetune_few.py --model models/unet_dsb2018/model.keras --cluster 4 --counts 5 10 20

A model trained on that cluster's images has seen what it is fine-tuned on. To measure what a few annotations give
on a kind of image the model has never seen, train it with the cluster held out (a split that marks all of the
cluster's images ``test``), pass the split to choose from with ``--split``, and score with ``--score-on unused``:
the cluster's test images and the training images that no run is fine-tuned on, a larger set.

    python experiments/finetune_few.py --model runs/HELDOUT/model.keras --split docs/results/split.csv --score-on unused
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import common

SMALL_FILES = ("config.json", "history.csv", "training.json", "postprocessing.json", "metrics.json")


def evaluate(model: Path, data: Path, out: Path) -> dict:
    common.run_cli(["evaluate", str(model), "--subset", "all", "--data", str(data), "--no-cache", "--out", str(out)])
    (folder,) = out.iterdir()
    return json.loads((folder / "metrics.json").read_text())["summary"]


def model_training_images(split_path: Path) -> set[str]:
    """The images a model's own split marks train or CV (all it may have learnt from)."""
    from nucleunet import stratify

    split = stratify.read_split(split_path)
    return set(split.loc[split["subset"].isin(["train", "cv"]), "image_id"])


def main(argv=None) -> int:
    parser = common.base_parser("finetune_few", __doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the model to start from")
    parser.add_argument("--split", type=Path,
                        help="the split whose training and CV images of the cluster to fine-tune on (default: the "
                             "model's own, split.csv beside it)")
    parser.add_argument("--data", type=Path, help="the DSB training set (default: dsb.find_dataset())")
    parser.add_argument("--cluster", type=int, default=4, help="the cluster to fine-tune on (default 4)")
    parser.add_argument("--counts", type=int, nargs="+", default=[5, 10, 20], help="training images (default 5 10 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="folder to keep each run's small files in")
    parser.add_argument("--score-on", choices=("test", "unused"), default="test",
                        help="test: the cluster's test images; unused: those and its training images that no run "
                             "is fine-tuned on (only for a model that never trained on the cluster)")
    args = parser.parse_args(argv)

    import dsb
    from nucleunet import layouts, stratify

    own_split = args.model.parent / "split.csv"
    split = stratify.read_split(args.split or own_split)
    members = split[split["cluster"] == args.cluster]
    train_ids = sorted(members.loc[members["subset"] == "train", "image_id"])
    np.random.default_rng(args.seed).shuffle(train_ids)
    cv_ids = sorted(members.loc[members["subset"] == "cv", "image_id"])
    test_ids = sorted(members.loc[members["subset"] == "test", "image_id"])
    counts = [count for count in args.counts if count <= len(train_ids)]
    if not counts:
        raise SystemExit(f"cluster {args.cluster} has {len(train_ids)} training images, fewer than any of {args.counts}")
    if args.score_on == "unused":
        test_ids = sorted(test_ids + train_ids[max(counts):])
        seen = model_training_images(own_split) & set(test_ids)
        if seen:
            raise SystemExit(f"--score-on unused: the model trained on {len(seen)} of these images (its split "
                             f"{own_split} marks them train or cv), e.g. {sorted(seen)[:3]}; train it with the "
                             f"cluster held out")
    source = dsb.find_dataset(args.data)
    results = {"benchmark": "finetune_few", "quick": args.quick, "machine": common.machine(), "model": str(args.model),
               "cluster": args.cluster, "available_training_images": len(train_ids), "cv_images": len(cv_ids),
               "scored_on": args.score_on, "test_images": len(test_ids), "test_ids": test_ids, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="finetune-few-") as scratch:
        scratch = Path(scratch)
        test_zip = layouts.subset_zip(source, test_ids, scratch / "test.zip")
        results["before"] = evaluate(args.model, test_zip, scratch / "before")
        for count in counts:
            chosen = train_ids[:count]
            data = layouts.subset_zip(source, chosen + cv_ids, scratch / f"train{count}.zip")
            split_path = scratch / f"split{count}.csv"
            pd.DataFrame({"image_id": chosen + cv_ids, "cluster": args.cluster,
                          "subset": ["train"] * len(chosen) + ["cv"] * len(cv_ids)}).to_csv(split_path, index=False)
            options = ["--epochs", "1", "--steps-per-epoch", "2"] if args.quick else []
            common.run_cli(["train", "--init", str(args.model), "--data", str(data), "--split", str(split_path),
                            "--no-cache", "--seed", str(args.seed), "--out", str(scratch / f"runs{count}"), *options])
            (run_dir,) = (scratch / f"runs{count}").iterdir()
            after = evaluate(run_dir / "model.keras", test_zip, scratch / f"after{count}")
            training = json.loads((run_dir / "training.json").read_text())
            results["runs"][str(count)] = {"test": after, "training_minutes": training["minutes"],
                                           "train_images": chosen}
            if args.keep:
                target = args.keep / f"{count}_images"
                target.mkdir(parents=True, exist_ok=True)
                for name in SMALL_FILES:
                    if (run_dir / name).exists():
                        shutil.copy(run_dir / name, target / name)
    rows = [("starting model", "-", results["before"]["mean_dice"], results["before"]["mean_map"])]
    rows += [(f"fine-tuned on {count}", value["training_minutes"], value["test"]["mean_dice"],
              value["test"]["mean_map"]) for count, value in results["runs"].items()]
    scored = "test images" if args.score_on == "test" else "test and unused training images"
    common.print_table(f"Cluster {args.cluster}: {len(test_ids)} {scored}", rows,
                       ("model", "minutes", "Dice", "mAP"))
    common.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
