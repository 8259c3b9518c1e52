"""A trial (exploration): CV mAP of the fluorescence images (clusters 0-3; no TTA) with a few very bright specks of
debris added, as the model sees them and with the stretch's top lowered so that the 99.5th percentile reaches 0.45.
Run from the repository root."""
import sys, time
import numpy as np, pandas as pd, skimage.draw
sys.path.insert(0, ".")
import dsb, pipeline, stratify, segment, imaging, robustness
model = pipeline.TrainedModel.open("models/unet_dsb2018/model.keras")
split = stratify.read_split(model.split)
ids = sorted(split.loc[split["subset"] == "cv", "image_id"])
clu = dict(zip(split["image_id"], split["cluster"].astype(int)))
pt, ts, mo = model.predictor(); settings = model.postprocessing.replace(tta=False)

def debris(raw, labels, seed, count, radius, brightness):
    x = robustness.as_unit_float(raw)
    x = x if x.ndim == 2 else x.mean(-1)  # gray: debris is bright in fluorescence; skip colour images below
    rng = np.random.default_rng(seed); out = x.copy(); top = np.percentile(x, 99.95)
    for _ in range(count):
        r, c = rng.integers(0, x.shape[0]), rng.integers(0, x.shape[1])
        rr, cc = skimage.draw.disk((r, c), radius, shape=x.shape); out[rr, cc] = brightness * top
    return out

rows, t0 = [], time.time()
for image_id, raw, labels in dsb.read_raw_images(dsb.find_dataset(None), ids):
    if clu[image_id] >= 4: continue  # fluorescence only (clusters 0-3)
    seed = robustness.image_seed(image_id)
    for name, f in {"none": lambda: raw, "debris 3x r4 x5": lambda: debris(raw, labels, seed, 3, 4, 5.0),
                    "debris 10x r6 x5": lambda: debris(raw, labels, seed, 10, 6, 5.0),
                    "debris 10x r6 x20": lambda: debris(raw, labels, seed, 10, 6, 20.0)}.items():
        image = imaging.preprocess(f(), model.normalization)
        level = float(np.percentile(image, 99.5))
        floored = np.clip(image * max(1.0, 0.45 / max(level, 1e-6)), 0, 1)
        for variant, img in (("as is", image), ("p99.5 floor 0.45", floored)):
            seg = segment.segment_image(pt, img.astype(np.float32), settings, tile_size=ts, min_overlap=mo,
                                        probability=False)
            sc = segment.score_image(labels, seg.labels, seg.mask)
            rows.append({"image_id": image_id, "cluster": clu[image_id], "shift": name, "variant": variant,
                         "map": sc.map, "p99.5": level, "nuclei_level": float(np.median(img[labels > 0]))})
    print(image_id[:8], f"{time.time()-t0:.0f}s", flush=True)
t = pd.DataFrame(rows); t.to_csv("docs/results/bright-specks/trial.csv", index=False)
print(t.pivot_table(index="shift", columns="variant", values=["map", "nuclei_level"]).round(4))
