"""Which loss term pushes the output phases off the real line, and which holds them there.

    CTCAE_DATA_CACHE=... python scripts/phase_forces.py CHECKPOINT [BATCHES]

For each of BATCHES training batches (the run's own, from the checkpoint's step on): the output
phase dispersion D = 1 - R (R = |mean e^{i phi}| over pixels with |z| > 0.1, per image and channel,
pixel-weighted; D ~ spread^2 / 2), and the first-order change of D under a step of each loss term
alone: plain gradient (-g_term . grad D) and Adam-preconditioned with the checkpoint's second
moments (-(g_term / (sqrt(v_hat) + eps)) . grad D). Used in reports/curves/README.md (2026-12-04).
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ctcae_core.checkpoint import load_checkpoint
from ctcae_core.train import open_splits, batch_indices
from ctcae_core.contrastive import contrastive_loss



def disp(mag, ph, thr=0.1):
    """metrics.phase_spread's circular mean, kept differentiable (phase_spread detaches)."""
    mask = (mag.detach() > thr).double()
    p = ph.double()
    cnt = mask.sum((2, 3)).clamp_min(1)
    c = (torch.cos(p) * mask).sum((2, 3)) / cnt
    s = (torch.sin(p) * mask).sum((2, 3)) / cnt
    r = torch.sqrt(c * c + s * s + 1e-300)
    return ((1 - r) * mask.sum((2, 3))).sum() / mask.sum()  # ~ spread^2 / 2



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("batches", nargs="?", type=int, default=4)
    args = ap.parse_args()
    model, cfg, payload = load_checkpoint(args.checkpoint)
    model.train()
    params = list(model.parameters())

    def flat(grads):
        return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])

    b2, eps = 0.999, 1e-8  # torch.optim.Adam's defaults, as train.fit uses them
    state = payload["optimizer"]["state"]
    denom = torch.cat([((state[i]["exp_avg_sq"] / (1 - b2 ** float(state[i]["step"]))).sqrt() + eps).reshape(-1)
                       for i in range(len(params))])
    step = payload["step"]
    train_ds, _ = open_splits(cfg)
    cc = cfg.contrastive
    for k in range(args.batches):
        _batch(k, model, cfg, cc, train_ds, step, params, flat, denom)


def _batch(k, model, cfg, cc, train_ds, step, params, flat, denom):
    idx = batch_indices(len(train_ds), cfg.train.batch_size, step + k, cfg.train.seed)
    x = train_ds.get_batch(idx)["image"]
    out = model(x)
    mse = F.mse_loss(out.recon.float(), x)
    con = cc.weight * contrastive_loss(out.enc_magnitude, out.enc_phase, out.out_magnitude, out.out_phase, cc, torch.Generator().manual_seed(k))
    d = disp(out.out_magnitude, out.out_phase)
    g_m = flat(torch.autograd.grad(mse, params, retain_graph=True, allow_unused=True))
    g_c = flat(torch.autograd.grad(con, params, retain_graph=True, allow_unused=True))
    g_d = flat(torch.autograd.grad(d, params, allow_unused=True))
    # first-order change of the dispersion per unit lr: plain gradient step and Adam-preconditioned step
    sgd_m, sgd_c = -(g_m.double() @ g_d.double()), -(g_c.double() @ g_d.double())
    ad_m, ad_c = -((g_m / denom).double() @ g_d.double()), -((g_c / denom).double() @ g_d.double())
    cos_mc = F.cosine_similarity(g_m, g_c, dim=0)
    print(f"batch {k}: 1-R {d.item():.3e} mse {mse.item():.4f} w*con {con.item():.3e} | dD sgd: mse {sgd_m.item():+.3e} con {sgd_c.item():+.3e} | "
          f"adam: mse {ad_m.item():+.3e} con {ad_c.item():+.3e} | |g| mse {g_m.norm():.2e} con {g_c.norm():.2e} cos {cos_mc:.3f}", flush=True)


if __name__ == "__main__":
    main()
