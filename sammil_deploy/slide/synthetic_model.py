"""Procedural H&E-like tissue model behind the synthetic slides.

Everything is a function of continuous level-0 coordinates, so any level and any tile can be rendered on its own
(and tiles join without seams):

* coarse *fields* on a grid of ``field_pitch_px`` level-0 pixels: signed distance to the tissue outline (tissue
  pieces with irregular outlines, minus round lumens), tumour weight in [0, 1] and eosin strength;
* nuclei on a hashed jittered grid of ``cell_px`` (~16 um) level-0 cells, two staggered layers: each cell holds at
  most one elliptical nucleus whose presence, size, shape and darkness come from an integer hash of the cell
  index, so every level draws the same nuclei (levels where they are sub-pixel draw their area fraction);
* seamless periodic noise banks indexed by absolute level pixel for scanner noise, chromatin and stroma texture.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sammil_deploy.slide.synthetic_spec import SyntheticSlideSpec

# RGB colours; pixel = background + alpha * (stroma or tumour cytoplasm) + alpha * nuclei * (nucleus colour).
STROMA_RGB = (234, 168, 206)
TUMOUR_CYTOPLASM_RGB = (196, 138, 196)
NUCLEUS_RGB = (112, 74, 158)
TUMOUR_NUCLEUS_RGB = (60, 30, 104)

CELL_UM = 16.0  # nucleus cell pitch; the cell size in px is rounded to a power of two so cells align with tiles
EDGE_UM = 4.0  # width of the tissue/background transition
FUZZ_UM = 2.0  # amplitude of the per-pixel jitter of the tissue outline
TUMOUR_EDGE_UM = 30.0  # width of the normal/tumour transition
BANK_PX = 1024  # period of the noise banks (level pixels)
# Nucleus layers: (offset as a fraction of a cell, presence probability in normal tissue, in tumour).
_LAYERS = ((0.0, 0.6, 0.95), (0.5, 0.3, 0.85))
_U64 = np.uint64


class SlideModel:
    """The continuous model of one synthetic slide; ``render_tile`` draws any tile of any level.

    Attributes:
        fields: ``(Hf, Wf, 3)`` float32 on a ``field_pitch_px`` grid: signed distance to the tissue outline in
            level-0 px (> 0 inside), tumour weight in [0, 1], eosin strength (~1).
        field_pitch_px: Level-0 pixels per field cell; cell ``k`` is centred on ``(k + 0.5) * field_pitch_px``.
        cell_px: Level-0 size of a nucleus cell (power of two).
    """

    def __init__(self, spec: SyntheticSlideSpec) -> None:
        self.spec = spec
        self.cell_px = int(min(128, max(8, 2 ** round(math.log2(CELL_UM / spec.mpp)))))
        self.field_pitch_px = self.cell_px // 2
        self._edge_px = EDGE_UM / spec.mpp
        self._fuzz_px = FUZZ_UM / spec.mpp
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0x5A11]))
        self.fields = _build_fields(spec, self.field_pitch_px, rng)
        self._salt = int(np.random.SeedSequence([spec.seed, 0xCE11]).generate_state(1, np.uint64)[0])
        size = BANK_PX + spec.tile_px
        self._noise_rgb = _periodic_bank(rng, (BANK_PX, BANK_PX, 3), size, blur_px=0.0) * spec.noise_std
        self._noise_rgb += np.asarray(spec.background_rgb, np.float32)
        self._chromatin = _unit_range(_periodic_bank(rng, (BANK_PX, BANK_PX), size, blur_px=0.8))
        self._fibres = _unit_range(_periodic_bank(rng, (BANK_PX, BANK_PX), size, blur_px=(4.0, 0.7)))
        self._fuzz = _periodic_bank(rng, (BANK_PX, BANK_PX), size, blur_px=3.0)
        bg = np.asarray(spec.background_rgb, np.float32)
        stroma, cyto = np.asarray(STROMA_RGB, np.float32), np.asarray(TUMOUR_CYTOPLASM_RGB, np.float32)
        self._colours = np.stack(
            [stroma - bg, cyto - bg, np.asarray(NUCLEUS_RGB) - stroma, np.asarray(TUMOUR_NUCLEUS_RGB) - cyto]
        ).astype(np.float32)

    def background_tile(self, variant: int) -> np.ndarray:
        """A ``(T, T, 3)`` uint8 tile of plain background with scanner noise (``variant`` picks the window)."""
        t = self.spec.tile_px
        offset = (variant * 257) % BANK_PX
        window = self._noise_rgb[offset : offset + t, offset : offset + t]
        return np.clip(window, 0, 255).astype(np.uint8)

    def render_tile(self, downsample: int, x0: int, y0: int) -> np.ndarray | None:
        """Render the tile whose top-left corner is level pixel ``(x0, y0)`` of the level with ``downsample``.

        Returns:
            ``(T, T, 3)`` uint8 RGB, or None when the tile holds no tissue at all (plain background).
        """
        import cv2

        t = self.spec.tile_px
        fields = _sample(self.fields, self.field_pitch_px, downsample, (x0, y0), (t, t))
        signed = fields[..., 0]
        # The outline jitter is a few level-0 px wide, so d x d averaging leaves ~1/d of it; the ramp widens to keep
        # the variance of the outline position (ramp width^2 / 12 + jitter^2), hence the mean alpha, level-invariant.
        fuzz_px = self._fuzz_px / downsample
        edge_px = math.sqrt(self._edge_px**2 + 12.0 * (self._fuzz_px**2 - fuzz_px**2))
        signed += self._bank(self._fuzz, x0, y0) * fuzz_px
        alpha = np.clip(signed * (1.0 / max(edge_px, downsample)) + 0.5, 0.0, 1.0)  # >= 1 px: anti-aliased
        if not alpha.any():
            return None
        tumour = fields[..., 1]
        eosin = fields[..., 2] * (0.8 + 0.4 * self._bank(self._fibres, x0, y0))
        nuclei = self._nuclei(downsample, x0, y0)
        nuclei *= 0.7 + 0.6 * self._bank(self._chromatin, x0, y0)
        weights = np.empty((t, t, 4), np.float32)
        np.multiply(alpha, tumour, out=weights[..., 1])
        np.multiply(alpha - weights[..., 1], eosin, out=weights[..., 0])
        weights[..., 1] *= 0.5 + 0.5 * eosin  # tumour cytoplasm keeps some of the stroma texture
        alpha *= np.minimum(nuclei, 1.0, out=nuclei)
        np.multiply(alpha, tumour, out=weights[..., 3])
        np.subtract(alpha, weights[..., 3], out=weights[..., 2])
        rgb = cv2.transform(weights, self._colours.T.copy())  # (t, t, 4) x (4, 3); numpy's matmul is 30x slower
        rgb += self._noise_rgb[y0 % BANK_PX : y0 % BANK_PX + t, x0 % BANK_PX : x0 % BANK_PX + t]
        return np.clip(rgb, 0, 255, out=rgb).astype(np.uint8)

    def _bank(self, bank: np.ndarray, x0: int, y0: int) -> np.ndarray:
        t = self.spec.tile_px
        return bank[y0 % BANK_PX : y0 % BANK_PX + t, x0 % BANK_PX : x0 % BANK_PX + t]

    def _nuclei(self, downsample: int, x0: int, y0: int) -> np.ndarray:
        """``(T, T)`` float32 nuclear coverage (times darkness) of the tile, max over the two layers."""
        t, c0 = self.spec.tile_px, self.cell_px
        cell_lv = c0 / downsample  # cell size in level pixels (a power of two, possibly < 1)
        out = np.zeros((t, t), np.float32)
        for layer, (offset_frac, p_normal, p_tumour) in enumerate(_LAYERS):
            offset0 = offset_frac * c0
            # Cells overlapping the tile, in global cell indices of this layer.
            cx0 = math.floor((x0 * downsample - offset0) / c0)
            cy0 = math.floor((y0 * downsample - offset0) / c0)
            ncx = math.floor(((x0 + t) * downsample - offset0) / c0) - cx0 + 1
            ncy = math.floor(((y0 + t) * downsample - offset0) / c0) - cy0 + 1
            cells = self._cells(layer, cx0, cy0, ncx, ncy, offset0, p_normal, p_tumour)
            # Nuclei of >= 4 px cells are drawn; smaller ones only contribute their area fraction.
            draw = _draw_ellipses if cell_lv >= 4 else _cell_area_fractions
            cover = draw(cells, c0, downsample)
            # Level-pixel position of this layer's first cell relative to the tile origin (<= 0).
            sx = round((cx0 * c0 + offset0) / downsample) - x0
            sy = round((cy0 * c0 + offset0) / downsample) - y0
            crop = cover[-sy : -sy + t, -sx : -sx + t]
            np.maximum(out[: crop.shape[0], : crop.shape[1]], crop, out=out[: crop.shape[0], : crop.shape[1]])
        return out

    def _cells(
        self, layer: int, cx0: int, cy0: int, ncx: int, ncy: int, offset0: float, p_normal: float, p_tumour: float
    ) -> dict[str, np.ndarray]:
        """Nucleus parameters of an ``(ncy, ncx)`` block of cells, in level-0 px relative to each cell's corner."""
        c0 = self.cell_px
        ix = np.arange(cx0, cx0 + ncx, dtype=np.int64)[None, :].repeat(ncy, 0)
        iy = np.arange(cy0, cy0 + ncy, dtype=np.int64)[:, None].repeat(ncx, 1)
        u = _hash_uniforms(ix, iy, self._salt + layer, 7)
        # Field at each cell centre (level-0 (k + 0.5) * c0 + offset).
        centre_x, centre_y = cx0 * c0 + offset0 + c0 / 2, cy0 * c0 + offset0 + c0 / 2
        at_centre = _sample_points(self.fields, self.field_pitch_px, (centre_x, centre_y), c0, (ncx, ncy))
        alpha = np.clip(at_centre[..., 0] / self._edge_px + 0.5, 0.0, 1.0)
        tumour = at_centre[..., 1]
        normal = 1.0 - tumour
        present = u[0] < alpha * (normal * p_normal + tumour * p_tumour)
        radius = c0 * (normal * (0.10 + 0.07 * u[1]) + tumour * (0.20 + 0.10 * u[1]))
        aspect = 1.0 + normal * 1.8 * u[2] + tumour * 0.35 * u[2]
        major = np.minimum(radius * np.sqrt(aspect), 0.45 * c0)
        minor = radius / np.sqrt(aspect)
        centre = major + u[4] * (c0 - 2 * major)  # keeps the ellipse inside its cell
        return {
            "major": major,
            "minor": minor,
            "angle": np.pi * u[3],
            "cx": centre,
            "cy": major + u[5] * (c0 - 2 * major),
            "darkness": np.where(present, 0.85 + 0.15 * u[6], 0.0).astype(np.float32),
        }


