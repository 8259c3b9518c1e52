"""A trial (exploration, before any rule): does denoising every image before prediction help? CV, no TTA, the
shipped post-processing otherwise. Run from the repository root."""
import sys, time
import numpy as np, pandas as pd, scipy.ndimage as ndi, skimage.restoration
sys.path.insert(0, ".")
import dsb, pipeline, stratify, segment, imaging, robustness
model = pipeline.TrainedModel.open("models/unet_dsb2018/model.keras")
split = stratify.read_split(model.split)
ids = sorted(split.loc[split["subset"] == "cv", "image_id"])
clu = dict(zip(split["image_id"], split["cluster"].astype(int)))
pt, ts, mo = model.predictor()
settings = model.postprocessing.replace(tta=False)

def noise_unclipped(g):
    k = np.outer([1.0, -2.0, 1.0], [1.0, -2.0, 1.0])
    r = ndi.convolve(g.astype(np.float64), k, mode="reflect")[1:-1, 1:-1]
    inner = g[1:-1, 1:-1]
    keep = (inner > 0) & (inner < 1)
    return float(np.median(np.abs(r[keep])) / (0.6745 * 6)) if keep.mean() > 0.05 else 0.0

def poisson(raw, labels, photons, seed):
    g = imaging.preprocess(raw)
    return np.random.default_rng(seed).poisson(g * photons).astype(np.float32)

def shifted(raw, labels, shift, image_id):
    if shift.startswith("poisson"):
        return poisson(raw, labels, int(shift.split()[1]), robustness.image_seed(image_id))
    return robustness.perturb(raw, labels, shift, seed=robustness.image_seed(image_id))[0]

def nlm(g, sigma):
    return skimage.restoration.denoise_nl_means(g, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6,
                                                fast_mode=True).astype(np.float32)

variants = {"none": None, "gauss1": lambda g, s: ndi.gaussian_filter(g, 1.0), "nlm": nlm}
rows, t0 = [], time.time()
for image_id, raw, labels in dsb.read_raw_images(dsb.find_dataset(None), ids):
    for shift in ("none", "noise", "blur+noise", "poisson 20"):
        image = imaging.preprocess(shifted(raw, labels, shift, image_id), model.normalization)
        sigma, sigma_u = imaging.noise_sigma(image), noise_unclipped(image)
        for name, f in variants.items():
            img = image if f is None else np.clip(f(image, max(sigma_u, 1e-3)), 0, 1).astype(np.float32)
            seg = segment.segment_image(pt, img, settings, tile_size=ts, min_overlap=mo, probability=False)
            sc = segment.score_image(labels, seg.labels, seg.mask)
            rows.append({"image_id": image_id, "cluster": clu[image_id], "shift": shift, "variant": name,
                         "noise_sigma": sigma, "noise_unclipped": sigma_u, "map": sc.map, "dice": sc.dice})
    print(image_id[:8], f"{time.time()-t0:.0f}s", flush=True)
t = pd.DataFrame(rows); t.to_csv("docs/results/denoise/trials/denoise_trial.csv", index=False)
print(t.pivot_table(index="shift", columns="variant", values="map").round(4))
print(t[t.variant == "none"].groupby("shift")[["noise_sigma", "noise_unclipped"]].describe().round(3).T)
