"""CLEVR-like generator: a small numpy ray caster, not the real CLEVR.

Spheres, cubes and cylinders in CLEVR's 8 colours, two sizes, rubber (matte) or
metal (dark diffuse, sharp highlight, sky reflection) shading, a ground plane with
cast shadows, perspective from CLEVR's default camera, and occlusion. Scenes are
rendered at 240x320, cropped to rows 29-220 and columns 64-255 (192x192) as CLEVR6 is,
and objects are recounted after the crop. Real CLEVR6 comes through import.
"""

from __future__ import annotations

import math

import numpy as np

from .base import SceneBatch

NAME = "clevr_like"
VERSION = 1
FULL_H, FULL_W = 240, 320
CROP_ROWS = (29, 221)  # rows 29..220 inclusive
CROP_COLS = (64, 256)  # cols 64..255 inclusive
SIZE = 192
DEFAULT_OBJECTS = (3, 6)
MAX_OBJECTS = 10
CHUNK = 200
MIN_VISIBLE_PX = 100  # in the full frame, as CLEVR rejects barely visible objects

SHAPES = ("cube", "sphere", "cylinder")
SIZES = {"large": 0.7, "small": 0.35}
SIZE_NAMES = ("large", "small")
MATERIALS = ("rubber", "metal")
COLOR_NAMES = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
COLORS = (
    np.array(
        [[87, 87, 87], [173, 35, 35], [42, 75, 215], [29, 105, 20], [129, 74, 25], [129, 38, 192], [41, 208, 208], [255, 238, 51]],
        dtype=np.float64,
    )
    / 255.0
)

# CLEVR's default Blender camera: 35 mm lens on a 32 mm sensor, looking at the origin.
CAM_POS = np.array([7.36, -6.93, 4.96])
_FOV_X = 2.0 * math.atan(16.0 / 35.0)
LIGHT_DIR = np.array([-0.45, -0.6, 0.66]) / math.sqrt(0.45**2 + 0.6**2 + 0.66**2)
GROUND_RGB = np.array([0.62, 0.62, 0.61])


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of (..., 3) arrays with a fixed summation order.

    Elementwise IEEE operations only (no BLAS, no SIMD reductions), so the same
    seed gives the same bytes on any machine.
    """
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def _normalize(a: np.ndarray) -> np.ndarray:
    return a / np.sqrt(_dot(a, a))[..., None]


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def _camera_rays(h: int = FULL_H, w: int = FULL_W) -> np.ndarray:
    """Unit ray directions (h*w, 3) through pixel centres."""
    fwd = _normalize(-CAM_POS)
    right = _normalize(_cross(fwd, np.array([0.0, 0.0, 1.0])))
    up = _cross(right, fwd)
    tx = math.tan(_FOV_X / 2.0)
    ty = tx * h / w
    xs = ((np.arange(w) + 0.5) / w * 2.0 - 1.0) * tx
    ys = (1.0 - (np.arange(h) + 0.5) / h * 2.0) * ty
    d = fwd[None, None, :] + xs[None, :, None] * right + ys[:, None, None] * up
    return _normalize(d).reshape(-1, 3)


_RAYS = _camera_rays()  # (h*w, 3)


def _hit(obj: dict, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest positive hit distance (p,) (inf when missed) and normals (p, 3) of one object.

    o: ray origins (p, 3) or (3,); d: unit directions (p, 3). Rays that miss the
    object's bounding sphere are culled first, so only a few pixels pay full price.
    """
    p = d.shape[0]
    o = np.broadcast_to(o, (p, 3))
    r = obj["r"]
    c = np.array([obj["x"], obj["y"], r])
    rad = r * math.sqrt(2.0) + 1e-3  # covers cube corners and cylinder rims
    oc = o - c
    b = _dot(oc, d)
    disc = b * b - (_dot(oc, oc) - rad * rad)
    cand = np.nonzero((disc >= 0) & (-b + np.sqrt(np.clip(disc, 0.0, None)) > 0))[0]
    t = np.full(p, np.inf)
    nrm = np.zeros((p, 3))
    if cand.size:
        t[cand], nrm[cand] = _hit_exact(obj, o[cand], d[cand])
    return t, nrm