def _draw_ellipses(cells: dict[str, np.ndarray], c0: int, downsample: int) -> np.ndarray:
    """Anti-aliased coverage of one ellipse per cell: ``(ncy * cl, ncx * cl)`` float32, cl = c0 / downsample."""
    cl = c0 // downsample
    # Axes of at least 0.8 level px, darkness scaled down to keep each nucleus's integrated area.
    minor_lv = cells["minor"] / downsample
    inflate = np.maximum(1.0, 0.8 / minor_lv)
    major, minor = cells["major"] * inflate / downsample, minor_lv * inflate
    darkness = cells["darkness"] / inflate**2
    cos, sin = np.cos(cells["angle"]), np.sin(cells["angle"])
    # q(dx, dy) = 1 on the outline; (1 - q) * minor / 2 ~ distance inside the outline in level px.
    gain = 0.5 * minor

    def per_cell(values: np.ndarray) -> np.ndarray:  # (ncy, ncx) -> (ncy, 1, ncx, 1) float32
        return values.astype(np.float32)[:, None, :, None]

    qa = per_cell((cos**2 / major**2 + sin**2 / minor**2) * gain)
    qb = per_cell(2 * cos * sin * (1 / major**2 - 1 / minor**2) * gain)
    qc = per_cell((sin**2 / major**2 + cos**2 / minor**2) * gain)
    pix = np.arange(cl, dtype=np.float32) + 0.5
    dx = pix[None, None, None, :] - per_cell(cells["cx"] / downsample)  # (ncy, 1, ncx, cl)
    dy = pix[None, :, None, None] - per_cell(cells["cy"] / downsample)  # (ncy, cl, ncx, 1)
    q = qa * dx * dx + qc * dy * dy  # full (ncy, cl, ncx, cl) from here on
    q += (qb * dx) * dy
    cover = np.subtract(per_cell(gain + 0.5), q, out=q)
    np.clip(cover, 0.0, 1.0, out=cover)
    cover *= per_cell(darkness)
    ncy, ncx = darkness.shape
    return cover.reshape(ncy * cl, ncx * cl)


