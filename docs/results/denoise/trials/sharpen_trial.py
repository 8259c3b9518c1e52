"""A trial (exploration, before any rule): CV mAP (no TTA) of clean, blurred and blurred+noisy images, with and
without unsharp masking of the images whose edge sharpness is under the automatic zoom's limit."""
import sys, time
import numpy as np, pandas as pd, skimage.filters
sys.path.insert(0, "."); sys.path.insert(0, "bench")
import dsb, pipeline, stratify, segment, imaging, robustness
model = pipeline.TrainedModel.open("models/unet_dsb2018/model.keras")
split = stratify.read_split(model.split)
ids = sorted(split.loc[split["subset"] == "cv", "image_id"])
clu = dict(zip(split["image_id"], split["cluster"].astype(int)))
pt, ts, mo = model.predictor()
settings = model.postprocessing.replace(tta=False)
variants = {"none": None, "usm_r2_a1": (2, 1.0), "usm_r1_a1": (1, 1.0), "usm_r2_a2": (2, 2.0)}
rows, t0 = [], time.time()
for image_id, raw, labels in dsb.read_raw_images(dsb.find_dataset(None), ids):
    for shift in ("none", "blur", "blur+noise"):
        sraw, slab = robustness.perturb(raw, labels, shift, seed=robustness.image_seed(image_id))
        image = imaging.preprocess(sraw, model.normalization)
        sharp = imaging.edge_sharpness(image)
        for name, v in variants.items():
            img = image if (v is None or sharp >= segment.MIN_ZOOM_IN_SHARPNESS) else \
                np.clip(skimage.filters.unsharp_mask(image, radius=v[0], amount=v[1]), 0, 1).astype(np.float32)
            seg = segment.segment_image(pt, img, settings, tile_size=ts, min_overlap=mo, probability=False)
            sc = segment.score_image(slab, seg.labels, seg.mask)
            rows.append({"image_id": image_id, "cluster": clu[image_id], "shift": shift, "variant": name,
                         "sharpness": sharp, "map": sc.map, "dice": sc.dice})
    print(image_id[:8], f"{time.time()-t0:.0f}s", flush=True)
t = pd.DataFrame(rows); t.to_csv("docs/results/denoise/trials/sharpen_trial.csv", index=False)
print(t.pivot_table(index="shift", columns="variant", values="map").round(4))
print(t.pivot_table(index=["shift", "cluster"], columns="variant", values="map").round(3))