def _hit_exact(obj: dict, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_hit` without culling."""
    p = d.shape[0]
    o = np.broadcast_to(o, (p, 3))
    cx, cy, r, th = obj["x"], obj["y"], obj["r"], obj["rotation"]
    big = np.full(p, np.inf)
    nrm = np.zeros((p, 3))
    eps = 1e-6
    if obj["shape"] == 1:  # sphere resting on the ground
        c = np.array([cx, cy, r])
        oc = o - c
        b = _dot(oc, d)
        cc = _dot(oc, oc) - r * r
        disc = b * b - cc
        ok = disc >= 0
        sq = np.sqrt(np.where(ok, disc, 0.0))
        t0 = -b - sq
        t1 = -b + sq
        t = np.where(t0 > eps, t0, np.where(t1 > eps, t1, np.inf))
        t = np.where(ok, t, np.inf)
        hitp = o + d * np.where(np.isfinite(t), t, 0.0)[:, None]
        nrm = (hitp - c) / r
        return t, nrm
    # cube and cylinder: work in the object's frame (rotation about z)
    ct, st = math.cos(th), math.sin(th)
    lo_ = np.stack([ct * (o[:, 0] - cx) + st * (o[:, 1] - cy), -st * (o[:, 0] - cx) + ct * (o[:, 1] - cy), o[:, 2]], 1)
    ld = np.stack([ct * d[:, 0] + st * d[:, 1], -st * d[:, 0] + ct * d[:, 1], d[:, 2]], 1)
    if obj["shape"] == 0:  # cube, half side r / sqrt(2) as CLEVR scales cubes
        hs = r / math.sqrt(2.0)
        lo_b = np.array([-hs, -hs, 0.0])
        hi_b = np.array([hs, hs, 2.0 * hs])
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / ld
            t1 = (lo_b - lo_) * inv
            t2 = (hi_b - lo_) * inv
        tmin = np.nanmax(np.minimum(t1, t2), axis=1)
        tmax = np.nanmin(np.maximum(t1, t2), axis=1)
        ok = (tmax >= tmin) & (tmax > eps)
        t = np.where(ok, np.where(tmin > eps, tmin, tmax), np.inf)
        axis = np.argmax(np.minimum(t1, t2), axis=1)
        sign = -np.sign(ld[np.arange(p), axis])
        ln = np.zeros((p, 3))
        ln[np.arange(p), axis] = sign
    else:  # cylinder, radius r, height 2r
        a = ld[:, 0] ** 2 + ld[:, 1] ** 2
        b = lo_[:, 0] * ld[:, 0] + lo_[:, 1] * ld[:, 1]
        cc = lo_[:, 0] ** 2 + lo_[:, 1] ** 2 - r * r
        disc = b * b - a * cc
        ok = (disc >= 0) & (a > 1e-12)
        sq = np.sqrt(np.where(ok, disc, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            ts = np.where(ok, (-b - sq) / np.where(a > 1e-12, a, 1.0), np.inf)
        zs = lo_[:, 2] + ts * ld[:, 2]
        side_ok = ok & (ts > eps) & (zs >= 0) & (zs <= 2 * r)
        t_side = np.where(side_ok, ts, np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            tc = np.where(np.abs(ld[:, 2]) > 1e-12, (2 * r - lo_[:, 2]) / ld[:, 2], np.inf)
        px = lo_[:, 0] + tc * ld[:, 0]
        py = lo_[:, 1] + tc * ld[:, 1]
        cap_ok = (tc > eps) & (px**2 + py**2 <= r * r)
        t_cap = np.where(cap_ok, tc, np.inf)
        t = np.minimum(t_side, t_cap)
        ln = np.zeros((p, 3))
        use_cap = t_cap < t_side
        hx = lo_[:, 0] + np.where(np.isfinite(t), t, 0) * ld[:, 0]
        hy = lo_[:, 1] + np.where(np.isfinite(t), t, 0) * ld[:, 1]
        ln[:, 0] = np.where(use_cap, 0.0, hx / r)
        ln[:, 1] = np.where(use_cap, 0.0, hy / r)
        ln[:, 2] = np.where(use_cap, 1.0, 0.0)
    # back to world frame
    nrm = np.stack([ct * ln[:, 0] - st * ln[:, 1], st * ln[:, 0] + ct * ln[:, 1], ln[:, 2]], 1)
    return t, nrm


_FWD = _normalize(-CAM_POS)
_RIGHT = _normalize(_cross(_FWD, np.array([0.0, 0.0, 1.0])))
_UP = _cross(_RIGHT, _FWD)
_TX = math.tan(_FOV_X / 2.0)
_TY = _TX * FULL_H / FULL_W


def _screen_box(points: np.ndarray, pad: int = 2) -> np.ndarray:
    """Flat pixel indices of the screen box around 3-D points (m, 3) in front of the camera."""
    v = points - CAM_POS
    depth = _dot(v, _FWD)
    col = (_dot(v, _RIGHT) / depth / _TX + 1.0) / 2.0 * FULL_W - 0.5
    row = (1.0 - _dot(v, _UP) / depth / _TY) / 2.0 * FULL_H - 0.5
    c0 = max(0, int(math.floor(col.min())) - pad)
    c1 = min(FULL_W - 1, int(math.ceil(col.max())) + pad)
    r0 = max(0, int(math.floor(row.min())) - pad)
    r1 = min(FULL_H - 1, int(math.ceil(row.max())) + pad)
    if c0 > c1 or r0 > r1:
        return np.zeros(0, dtype=np.int64)
    return (np.arange(r0, r1 + 1)[:, None] * FULL_W + np.arange(c0, c1 + 1)[None, :]).ravel()


_CORNERS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)


def _bounds(obj: dict) -> tuple[np.ndarray, np.ndarray]:
    """Corners of the bounding cube of an object (8, 3) and of its shadow volume (16, 3)."""
    r = obj["r"]
    rad = r * math.sqrt(2.0) + 1e-3
    c = np.array([obj["x"], obj["y"], r])
    body = c + rad * _CORNERS
    reach = (r + rad) / LIGHT_DIR[2]  # far enough along -light to pass below the ground
    return body, np.concatenate([body, body - reach * LIGHT_DIR])


def render_scene(objects: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Render one scene at 240x320: image (240, 320, 3) uint8, labels (240, 320) int8.

    Every ray is cast through the full frame; rays are only tested against an object
    inside the screen box of its bounding cube (camera rays) or of its shadow volume
    (shadow rays), which changes nothing but the cost.
    """
    d = _RAYS
    p = d.shape[0]
    with np.errstate(divide="ignore"):
        best_t = np.where(d[:, 2] < -1e-9, -CAM_POS[2] / d[:, 2], np.inf)  # ground plane z = 0
    label = np.zeros(p, dtype=np.int8)
    normal = np.zeros((p, 3))
    normal[:, 2] = 1.0
    boxes = [_bounds(o) for o in objects]
    for k, obj in enumerate(objects):
        idx = _screen_box(boxes[k][0])
        if idx.size == 0:
            continue
        t, n = _hit(obj, CAM_POS, d[idx])
        closer = t < best_t[idx]
        win = idx[closer]
        best_t[win] = t[closer]
        label[win] = k + 1
        normal[win] = n[closer]
    hit = np.isfinite(best_t)
    pos = CAM_POS + d * np.where(hit, best_t, 0.0)[:, None]
    # shadows: a ray towards the light from every visible surface point
    shadow = np.zeros(p, dtype=bool)
    for k, obj in enumerate(objects):
        idx = _screen_box(boxes[k][1])
        if idx.size == 0:
            continue
        origin = pos[idx] + normal[idx] * 1e-4
        t, _ = _hit(obj, origin, np.broadcast_to(LIGHT_DIR, (idx.size, 3)))
        shadow[idx] |= np.isfinite(t)
    rgb = np.empty((p, 3))
    # ground: normal (0, 0, 1), so n.l is the light's z
    dist = np.sqrt(pos[:, 0] * pos[:, 0] + pos[:, 1] * pos[:, 1])
    lit_ground = np.where(shadow, 0.0, max(LIGHT_DIR[2], 0.0))
    gshade = (0.55 + 0.5 * lit_ground) * (1.0 - 0.02 * np.clip(dist - 4.0, 0.0, 8.0))
    rgb[:] = GROUND_RGB[None, :] * gshade[:, None]
    rgb[~hit] = GROUND_RGB * 0.55
    for k, obj in enumerate(objects):
        m = np.nonzero(label == k + 1)[0]
        if m.size == 0:
            continue
        nm, dm, sm = normal[m], d[m], shadow[m]
        lit = np.where(sm, 0.0, np.clip(_dot(nm, LIGHT_DIR), 0.0, None))
        spec = np.clip(_dot(nm, _normalize(LIGHT_DIR[None, :] - dm)), 0.0, None)
        fill = 0.35 + 0.25 * np.clip(nm[:, 2], 0.0, None)  # sky fill light from above
        base = COLORS[obj["color"]]
        if obj["material"] == 0:  # rubber: matte
            col = base[None] * (fill[:, None] + 0.75 * lit[:, None]) + 0.04 * spec[:, None] ** 8
        else:  # metal: dark diffuse, tinted sharp highlight, sky reflection
            refl = dm - 2.0 * _dot(dm, nm)[:, None] * nm
            sky = 0.25 + 0.35 * np.clip(refl[:, 2], 0.0, 1.0)
            col = base[None] * (0.45 * fill[:, None] + 0.35 * lit[:, None] + sky[:, None])
            col = col + (0.9 * np.where(sm, 0.0, 1.0) * spec**60)[:, None] * (0.5 + 0.5 * base[None])
        rgb[m] = col
    img = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8).reshape(FULL_H, FULL_W, 3)
    return img, label.reshape(FULL_H, FULL_W)


def _draw_objects(rng: np.random.Generator, count: int) -> list[dict] | None:
    """CLEVR-style placement: uniform in [-3, 3]^2 with a gap between objects."""
    objs: list[dict] = []
    for _ in range(count):
        for _attempt in range(100):
            size = int(rng.integers(0, 2))
            r = SIZES[SIZE_NAMES[size]]
            x, y = rng.uniform(-3.0, 3.0, size=2)
            if all(math.hypot(x - o["x"], y - o["y"]) - r - o["r"] >= 0.25 for o in objs):
                objs.append(
                    {
                        "shape": int(rng.integers(0, 3)),
                        "color": int(rng.integers(0, 8)),
                        "material": int(rng.integers(0, 2)),
                        "size": size,
                        "r": r,
                        "x": float(x),
                        "y": float(y),
                        "rotation": float(rng.uniform(0.0, 2.0 * math.pi)),
                    }
                )
                break
        else:
            return None
    return objs


def crop_and_recount(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop (240, 320) -> (192, 192) and renumber the objects still visible.

    Returns image (192, 192, 3), labels (192, 192) int8 with 1..K consecutive, and
    kept (K,) the original label ids in their new order.
    """
    img = image[CROP_ROWS[0] : CROP_ROWS[1], CROP_COLS[0] : CROP_COLS[1]]
    lab = labels[CROP_ROWS[0] : CROP_ROWS[1], CROP_COLS[0] : CROP_COLS[1]]
    kept = np.array([v for v in np.unique(lab) if v > 0], dtype=np.int64)
    lut = np.zeros(max(int(labels.max()), 0) + 2, dtype=np.int8)
    lut[kept] = np.arange(1, kept.size + 1)
    out = np.where(lab > 0, lut[np.clip(lab, 0, None)], lab).astype(np.int8)
    return np.ascontiguousarray(img), out, kept


def generate(n: int, rng: np.random.Generator, n_objects: tuple[int, int] = DEFAULT_OBJECTS) -> SceneBatch:
    """Generate `n` scenes (rendered 240x320, stored as the 192x192 crop).

    `n_objects` is the number of objects in the full scene (CLEVR6 counts this way);
    the stored `n_objects` is recounted after the crop, `n_scene_objects` keeps the
    full-frame count.
    """
    lo, hi = int(n_objects[0]), int(n_objects[1])
    if not 1 <= lo <= hi <= MAX_OBJECTS:
        raise ValueError(f"clevr_like: n_objects range must satisfy 1 <= min <= max <= {MAX_OBJECTS}, got {n_objects}")
    images = np.zeros((n, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.zeros((n, SIZE, SIZE), dtype=np.int8)
    counts = np.zeros(n, dtype=np.int64)
    keys = ("shape", "color", "material", "size")
    fac = {k: np.full((n, hi), -1, dtype=np.int16) for k in keys}
    for k in ("x", "y", "rotation"):
        fac[k] = np.full((n, hi), np.nan, dtype=np.float32)
    scene_n = np.zeros(n, dtype=np.int16)
    for i in range(n):
        count = int(rng.integers(lo, hi + 1))
        while True:
            objs = _draw_objects(rng, count)
            if objs is None:
                continue
            img, lab = render_scene(objs)
            vis = np.bincount(lab.ravel().astype(np.int64), minlength=count + 1)[1:]
            if (vis >= MIN_VISIBLE_PX).all():
                break
        cimg, clab, kept = crop_and_recount(img, lab)
        images[i], labels[i], counts[i] = cimg, clab, kept.size
        scene_n[i] = count
        for j, old in enumerate(kept):  # factors in the new label order
            o = objs[int(old) - 1]
            for k in keys:
                fac[k][i, j] = o[k]
            for k in ("x", "y", "rotation"):
                fac[k][i, j] = o[k]
    fac["n_scene_objects"] = scene_n
    return SceneBatch(images, labels, counts, fac)
