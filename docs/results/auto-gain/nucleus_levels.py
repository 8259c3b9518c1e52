"""How bright are the dataset's nuclei once preprocessed? Per image, the median over its annotated nuclei of each
nucleus's 90th percentile intensity in the preprocessed image (``segment.nucleus_level``); by subset, the 1st, 5th and
50th percentiles. Where MIN_NUCLEUS_LEVEL and TARGET_NUCLEUS_LEVEL come from. Run from the repository root; writes
nucleus_levels.csv beside this file."""
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, ".")
import dsb  # noqa: E402
import imaging  # noqa: E402
import segment  # noqa: E402
import stratify  # noqa: E402

split = stratify.read_split("docs/results/split.csv").set_index("image_id")
rows = [{"image_id": image_id, "subset": split.loc[image_id, "subset"], "cluster": int(split.loc[image_id, "cluster"]),
         "level": segment.nucleus_level(imaging.preprocess(raw), labels)}
        for image_id, raw, labels in dsb.read_raw_images(dsb.find_dataset(None), sorted(split.index))]
table = pd.DataFrame(rows)
table.to_csv(Path(__file__).with_name("nucleus_levels.csv"), index=False)
print(table.groupby("subset")["level"].describe(percentiles=[0.01, 0.05, 0.5]).round(3).to_string())