def _cell_area_fractions(cells: dict[str, np.ndarray], c0: int, downsample: int) -> np.ndarray:
    """Nuclear area fraction per cell, spread over (cl >= 1) or averaged into (cl < 1) level pixels."""
    cell_lv = c0 / downsample
    frac = (np.pi * cells["major"] * cells["minor"] / (c0 * c0) * cells["darkness"]).astype(np.float32)
    if cell_lv >= 1:
        k = int(cell_lv)
        return np.repeat(np.repeat(frac, k, axis=0), k, axis=1)
    k = round(1 / cell_lv)
    ncy, ncx = frac.shape
    padded = np.zeros((-(-ncy // k) * k, -(-ncx // k) * k), np.float32)
    padded[:ncy, :ncx] = frac
    return padded.reshape(padded.shape[0] // k, k, padded.shape[1] // k, k).mean(axis=(1, 3))


def _sample(fields: np.ndarray, pitch: int, downsample: float, xy0: tuple[float, float], size_wh: tuple[int, int]):
    """Bilinear sample of the fields at the centres of a block of level pixels: ``(h, w, C)`` float32."""
    import cv2

    scale = downsample / pitch
    # Level pixel j has level-0 centre (x0 + j + 0.5) * downsample; field cell k is centred on (k + 0.5) * pitch.
    ox = (xy0[0] + 0.5) * scale - 0.5
    oy = (xy0[1] + 0.5) * scale - 0.5
    matrix = np.array([[scale, 0.0, ox], [0.0, scale, oy]], np.float64)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(fields, matrix, size_wh, flags=flags, borderMode=cv2.BORDER_REPLICATE)


def _sample_points(fields, pitch, first_xy0: tuple[float, float], step0: float, count_wh: tuple[int, int]):
    """Fields at a regular grid of level-0 points ``first + k * step0``: ``(ny, nx, C)`` float32."""
    import cv2

    scale = step0 / pitch
    matrix = np.array([[scale, 0.0, first_xy0[0] / pitch - 0.5], [0.0, scale, first_xy0[1] / pitch - 0.5]], np.float64)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(fields, matrix, count_wh, flags=flags, borderMode=cv2.BORDER_REPLICATE)


def _hash_uniforms(ix: np.ndarray, iy: np.ndarray, salt: int, n: int) -> np.ndarray:
    """``(n, *ix.shape)`` float32 uniforms in [0, 1) from a splitmix64 hash of integer cell indices."""
    with np.errstate(over="ignore"):
        key = (ix.astype(_U64) * _U64(0x9E3779B97F4A7C15)) ^ (iy.astype(_U64) * _U64(0xC2B2AE3D27D4EB4F))
        key ^= _U64(salt % 2**64)
        out = np.empty((n, *ix.shape), np.float32)
        for k in range(n):
            z = key + _U64((k + 1) * 0x632BE59BD9B4E019 % 2**64)
            z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
            z ^= z >> _U64(31)
            out[k] = (z >> _U64(40)).astype(np.float32) * np.float32(2.0**-24)
    return out


def _periodic_bank(rng: np.random.Generator, shape: tuple[int, ...], size: int, blur_px) -> np.ndarray:
    """Periodic noise (period ``shape[:2]``) of unit std, padded by wrap-around to ``size`` so windows never wrap."""
    import cv2

    bank = rng.standard_normal(shape, dtype=np.float32)
    sigma = (blur_px, blur_px) if np.isscalar(blur_px) else blur_px
    if max(sigma) > 0:  # blur a wrap-padded copy so the result stays periodic (GaussianBlur has no BORDER_WRAP)
        m = math.ceil(4 * max(sigma))
        padded = np.pad(bank, [(m, m), (m, m)] + [(0, 0)] * (len(shape) - 2), mode="wrap")
        bank = cv2.GaussianBlur(padded, (0, 0), sigmaX=sigma[0], sigmaY=sigma[1])[m:-m, m:-m]
        bank /= bank.std()
    pad = [(0, size - shape[0]), (0, size - shape[1])] + [(0, 0)] * (len(shape) - 2)
    return np.pad(bank, pad, mode="wrap")


def _unit_range(noise: np.ndarray) -> np.ndarray:
    """Map unit-std noise to [0, 1] with mean 0.5 (so multiplicative textures keep the mean)."""
    return np.clip(0.5 + noise / 6.0, 0.0, 1.0)


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth noise of unit std on an ``shape`` grid, features about ``cell`` grid cells wide."""
    import cv2

    cell = max(1.0, cell)
    gh, gw = int(shape[0] / cell) + 3, int(shape[1] / cell) + 3
    coarse = rng.standard_normal((gh, gw), dtype=np.float32)
    fine = cv2.resize(coarse, (math.ceil(gw * cell), math.ceil(gh * cell)), interpolation=cv2.INTER_CUBIC)
    fine = fine[: shape[0], : shape[1]]
    return fine / max(float(fine.std()), 1e-6)


def _build_fields(spec: SyntheticSlideSpec, pitch: int, rng: np.random.Generator) -> np.ndarray:
    """The ``(Hf, Wf, 3)`` float32 fields (signed distance, tumour weight, eosin) of the slide."""
    w, h = spec.width_px, spec.height_px
    hf, wf = math.ceil(h / pitch), math.ceil(w / pitch)
    ys = ((np.arange(hf, dtype=np.float32) + 0.5) * pitch)[:, None]
    xs = ((np.arange(wf, dtype=np.float32) + 0.5) * pitch)[None, :]
    fields = np.zeros((hf, wf, 3), np.float32)
    n = spec.n_tissue_pieces
    if n == 0:
        fields[..., 0] = -1e6
        fields[..., 2] = 1.0
        return fields
    # Pieces sit in n slots along the long side, each ~30% / n of the slide's area, elongated across the slots.
    radius = math.sqrt(0.3 * w * h / (n * math.pi))
    along_x = w >= h
    signed = np.full((hf, wf), -np.inf, np.float32)
    for slot in rng.permutation(n):
        t_along, t_across = (slot + 0.5 + rng.uniform(-0.1, 0.1)) / n, 0.5 + rng.uniform(-0.08, 0.08)
        cx, cy = (t_along * w, t_across * h) if along_x else (t_across * w, t_along * h)
        stretch = rng.uniform(1.1, 1.4)
        ax_x, ax_y = (radius / stretch, radius * stretch) if along_x else (radius * stretch, radius / stretch)
        signed = np.maximum(signed, _ellipse_distance(xs, ys, (cx, cy), (ax_x, ax_y), rng.uniform(-0.4, 0.4)))
    cell = radius / pitch
    signed += radius * (0.3 * _value_noise(rng, (hf, wf), cell / 1.5) + 0.08 * _value_noise(rng, (hf, wf), cell / 6))
    margin = 0.03 * min(w, h)
    signed = np.minimum(signed, np.minimum(np.minimum(xs, w - xs), np.minimum(ys, h - ys)) - margin)
    for _ in range(spec.n_lumens):
        r_lumen = min(rng.uniform(30.0, 120.0) / spec.mpp, 0.2 * radius)
        centre = _pick_inside(rng, signed, 1.5 * r_lumen, xs, ys)
        if centre is not None:
            stretch = rng.uniform(1.0, 1.6)
            lumen = -_ellipse_distance(xs, ys, centre, (r_lumen * stretch, r_lumen / stretch), rng.uniform(0, np.pi))
            np.minimum(signed, lumen, out=signed)
    fields[..., 0] = signed
    if spec.tumour:
        r_tumour = spec.tumour_radius_um / spec.mpp
        tumour = np.full((hf, wf), -np.inf, np.float32)
        for _ in range(spec.n_tumour_foci):
            centre = _pick_inside(rng, signed, min(0.6 * r_tumour, float(signed.max()) * 0.8), xs, ys)
            if centre is None:  # tissue thinner than the margin: centre the focus on its deepest point
                row, col = np.unravel_index(int(np.argmax(signed)), signed.shape)
                centre = (float(xs[0, col]), float(ys[row, 0]))
            stretch = rng.uniform(1.0, 1.4)
            axes = (r_tumour * stretch, r_tumour / stretch)
            tumour = np.maximum(tumour, _ellipse_distance(xs, ys, centre, axes, rng.uniform(0, np.pi)))
        tumour += 0.2 * r_tumour * _value_noise(rng, (hf, wf), max(2.0, r_tumour / pitch / 3))
        fields[..., 1] = np.clip(tumour / (TUMOUR_EDGE_UM / spec.mpp) + 0.5, 0.0, 1.0)
    eosin = 1.0 + 0.2 * _value_noise(rng, (hf, wf), cell / 2) + 0.1 * _value_noise(rng, (hf, wf), cell / 10)
    fields[..., 2] = np.clip(eosin, 0.55, 1.4)
    return fields


def _ellipse_distance(xs, ys, centre, axes, angle: float) -> np.ndarray:
    """Approximate signed distance (level-0 px, > 0 inside) to a rotated ellipse on a grid."""
    cos, sin = math.cos(angle), math.sin(angle)
    u = (xs - centre[0]) * cos + (ys - centre[1]) * sin
    v = -(xs - centre[0]) * sin + (ys - centre[1]) * cos
    rho = np.sqrt((u / axes[0]) ** 2 + (v / axes[1]) ** 2)
    return ((1.0 - rho) * min(axes)).astype(np.float32)


def _pick_inside(rng, signed: np.ndarray, depth_px: float, xs, ys) -> tuple[float, float] | None:
    """A random field-cell centre at least ``depth_px`` inside the tissue, or None if there is none."""
    rows, cols = np.nonzero(signed > depth_px)
    if rows.size == 0:
        return None
    k = int(rng.integers(rows.size))
    return float(xs[0, cols[k]]), float(ys[rows[k], 0])
