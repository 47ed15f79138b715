"""Synthetic chest radiographs with ground-truth opacity boxes and fake PHI.

Three users: the demo (a dataset anyone can ingest without credentials), the
tests (real DICOM bytes in every transfer syntax ingest must read, headers full
of PHI that de-identification must remove), and the active-learning simulator,
which uses `truth.jsonl` as the oracle that "labels" the images a strategy picks.

How an image is made (`generate_case`):
  1. Anatomy is drawn in a patient frame on a half-resolution grid, as additive
     brightness (a processed radiograph is roughly log-attenuation, so overlapping
     structures add): soft tissue, lungs, heart, mediastinum, spine, ribs,
     clavicles, vessels, and distractors (breast shadows, ECG leads, tubes...).
  2. Opacities are drawn in the same frame, one field per lesion, with a pattern
     per subtype; each lesion's box is the bounding box of where its field is
     visibly present.
  3. One affine warp applies patient rotation/shift/scale and upsamples to the
     output size; boxes go through the same transform. Then the tone curve,
     quantum noise and detector markers are applied at full resolution.
Random streams are separated (anatomy, findings, distractors, noise, PHI), so the
same seed with `render_opacities=False` gives the same patient without findings.

`masks=True` also returns where the lungs and the distractors are (`lung_mask`,
`distractor_mask`), warped like the image: what a saliency map is scored against
(heatmap mass inside the lungs; a peak on a marker, lead or tube is a shortcut). The masks
draw no random numbers, so the image is the same with them or without.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from pydicom.uid import generate_uid

from cxrkit.core.atomic import write_atomic
from cxrkit.core.labels import LabelSchema, load_schema
from cxrkit.core.manifest import Box
from cxrkit.data.dicom_write import TRANSFER_SYNTAXES, write_dicom
from cxrkit.data.importers.synthetic import TRUTH_FILE

# Every fake PHI text value contains this token, so a test can grep any output
# (manifests, PNG metadata, Label Studio tasks, logs) for leaks. Dates, times,
# UIDs, age and sex cannot carry it: `phi_strings` lists the distinctive ones.
FAKE_PHI_MARKERS: tuple[str, ...] = ("PHI",)

# Independent random streams of one case (see module docstring).
_ANATOMY, _FINDINGS, _DISTRACTORS, _NOISE, _PHI, _PATIENT, _MIMIC = range(7)

_FIRST_F = ("JANE", "MARIA", "AIKO", "FATIMA", "OLGA", "PRIYA", "GRACE", "LINDA", "SOFIA", "AMARA")
_FIRST_M = ("JOHN", "AHMED", "KENJI", "CARLOS", "IVAN", "RAVI", "PETER", "SAMUEL", "LUCAS", "OMAR")
_LAST = ("DOE", "SMITH", "OKAFOR", "NGUYEN", "GARCIA", "KOWALSKI", "MULLER", "TANAKA", "HASSAN", "ROSSI", "PATEL")
_STREETS = ("MAPLE", "OAK", "ELM", "CEDAR", "BIRCH", "WILLOW", "ASPEN")
_CITIES = ("SPRINGFIELD", "RIVERTON", "LAKEWOOD", "FAIRVIEW", "GREENVILLE")
_INSTITUTIONS = ("PHI GENERAL HOSPITAL", "ST PHI MEDICAL CENTER", "PHI VALLEY CLINIC", "PHI UNIVERSITY HOSPITAL")


@dataclass
class SyntheticCase:
    seed: int
    image: np.ndarray  # float32 (size, size) in [0, 1], high = bright (MONOCHROME2 display)
    boxes: list[Box]  # one per lesion, pixel coordinates of `image`
    impression: str  # the label config's normal, pneumonia or other-abnormality impression (schema roles)
    subtype: str | None  # label_config subtype of every box; None unless pneumonia
    view: str  # "PA" or "AP"
    modality: str  # "CR" or "DX"
    pixel_spacing: float  # mm per pixel at this size
    sex: str  # "F" / "M"
    mimics: list[str] = field(default_factory=list)  # non-pneumonia findings drawn (other-abnormality films)
    phi: dict[str, str] = field(default_factory=dict)  # DICOM keyword -> fake identifying value
    # With generate_case(masks=True), uint8 0/1 masks on `image`'s pixel grid (else None):
    lung_mask: np.ndarray | None = None  # the lung fields (retrocardiac lung included)
    # The dense objects drawn over the patient (nipple markers, ECG electrodes and wires, tubes and
    # lines, calcified granulomas) and the burnt-in side marker / "AP PORTABLE" text.
    distractor_mask: np.ndarray | None = None

    def header(self) -> dict[str, str]:
        """Attributes for `write_dicom(header=...)`: the fake PHI plus descriptive non-PHI."""
        return {
            **self.phi,
            "StudyDescription": f"XR CHEST {self.view}",
            "SeriesDescription": f"CHEST {self.view}",
            "Manufacturer": "CXRKIT SYNTHETIC",
            "PatientOrientation": ["L", "F"] if self.view == "AP" else ["R", "F"],
        }


def phi_strings(case: SyntheticCase) -> list[str]:
    """The case's identifying values that are distinctive enough to search outputs for.

    All marker-bearing text (names, ids, addresses, institutions, free text), the
    patient's family name on its own, dates and UIDs. Short values (sex, age,
    times) are left out: they would match unrelated text.
    """
    out = {v for v in case.phi.values() if any(m in v for m in FAKE_PHI_MARKERS)}
    out.add(case.phi["PatientName"].split("^")[0])
    out.update(v for k, v in case.phi.items() if k.endswith("Date") or k.endswith("UID"))
    return sorted(out)


# ---------------------------------------------------------------- drawing helpers


def _pts(x, y, g: int) -> np.ndarray:
    """Normalised coordinates -> cv2 fixed-point (shift=4) polygon points on a g-grid."""
    return np.round(np.stack([np.asarray(x) * g, np.asarray(y) * g], -1) * 16).astype(np.int32)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with `sigma` in pixels; wide blurs run on a downscaled copy (same look, 10x faster)."""
    if sigma < 0.3:
        return a
    f = int(sigma // 3)
    if f < 2:
        return cv2.GaussianBlur(a, (0, 0), sigma)
    h, w = a.shape
    small = cv2.resize(a, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
    return cv2.resize(cv2.GaussianBlur(small, (0, 0), sigma / f), (w, h), interpolation=cv2.INTER_LINEAR)


def _lowfreq(rng: np.random.Generator, g: int, cells: int) -> np.ndarray:
    """Smooth zero-mean, unit-ish noise with about `cells` blobs across the grid."""
    n = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    big = cv2.resize(n, (g * (cells + 3) // cells, g * (cells + 3) // cells), interpolation=cv2.INTER_CUBIC)
    return big[g // cells : g // cells + g, g // cells : g // cells + g]


def _sig(z):
    return 0.5 + 0.5 * np.tanh(z / 2)  # the logistic function, without exp overflow


def _smooth_curve(rng: np.random.Generator, p0, p1, bend: float, n: int = 24):
    """A quadratic Bezier from p0 to p1 whose control point is pushed sideways by `bend`."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    mid = (p0 + p1) / 2 + np.array([-(p1 - p0)[1], (p1 - p0)[0]]) * bend * rng.uniform(0.5, 1.5)
    t = np.linspace(0, 1, n)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * mid + t**2 * p1
    return pts[:, 0], pts[:, 1]


# ------------------------------------------------------------------------ anatomy


@dataclass
class _Lung:
    side: int  # -1: image left (patient's right), +1: image right (patient's left)
    mask: np.ndarray  # float32 on the grid, soft-edged
    top: float
    base: float  # costophrenic angle height
    hilum: tuple[float, float]

    def local(self, X, Y, cx: float, hw: float):
        """(u, v): u 0 at the mediastinum .. 1 at the chest wall, v 0 at the apex .. 1 at the base."""
        return (self.side * (X - cx) - 0.05) / (hw - 0.05), (Y - self.top) / (self.base - self.top)


class _Chest:
    """One patient's anatomy on a g x g grid in normalised patient-frame coordinates."""

    def __init__(self, rng: np.random.Generator, g: int, view: str):
        self.g = g
        self.ap = view == "AP"
        ax = (np.arange(g, dtype=np.float32) + 0.5) / g
        self.X, self.Y = np.meshgrid(ax, ax)
        self.cx = 0.5 + rng.normal(0, 0.012)
        self.hw = rng.uniform(0.35, 0.40)  # lung half-span
        self.top = rng.uniform(0.10, 0.14)
        # AP films are mostly supine portables: lower inspiration, magnified heart.
        inspiration = rng.uniform(0.92, 1.05) - (0.07 if self.ap else 0.0)
        self.base_r = self.top + rng.uniform(0.62, 0.70) * inspiration
        self.base_l = self.base_r + rng.uniform(0.0, 0.03)  # the left dome sits lower (no liver)
        dome = rng.uniform(0.06, 0.10)
        self.dome_r = self.base_r - dome
        self.dome_l = self.base_l - dome + rng.uniform(0.0, 0.03)
        self.ctr = rng.uniform(0.38, 0.48) + (0.07 if self.ap else 0.0)  # cardiothoracic ratio
        self.rng = rng

    # Each draw_* returns a float32 layer in [0, 1] (or signed where noted).

    def lungs(self) -> list[_Lung]:
        g, rng, cx, hw = self.g, self.rng, self.cx, self.hw
        out = []
        for side, base, dome in ((-1, self.base_r, self.dome_r), (1, self.base_l, self.dome_l)):
            lat_w = hw * rng.uniform(0.96, 1.04)
            apex = rng.uniform(0.11, 0.14)
            t = np.linspace(0, 1, 28)
            lat_x = apex + (lat_w - apex) * np.clip(t / 0.72, 0, 1) ** 0.45
            lat_y = self.top + t * (base - self.top)
            # Diaphragm: costophrenic angle -> dome top -> cardiophrenic angle.
            u = np.linspace(0, 1, 28)
            u0 = rng.uniform(0.4, 0.5)
            card = dome + 0.035
            d_x = lat_w + u * (0.05 - lat_w)
            d_y = np.where(u < u0, dome + (base - dome) * ((u0 - u) / u0) ** 2, dome + (card - dome) * ((u - u0) / (1 - u0)) ** 2)
            # Medial border up the mediastinum, curving into the apex.
            t2 = np.linspace(1, 0, 28)
            med_line = 0.04 + 0.01 * t2
            med_x = apex + (med_line - apex) * np.clip(t2 / 0.12, 0, 1) ** 0.5
            med_y = self.top + t2 * (card - self.top)
            xs = cx + side * np.concatenate([lat_x, d_x, med_x])
            ys = np.concatenate([lat_y, d_y, med_y])
            m = np.zeros((g, g), np.float32)
            cv2.fillPoly(m, [_pts(xs, ys, g)], 1.0, cv2.LINE_8, 4)
            hilum = (cx + side * rng.uniform(0.09, 0.12), self.top + (base - self.top) * rng.uniform(0.38, 0.45))
            out.append(_Lung(side, _blur(m, 0.004 * g), self.top, base, hilum))
        return out

    def body(self) -> np.ndarray:
        g, cx, hw, top = self.g, self.cx, self.hw, self.top
        m = np.zeros((g, g), np.float32)
        p = lambda x, y: tuple(_pts(x, y, g).tolist())  # noqa: E731 - points and axes alike
        cv2.ellipse(m, p(cx, top + 0.5), p(hw + 0.07, 0.62), 0, 0, 360, 1.0, -1, cv2.LINE_8, 4)  # trunk
        cv2.ellipse(m, p(cx, top + 0.02), p(hw + 0.16, 0.13), 0, 0, 360, 1.0, -1, cv2.LINE_8, 4)  # shoulders
        cv2.rectangle(m, p(cx - 0.09, -0.1), p(cx + 0.09, top + 0.1), 1.0, -1, cv2.LINE_8, 4)  # neck
        return _blur(m, 0.02 * g)

    def heart(self) -> np.ndarray:
        g, rng, cx = self.g, self.rng, self.cx
        width = self.ctr * 2 * (self.hw + 0.03)
        m = np.zeros((g, g), np.float32)
        axes = (width / 2, rng.uniform(0.11, 0.13) * (1.08 if self.ap else 1.0))
        centre = (cx + width * rng.uniform(0.10, 0.16), self.dome_l - axes[1] * rng.uniform(0.55, 0.75))
        cv2.ellipse(m, _pts(*centre, g).tolist(), _pts(*axes, g).tolist(), rng.uniform(12, 25), 0, 360, 1.0, -1, cv2.LINE_8, 4)
        # Superior mediastinum and the aortic knob above the heart.
        top = centre[1] - axes[1] * 0.8
        cv2.rectangle(m, tuple(_pts(cx - 0.055, -0.1, g)), tuple(_pts(cx + 0.06, top + 0.05, g)), 0.8, -1, cv2.LINE_8, 4)
        cv2.circle(m, tuple(_pts(cx + 0.055, top - 0.01, g)), int(0.03 * g * 16), 0.9, -1, cv2.LINE_8, 4)
        self.carina = (cx + 0.005, min(top - 0.02, self.top + 0.17))  # airways() and the tubes aim here
        return _blur(m, 0.006 * g)

    def below_diaphragm(self, lung: np.ndarray) -> np.ndarray:
        """Soft mask of everything below the diaphragm line (the lungs' lower border, bridged under the heart)."""
        g = self.g
        inside = lung > 0.5
        cols = np.flatnonzero(inside.any(0))
        lowest = g - 1 - np.argmax(inside[::-1, cols], 0)
        line = np.interp(np.arange(g), cols, lowest).astype(np.float32) / g
        return _sig((self.Y - line[None, :]) / 0.006).astype(np.float32)

    def airways(self) -> np.ndarray:
        g, cx = self.g, self.cx
        m = np.zeros((g, g), np.float32)
        kx, ky = self.carina
        w = max(1, int(0.022 * g))
        cv2.line(m, tuple(_pts(cx, -0.05, g)), tuple(_pts(kx, ky, g)), 1.0, w, cv2.LINE_8, 4)
        for side, ang in ((-1, 0.9), (1, 0.7)):  # the right main bronchus is steeper
            end = (kx + side * 0.06 * math.cos(ang), ky + 0.06 * math.sin(ang))
            cv2.line(m, tuple(_pts(kx, ky, g)), tuple(_pts(*end, g)), 0.8, max(1, int(0.015 * g)), cv2.LINE_8, 4)
        return _blur(m, 0.004 * g)

    def spine(self) -> np.ndarray:
        # Vertebral column behind the mediastinum: a flat-topped band, brighter at each body.
        col = np.exp(-(((self.X[0] - self.cx) / 0.038) ** 6))
        period = (self.base_r - self.top) / 9.5
        row = 0.8 + 0.2 * np.cos(2 * np.pi * (self.Y[:, 0] - self.top) / period) ** 2
        return (row[:, None] * col[None, :]).astype(np.float32)

    def ribs(self) -> np.ndarray:
        g, rng, cx, hw = self.g, self.rng, self.cx, self.hw
        m = np.zeros((g, g), np.float32)
        n = 10
        spacing = (self.base_r - self.top + 0.06) / n
        # Posterior ribs run up and out from the spine, then curve down at the chest wall;
        # AP projection flattens them. Anterior ribs come back down and medially, fainter.
        rise, drop = (0.015, 0.045) if self.ap else (0.025, 0.07)
        th = max(2, int(0.026 * g))
        for side in (-1, 1):
            for k in range(n):
                y0 = self.top - 0.05 + k * spacing + rng.normal(0, 0.004)
                span = (hw + 0.03) * min(1.0, 0.55 + 0.15 * k)
                t = np.linspace(0, 1, 24)
                x = cx + side * (0.025 + t * span)
                y = y0 - rise * np.sin(np.pi * np.clip(t * 1.6, 0, 1)) + drop * (1 + 0.06 * k) * t**1.8
                cv2.polylines(m, [_pts(x, y, g)], False, 1.0, th, cv2.LINE_8, 4)
                cv2.polylines(m, [_pts(x, y, g)], False, 0.7, max(1, th // 2), cv2.LINE_8, 4)  # cortex brighter than marrow
                if 1 <= k <= 7:
                    t = np.linspace(0, 1, 20)
                    ax_ = cx + side * (0.025 + span - t * (span - rng.uniform(0.12, 0.18)))
                    ay = y[-1] + 0.13 * t**1.3 - 0.02 * np.sin(np.pi * t)
                    cv2.polylines(m, [_pts(ax_, ay, g)], False, 0.45, max(2, int(th * 1.3)), cv2.LINE_8, 4)
        return _blur(m, 0.002 * g)

    def clavicles(self) -> np.ndarray:
        g, cx = self.g, self.cx
        m = np.zeros((g, g), np.float32)
        lift = 0.035 if self.ap else 0.0  # AP projects the clavicles above the apices
        for side in (-1, 1):
            t = np.linspace(0, 1, 24)
            x = cx + side * (0.04 + t * (self.hw + 0.02))
            y = self.top + 0.035 - lift - 0.075 * t + 0.012 * np.sin(2 * np.pi * t)
            cv2.polylines(m, [_pts(x, y, g)], False, 1.0, max(2, int(0.026 * g)), cv2.LINE_8, 4)
            cv2.polylines(m, [_pts(x, y, g)], False, 0.6, max(1, int(0.012 * g)), cv2.LINE_8, 4)
            # Humeral head at the shoulder.
            cv2.circle(m, tuple(_pts(cx + side * (self.hw + 0.14), self.top + 0.02 - lift / 2, self.g)), int(0.065 * g * 16), 0.8, -1, cv2.LINE_8, 4)
        return _blur(m, 0.003 * g)

    def vessels(self, lungs: list[_Lung]) -> np.ndarray:
        """Branching pulmonary vessels from each hilum, thinning and fading toward the periphery."""
        g, rng = self.g, self.rng
        m = np.zeros((g, g), np.float32)
        for lung in lungs:
            hx, hy = lung.hilum
            # Main trunks: upper lobe (up and out), middle (out), lower lobe (down and out, the largest).
            for ang, length in ((-1.9, 0.07), (-1.1, 0.06), (-0.3, 0.06), (0.7, 0.08), (1.3, 0.08)):
                a = ang if lung.side > 0 else math.pi - ang
                stack = [(hx, hy, a + rng.normal(0, 0.2), length, 0.009, 1.0, 0)]
                while stack:
                    x, y, a, ln, th, val, depth = stack.pop()
                    x2, y2 = x + ln * math.cos(a), y + ln * math.sin(a)
                    px = th * g
                    cv2.line(m, tuple(_pts(x, y, g)), tuple(_pts(x2, y2, g)), val * min(1.0, px), max(1, int(round(px))), cv2.LINE_8, 4)
                    if depth < 6 and rng.random() > 0.08 * depth:  # some twigs end early
                        for turn in (-1, 1):
                            stack.append((x2, y2, a + turn * rng.uniform(0.15, 0.7), ln * rng.uniform(0.6, 0.85), th * 0.7, val * 0.72, depth + 1))
            cv2.circle(m, tuple(_pts(hx, hy, g)), int(0.022 * g * 16), 0.8, -1, cv2.LINE_8, 4)  # hilar vessels
        return _blur(m, 0.003 * g)


def _distractors(chest: _Chest, rng: np.random.Generator, sex: str, difficulty: float,
                 dense: list[np.ndarray] | None = None) -> np.ndarray:
    """Normal things that look like findings: breast shadows, nipples, leads, tubes, granulomas.

    `dense`, when given, receives the layer of dense objects (markers, leads, tubes, granulomas)
    before its blur: the distractor mask of `generate_case(masks=True)`."""
    g, cx, hw, X, Y = chest.g, chest.cx, chest.hw, chest.X, chest.Y
    out = np.zeros((g, g), np.float32)
    more = 0.5 + difficulty  # harder cases carry more clutter
    if sex == "F" and rng.random() < 0.85:
        for side in (-1, 1):
            bx, by = cx + side * hw * rng.uniform(0.5, 0.7), chest.dome_r - rng.uniform(0.0, 0.05)
            r = (X - bx) ** 2 / (hw * rng.uniform(0.5, 0.65)) ** 2 + (Y - by) ** 2 / rng.uniform(0.1, 0.14) ** 2
            # Denser inferiorly, with the sharp convex lower edge of a real breast shadow.
            out += rng.uniform(0.03, 0.07) * _sig((1 - r) / 0.05) * np.clip((Y - by + 0.08) / 0.12, 0, 1)
    if rng.random() < 0.25 * more:  # nipple shadows: soft nodules at the bases
        for side in (-1, 1):
            p = (cx + side * hw * rng.uniform(0.5, 0.7), chest.dome_r - rng.uniform(0.0, 0.06))
            cv2.circle(out, tuple(_pts(*p, g)), int(0.009 * g * 16), rng.uniform(0.05, 0.09), -1, cv2.LINE_8, 4)
    layer = np.zeros((g, g), np.float32)  # dense (metal, contrast-filled) objects
    if rng.random() < 0.08 * more:  # nipple markers (metal BBs)
        for side in (-1, 1):
            cv2.circle(layer, tuple(_pts(cx + side * hw * 0.6, chest.dome_r - 0.03, g)), int(0.005 * g * 16), 0.8, -1, cv2.LINE_8, 4)
    if rng.random() < (0.5 if chest.ap else 0.08) * more:  # ECG electrodes and their wires
        for _ in range(rng.integers(3, 6)):
            p = (cx + rng.uniform(-hw, hw), rng.uniform(chest.top, chest.base_l))
            cv2.circle(layer, tuple(_pts(*p, g)), int(0.014 * g * 16), 0.25, -1, cv2.LINE_8, 4)
            cv2.circle(layer, tuple(_pts(*p, g)), int(0.004 * g * 16), 0.8, -1, cv2.LINE_8, 4)
            end = (p[0] + rng.normal(0, 0.25), p[1] + rng.uniform(0.2, 0.5))
            cv2.polylines(layer, [_pts(*_smooth_curve(rng, p, end, 0.3), g)], False, 0.3, max(1, int(0.003 * g)), cv2.LINE_8, 4)
    if chest.ap and rng.random() < 0.35 * more:  # endotracheal tube ending above the carina
        kx, ky = chest.carina
        cv2.line(layer, tuple(_pts(kx, -0.02, g)), tuple(_pts(kx, ky - 0.05, g)), 0.35, max(1, int(0.004 * g)), cv2.LINE_8, 4)
    if chest.ap and rng.random() < 0.25 * more:  # nasogastric tube down the oesophagus into the stomach
        xs, ys = _smooth_curve(rng, (cx + 0.01, -0.02), (cx + 0.12, chest.dome_l + 0.08), 0.08)
        cv2.polylines(layer, [_pts(xs, ys, g)], False, 0.4, max(1, int(0.004 * g)), cv2.LINE_8, 4)
    if chest.ap and rng.random() < 0.15 * more:  # central venous line from the subclavian
        side = rng.choice([-1, 1])
        xs, ys = _smooth_curve(rng, (cx + side * (hw + 0.05), chest.top), (cx - 0.03, chest.top + 0.2), 0.1)
        cv2.polylines(layer, [_pts(xs, ys, g)], False, 0.35, max(1, int(0.003 * g)), cv2.LINE_8, 4)
    if rng.random() < 0.2 * more:  # calcified granulomas: tiny, very dense dots
        for _ in range(rng.integers(1, 4)):
            p = (cx + rng.choice([-1, 1]) * rng.uniform(0.1, hw * 0.9), rng.uniform(chest.top + 0.05, chest.dome_r))
            cv2.circle(layer, tuple(_pts(*p, g)), max(16, int(0.004 * g * 16)), 0.45, -1, cv2.LINE_8, 4)
    if dense is not None:
        dense.append(layer.copy())
    return out + _blur(layer, 0.0015 * g)


# ---------------------------------------------------------------------- findings

# Label config subtype -> how its opacities look. A subtype not listed here (Other/Unknown,
# or one a renamed or extended label config brings) gets the generic "patchy" pattern
# rather than an error: the generator works with any vocabulary, and a listed name the
# config lacks is simply never drawn.
_PATTERN_OF = {"Bacterial": "lobar", "Viral": "interstitial", "COVID-19": "peripheral", "Fungal": "nodular"}


def _lesions(chest: _Chest, lungs: list[_Lung], rng: np.random.Generator, subtype: str, difficulty: float) -> list[np.ndarray]:
    """Opacity fields (peak about 1, added with a contrast factor), one per box-worthy lesion.

    The pattern follows `_PATTERN_OF` (unlisted subtypes: patchy).
    """
    g, X, Y, cx, hw = chest.g, chest.X, chest.Y, chest.cx, chest.hw
    size = 1.2 - 0.4 * difficulty  # harder: smaller lesions
    pattern = _PATTERN_OF.get(subtype, "patchy")
    fields: list[np.ndarray] = []

    def patchy(cells: int, floor: float) -> np.ndarray:
        return np.clip(floor + (1 - floor) * (0.5 + 0.35 * _lowfreq(rng, g, cells)), 0, 1)

    if pattern == "lobar":
        # One lobe (sometimes two): dense, homogeneous, sharp along a fissure,
        # fading elsewhere, with dark branching air bronchograms inside.
        for lung in rng.choice(lungs, size=1 if rng.random() < 0.85 else 2, replace=False):
            u, v = lung.local(X, Y, cx, hw)
            lobes = ["upper", "lower"] + (["middle"] if lung.side < 0 else [])
            lobe = rng.choice(lobes)
            fissure = rng.uniform(0.38, 0.5)
            if lobe == "upper":
                region = _sig((fissure - v) / 0.012) * np.exp(-(((u - 0.55) / 0.5) ** 2 + ((v - 0.2) / 0.35) ** 2) ** 2 / size**4)
            elif lobe == "middle":  # abuts the right heart border (silhouette sign)
                region = _sig((v - fissure) / 0.012) * _sig((0.85 - v) / 0.05) * _sig((0.6 * size - u) / 0.08)
            else:
                region = _sig((v - fissure - 0.08) / 0.05) * np.exp(-(((u - 0.65) / 0.5) ** 2 + ((v - 0.85) / 0.4) ** 2) ** 2 / size**4)
            f = lung.mask * region * patchy(10, 0.6)
            bronchi = np.zeros((g, g), np.float32)
            hx, hy = lung.hilum
            for _ in range(rng.integers(2, 6)):
                a = rng.uniform(-1.2, 1.2)
                a = a if lung.side > 0 else math.pi - a
                ln = rng.uniform(0.1, 0.25)
                xs, ys = _smooth_curve(rng, (hx, hy), (hx + ln * math.cos(a), hy + ln * math.sin(a)), 0.15)
                cv2.polylines(bronchi, [_pts(xs, ys, g)], False, 1.0, max(1, int(0.005 * g)), cv2.LINE_8, 4)
            fields.append(f * (1 - 0.4 * _blur(bronchi, 0.003 * g)) * rng.uniform(0.8, 1.0))
    elif pattern == "interstitial":
        # Bilateral perihilar streaky/reticular opacity radiating from the hila.
        chosen = lungs if rng.random() < 0.8 else [lungs[rng.integers(2)]]
        for lung in chosen:
            hx, hy = lung.hilum
            hx += lung.side * 0.05
            s = rng.uniform(0.09, 0.14) * size
            env = np.exp(-((((X - hx) / (s * 1.1)) ** 2 + ((Y - hy) / (s * 1.5)) ** 2) ** 0.8))
            streaks = np.zeros((g, g), np.float32)
            # Short peribronchial streaks scattered along radial directions, over a reticular haze.
            for _ in range(rng.integers(50, 80)):
                a = rng.uniform(-1.5, 1.5)
                a = a if lung.side > 0 else math.pi - a
                r0 = rng.uniform(0.02, 0.2) * size
                r1 = r0 + rng.uniform(0.02, 0.05)
                a1 = a + rng.normal(0, 0.15)
                p0 = (lung.hilum[0] + r0 * math.cos(a), lung.hilum[1] + r0 * math.sin(a))
                p1 = (lung.hilum[0] + r1 * math.cos(a1), lung.hilum[1] + r1 * math.sin(a1))
                cv2.line(streaks, tuple(_pts(*p0, g)), tuple(_pts(*p1, g)), rng.uniform(0.5, 1.0), max(1, int(0.004 * g)), cv2.LINE_8, 4)
            reticular = np.clip(_lowfreq(rng, g, 40), 0, None)
            texture = 0.45 + 0.55 * np.clip(0.6 * _blur(streaks, 0.004 * g) + 0.5 * reticular, 0, 1)
            fields.append(lung.mask * env * texture)
    elif pattern == "peripheral":
        # COVID-19: bilateral, peripheral, lower-zone ground glass; patchy and faint.
        chosen = lungs if rng.random() < 0.85 else [lungs[rng.integers(2)]]
        for lung in chosen:
            u, v = lung.local(X, Y, cx, hw)
            binary = (lung.mask > 0.5).astype(np.uint8)
            depth = cv2.distanceTransform(binary, cv2.DIST_L2, 3) / g  # distance from the pleura
            uc, vc = rng.uniform(0.75, 0.95), rng.uniform(0.6, 0.85)
            env = np.exp(-(((u - uc) / (0.3 * size)) ** 2 + ((v - vc) / (0.22 * size)) ** 2))
            fields.append(lung.mask * env * np.exp(-depth / (0.07 * size)) * patchy(14, 0.3))
    elif pattern == "nodular":
        # Fungal: 1-3 nodules, about half cavitating (dark air centre), with a ground-glass halo.
        for _ in range(rng.integers(1, 4)):
            lung = lungs[rng.integers(2)]
            while True:  # a point well inside the lung, favouring the upper zones
                px = cx + lung.side * rng.uniform(0.08, hw * 0.9)
                py = rng.uniform(lung.top + 0.04, lung.top + (lung.base - lung.top) * rng.choice([0.6, 0.9]))
                if lung.mask[int(py * g), int(px * g)] > 0.99:
                    break
            r = rng.uniform(0.015, 0.04) * size
            d = np.sqrt((X - px) ** 2 + (Y - py) ** 2)
            f = _sig((r - d) / (0.12 * r)) + 0.3 * np.exp(-(((d - r) / (0.7 * r)) ** 2)) * (d > r)
            if rng.random() < 0.5:
                f -= 1.05 * _sig((0.5 * r - d) / (0.1 * r))
            fields.append(f.astype(np.float32) * np.clip(lung.mask * 1.2, 0, 1))
    else:
        # Other/unknown: one or two ill-defined multifocal patches, mid and lower zones.
        for _ in range(rng.integers(1, 3)):
            lung = lungs[rng.integers(2)]
            bx = cx + lung.side * rng.uniform(0.12, hw * 0.75)
            by = lung.top + (lung.base - lung.top) * rng.uniform(0.45, 0.85)
            f = np.zeros((g, g), np.float32)
            for _ in range(rng.integers(3, 6)):
                px, py, s = bx + rng.normal(0, 0.03), by + rng.normal(0, 0.03), rng.uniform(0.02, 0.045) * size
                f = np.maximum(f, np.exp(-(((X - px) ** 2 + (Y - py) ** 2) / (2 * s * s))))
            fields.append(lung.mask * f * patchy(20, 0.4))
    return fields


_CONTRAST = {"lobar": (0.24, 0.4), "interstitial": (0.13, 0.24), "peripheral": (0.08, 0.16), "nodular": (0.18, 0.32), "patchy": (0.13, 0.26)}


# ---------------------------------------------------------------- population

# What share of films shows what, from published chest X-ray datasets (chosen once from these
# figures, never tuned to a benchmark's outcome; BENCHMARKS.md "The synthetic population"):
# - RSNA Pneumonia Detection Challenge, stage 2 train (26,684 films): 6,012 "Lung Opacity"
#   (22.5 %), 11,821 "No Lung Opacity / Not Normal" (44.3 %), 8,851 "Normal" (33.2 %). Like
#   RSNA, "not normal" films carry no boxes: their findings mimic an opacity without being one.
#   (NIH ChestX-ray14 has 53.8 % "No Finding", VinBigData 70.7 %: RSNA's 33.2 % normal is the
#   harder end, and the only one of the three that separates pneumonia from other findings.)
# - Subtypes among pneumonia: Kermany et al. 2018 (train: 2,530 bacterial, 1,345 viral) and the
#   COVID-19 Radiography Database (3,616 COVID-19, 1,345 viral pneumonia) share the viral count,
#   which puts the three on one scale: 2,530 : 1,345 : 3,616. Fungal pneumonia has no public
#   chest X-ray set: rare, 2 % (the other three scaled to 98 %). "Other/Unknown" is a reader's
#   answer, not a disease: never drawn.
# - Difficulty per film from Beta(2, 2) (mean 0.5, most films in 0.2-0.8): faint and small
#   opacities and more clutter as it grows. Not a published figure: a spread instead of one value.
# - Label noise: 3 % of the training films' labels (what a reader would have given) have either
#   their pneumonia subtype swapped or their smallest box missed; validation and test labels
#   stand for an adjudicated reference and stay clean. Not a published figure either.
_SUBTYPE_COUNTS = {"Bacterial": 2_530, "Viral": 1_345, "COVID-19": 3_616}
_FUNGAL_SHARE = 0.02


@dataclass(frozen=True)
class Population:
    """Shares of a synthetic study's films (the defaults: PUBLISHED, see the comment above)."""

    pneumonia: float = 6_012 / 26_684
    other_abnormality: float = 11_821 / 26_684
    subtypes: tuple[tuple[str, float], ...] = (
        *((name, (1 - _FUNGAL_SHARE) * n / sum(_SUBTYPE_COUNTS.values())) for name, n in _SUBTYPE_COUNTS.items()),
        ("Fungal", _FUNGAL_SHARE),
    )
    difficulty_beta: tuple[float, float] = (2.0, 2.0)
    label_noise: float = 0.03

    def subtype_weights(self, schema: LabelSchema) -> tuple[list[str], np.ndarray]:
        """The label config's subtypes with their shares; a config whose subtypes are none of the
        listed ones (renamed vocabulary) gets them uniformly."""
        listed = dict(self.subtypes)
        names = [s for s in schema.subtypes if listed.get(s, 0) > 0]
        if not names:
            return list(schema.subtypes), np.full(len(schema.subtypes), 1 / len(schema.subtypes))
        weights = np.array([listed[s] for s in names])
        return names, weights / weights.sum()


PUBLISHED = Population()

# What a "not normal, not pneumonia" film shows (RSNA's third class): findings a reader must
# tell from pneumonia. Drawn without boxes, as RSNA labels them.
_MIMICS = ("cardiomegaly", "effusion", "nodule", "atelectasis")


def _mimic_layer(chest: _Chest, lungs: list[_Lung], rng: np.random.Generator, kind: str, difficulty: float) -> np.ndarray:
    """Additive brightness of one non-pneumonia finding (cardiomegaly is drawn by the heart)."""
    g, X, Y, cx, hw = chest.g, chest.X, chest.Y, chest.cx, chest.hw
    lung = lungs[rng.integers(2)]
    u, v = lung.local(X, Y, cx, hw)
    contrast = rng.uniform(0.15, 0.3) * (1.25 - 0.5 * difficulty)
    if kind == "effusion":
        # Dependent fluid: a homogeneous base with a meniscus rising toward the chest wall.
        level = rng.uniform(0.7, 0.85) - 0.12 * np.clip(u, 0, 1)
        return contrast * 1.3 * np.clip(lung.mask * 1.3, 0, 1) * _sig((v - level) / 0.02)
    if kind == "nodule":
        # One solid, well-defined nodule: no halo, no cavity (unlike fungal nodules).
        while True:
            px = cx + lung.side * rng.uniform(0.08, hw * 0.85)
            py = rng.uniform(lung.top + 0.08, lung.top + 0.8 * (lung.base - lung.top))
            if lung.mask[int(py * g), int(px * g)] > 0.99:
                break
        r = rng.uniform(0.012, 0.028)
        return contrast * _sig((r - np.sqrt((X - px) ** 2 + (Y - py) ** 2)) / (0.1 * r))
    if kind == "atelectasis":
        # Plate-like (discoid) atelectasis: a thin, nearly horizontal band in a lower zone.
        vc, tilt = rng.uniform(0.6, 0.85), rng.uniform(-0.1, 0.1)
        band = np.exp(-(((v - vc - tilt * u) / 0.015) ** 2)) * _sig((0.85 - np.abs(u - 0.5) * 2) / 0.1)
        return contrast * lung.mask * band
    return np.zeros((g, g), np.float32)


# --------------------------------------------------------------------- the case


def generate_case(
    seed: int,
    size: int = 1024,
    *,
    positive: bool | None = None,
    subtype: str | None = None,
    other_abnormality: bool = False,
    positive_fraction: float = 0.6,
    difficulty: float = 0.5,
    view: str | None = None,
    patient_number: int | None = None,
    render_opacities: bool = True,
    schema: LabelSchema | None = None,
    masks: bool = False,
) -> SyntheticCase:
    """One synthetic chest radiograph, fully determined by `seed` and the arguments.

    positive / subtype: force a pneumonia case of that label-config subtype (a
        subtype implies positive); by default positive with `positive_fraction`
        and a uniformly drawn subtype.
    other_abnormality: a film that is not normal and not pneumonia (RSNA's "No Lung
        Opacity / Not Normal"): cardiomegaly, an effusion, a nodule or plate atelectasis,
        without boxes, impression `schema.other_abnormality`. Not with `positive`.
    difficulty: 0 (conspicuous, large opacities, little clutter) .. 1 (faint,
        small opacities, many distractors, more noise).
    view: "PA" / "AP"; random (35% AP) by default.
    patient_number: the fake patient (PatientID PHI-PID-<number>, name, birth
        date, sex); defaults to `seed`. Two cases with the same number are the
        same person at different visits.
    render_opacities: False draws the same image without its opacities (and no
        boxes), to check that boxes mark real signal.
    masks: also set `lung_mask` and `distractor_mask` (uint8 0/1 at `size`): the lung fields
        and the dense distractors warped by the image's own affine, plus the burnt-in markers
        (drawn at output size, not warped). The image is bit-identical either way.
    """
    if view not in (None, "PA", "AP"):
        raise ValueError(f"view must be 'PA' or 'AP', not {view!r}")
    schema = schema or load_schema()
    if subtype is not None:
        schema.check_subtype(subtype)
        positive = True
    plan = np.random.default_rng([seed, _FINDINGS])
    if other_abnormality and (positive or subtype is not None):
        raise ValueError("a film is either pneumonia (positive / subtype) or other_abnormality, not both")
    positive = False if other_abnormality else bool(plan.random() < positive_fraction) if positive is None else positive
    if positive and subtype is None:
        subtype = str(plan.choice(schema.subtypes))
    difficulty = float(np.clip(difficulty, 0, 1))

    rng = np.random.default_rng([seed, _ANATOMY])
    view = view or ("AP" if rng.random() < 0.35 else "PA")
    patient_number = seed if patient_number is None else patient_number
    patient_rng = np.random.default_rng([patient_number, _PATIENT])
    sex = "F" if patient_rng.random() < 0.5 else "M"

    g = max(128, size // 2)
    chest = _Chest(rng, g, view)
    lungs = chest.lungs()
    lung = np.clip(lungs[0].mask + lungs[1].mask, 0, 1)
    mimic_rng = np.random.default_rng([seed, _MIMIC])
    mimics = (list(mimic_rng.choice(_MIMICS, size=1 if mimic_rng.random() < 0.7 else 2, replace=False))
              if other_abnormality else [])
    if "cardiomegaly" in mimics:
        chest.ctr = mimic_rng.uniform(0.55, 0.65)  # cardiothoracic ratio above 0.5
    heart = chest.heart()
    lung_seen = lung * (1 - 0.8 * heart)  # lung behind the heart is mostly hidden by it
    vessel_gain = rng.uniform(0.8, 1.1) * (1.25 if chest.ap else 1.0)  # supine/low volume: crowded vessels

    body = chest.body()
    thick = np.exp(-(((chest.X - chest.cx) / 0.3) ** 2)) * body  # the trunk is thickest at the midline
    abdomen = chest.below_diaphragm(lung) * body  # liver, spleen, bowel: the heart's bottom merges into it
    b = 0.03 + 0.42 * body + 0.12 * thick + 0.1 * abdomen
    b -= 0.3 * lung_seen * (0.8 + 0.2 * _blur(lung, 0.05 * g))  # aerated lung: darker centrally
    b += 0.12 * heart * (1 - abdomen)
    b -= 0.10 * chest.airways() * (1 - lung)
    b += 0.05 * chest.spine() * (1 - 0.5 * lung)
    b += rng.uniform(0.05, 0.08) * chest.ribs() * (0.5 + 0.5 * lung)
    b += 0.13 * chest.clavicles()
    b += 0.09 * vessel_gain * chest.vessels(lungs) * lung
    b += 0.02 * _lowfreq(rng, g, 30) * lung  # parenchymal texture
    if rng.random() < 0.6:  # gastric bubble under the left dome
        bubble = np.zeros((g, g), np.float32)
        cv2.ellipse(bubble, tuple(_pts(chest.cx + chest.hw * rng.uniform(0.5, 0.7), chest.dome_l + 0.06, g)), tuple(_pts(0.05, 0.03, g)), 0, 0, 360, 1.0, -1, cv2.LINE_8, 4)
        b -= rng.uniform(0.08, 0.15) * _blur(bubble, 0.006 * g)
    dense: list[np.ndarray] | None = [] if masks else None
    b += _distractors(chest, np.random.default_rng([seed, _DISTRACTORS]), sex, difficulty, dense)
    for kind in mimics:
        b += _mimic_layer(chest, lungs, mimic_rng, kind, difficulty)

    # Patient pose and size: one affine from the grid to the output pixels.
    angle = rng.normal(0, 2.5 if chest.ap else 1.2)
    scale = rng.uniform(0.92, 1.05) * size / g
    m = cv2.getRotationMatrix2D((g / 2, g / 2), angle, scale)
    m[:, 2] += (size - g) / 2 + rng.normal(0, 0.015, 2) * size

    boxes: list[Box] = []
    if positive and render_opacities:
        pattern = _PATTERN_OF.get(subtype, "patchy")
        lo, hi = _CONTRAST[pattern]
        find_rng = np.random.default_rng([seed, _FINDINGS, 1])
        for f in _lesions(chest, lungs, find_rng, subtype, difficulty):
            contrast = find_rng.uniform(lo, hi) * (1.25 - 0.7 * difficulty)
            b += contrast * f
            box = _box_of(f, m, size)
            if box is not None:
                boxes.append(Box(*box, finding=schema.opacity, subtype=subtype))

    img = cv2.warpAffine(b.astype(np.float32), m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    img = _expose(img, rng, chest.ap, difficulty, np.random.default_rng([seed, _NOISE]))
    text = _markers(img, rng, view)
    modality = "DX" if rng.random() < 0.5 else "CR"
    spacing = round(0.139 * 2048 / size * rng.uniform(0.95, 1.05), 4)
    case = SyntheticCase(
        seed=seed,
        image=img,
        boxes=boxes,
        impression=schema.pneumonia if positive else schema.other_abnormality if other_abnormality else schema.normal,
        subtype=subtype if positive else None,
        view=view,
        modality=modality,
        pixel_spacing=spacing,
        sex=sex,
        mimics=[str(m) for m in mimics],
    )
    case.phi = _fake_phi(seed, patient_number, patient_rng, sex, view)
    if masks:
        case.lung_mask = _warp_mask(lung, m, size)
        case.distractor_mask = _warp_mask((dense[0] > 0).astype(np.float32), m, size) | (text > 0).astype(np.uint8)
    return case


def _warp_mask(grid_mask: np.ndarray, m: np.ndarray, size: int, level: float = 0.5) -> np.ndarray:
    """A soft or 0/1 mask on the drawing grid -> uint8 0/1 at output size, through the image's affine
    (outside the grid: 0). Bilinear, then `level`: a one-cell line stays a line at twice the size."""
    warped = cv2.warpAffine(grid_mask.astype(np.float32), m, (size, size), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return (warped >= level).astype(np.uint8)


def _box_of(f: np.ndarray, m: np.ndarray, size: int) -> tuple[float, float, float, float] | None:
    """Tight output-pixel box around where field `f` is visibly present (> 20% of its peak)."""
    g = f.shape[0]
    smooth = _blur(f, 0.006 * g)  # ignore isolated streak pixels at the fringe
    peak = float(smooth.max())
    if peak <= 0:
        return None
    ys, xs = np.nonzero(smooth > 0.2 * peak)
    pts = np.stack([xs + 0.5, ys + 0.5, np.ones_like(xs, dtype=float)], 0)
    out = m @ pts
    pad = math.hypot(m[0, 0], m[0, 1]) / 2  # half a grid pixel, in output pixels
    x0, y0 = max(0.0, math.floor(out[0].min() - pad)), max(0.0, math.floor(out[1].min() - pad))
    x1, y1 = min(float(size), math.ceil(out[0].max() + pad)), min(float(size), math.ceil(out[1].max() + pad))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0, y0, x1 - x0, y1 - y0


def _expose(img: np.ndarray, rng: np.random.Generator, ap: bool, difficulty: float, noise_rng: np.random.Generator) -> np.ndarray:
    """Scatter, tone curve, exposure and quantum noise."""
    if ap:  # portable: more scatter, flatter contrast
        img = 0.08 + 0.88 * img
    # Vendor processing: unsharp masking lifts local (rib, vessel) contrast, then a
    # film-like curve with a shoulder compresses the dense end.
    img = img + rng.uniform(0.2, 0.45) * (img - _blur(img, 0.03 * img.shape[0]))
    gamma = rng.uniform(0.85, 1.15)
    img = np.tanh(1.1 * np.clip(img, 0, None) ** gamma) / math.tanh(1.1)
    # Fewer photons reach the detector behind dense tissue, so bright areas are noisier.
    sigma = (0.008 + 0.012 * difficulty) * (1.3 if ap else 1.0) * np.exp(1.2 * img)
    noise = cv2.GaussianBlur(noise_rng.standard_normal(img.shape, dtype=np.float32), (3, 3), 0.6)
    return np.clip(img * rng.uniform(0.9, 1.0) + sigma * noise * 1.6, 0, 1).astype(np.float32)


def _markers(img: np.ndarray, rng: np.random.Generator, view: str) -> np.ndarray:
    """Lead side marker and portable label, burnt in on the detector (so not rotated). No PHI.
    Returns the text layer (uint8, 0 where nothing is written)."""
    size = img.shape[0]
    text = np.zeros(img.shape, np.uint8)
    scale = size / 512
    if rng.random() < 0.7:
        cv2.putText(text, "L", (int(size * 0.88), int(size * 0.08)), cv2.FONT_HERSHEY_SIMPLEX, 1.2 * scale, 255, max(1, int(2.5 * scale)), cv2.LINE_AA)
    if view == "AP" and rng.random() < 0.6:
        cv2.putText(text, "AP PORTABLE", (int(size * 0.04), int(size * 0.06)), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, 255, max(1, int(1.5 * scale)), cv2.LINE_AA)
    np.maximum(img, text.astype(np.float32) / 255 * 0.95, out=img)
    return text


def _fake_phi(seed: int, patient_number: int, patient_rng: np.random.Generator, sex: str, view: str) -> dict[str, str]:
    """Identifying header values; every text value carries a FAKE_PHI_MARKERS token."""
    rng = np.random.default_rng([seed, _PHI])
    pick = lambda seq, r=rng: str(seq[r.integers(len(seq))])  # noqa: E731
    first = pick(_FIRST_F if sex == "F" else _FIRST_M, patient_rng)
    last = pick(_LAST, patient_rng) + "-PHI"
    birth = date(1935, 1, 1) + timedelta(days=int(patient_rng.integers(0, 65 * 365)))
    mrn = f"PHI-MRN-{patient_rng.integers(10**6, 10**7)}"
    address = f"{patient_rng.integers(1, 9999)} PHI {pick(_STREETS, patient_rng)} STREET, {pick(_CITIES, patient_rng)}"
    study = date(2016, 1, 1) + timedelta(days=int(rng.integers(0, 9 * 365)))
    age = (study - birth).days // 365
    when = f"{rng.integers(7, 22):02d}{rng.integers(60):02d}{rng.integers(60):02d}"
    doctor = lambda: f"{pick(_LAST)}-PHI^{pick(_FIRST_F + _FIRST_M)}"  # noqa: E731
    institution = pick(_INSTITUTIONS)
    uid = lambda kind: generate_uid(entropy_srcs=["cxrkit-synthetic", str(seed), kind])  # noqa: E731
    day = study.strftime("%Y%m%d")
    return {
        "PatientName": f"{last}^{first}^{pick('ABCDEFGHJKLMNPRSTW', patient_rng)}",
        "PatientID": f"PHI-PID-{patient_number:06d}",
        "OtherPatientIDs": mrn,
        "PatientBirthDate": birth.strftime("%Y%m%d"),
        "PatientAge": f"{age:03d}Y",
        "PatientSex": sex,
        "PatientAddress": address,
        "InstitutionName": institution,
        "InstitutionAddress": f"{rng.integers(1, 999)} PHI HOSPITAL ROAD, {pick(_CITIES)}",
        "ReferringPhysicianName": doctor(),
        "PerformingPhysicianName": doctor(),
        "OperatorsName": doctor(),
        "AccessionNumber": f"PHI-ACC-{rng.integers(10**6, 10**7)}",
        "StudyID": f"PHI-ST-{rng.integers(10**5, 10**6)}",
        "StationName": f"PHI-XR{rng.integers(1, 40):02d}",
        "DeviceSerialNumber": f"PHI-SN-{rng.integers(10**4, 10**5)}",
        "StudyDate": day,
        "SeriesDate": day,
        "AcquisitionDate": day,
        "ContentDate": day,
        "StudyTime": when,
        "SeriesTime": when,
        "AcquisitionTime": when,
        "ContentTime": when,
        "AdditionalPatientHistory": f"{first} {last}, {age} y/o, cough and fever. MRN {mrn}. Lives at {address}.",
        "ImageComments": f"{view} chest for {first} {last} ({institution})",
        "StudyInstanceUID": uid("study"),
        "SeriesInstanceUID": uid("series"),
        "SOPInstanceUID": uid("sop"),
    }


# ---------------------------------------------------------------------- studies


def _to_stored(img: np.ndarray, bits: int, photometric: str, rescale: tuple[float, float] | None, use_window: bool):
    """Quantise to `bits`; invert for MONOCHROME1; a VOI window over the body's range."""
    top = (1 << bits) - 1
    stored = np.round(img * top).astype(np.uint8 if bits == 8 else np.uint16)
    if photometric == "MONOCHROME1":
        stored = (top - stored).astype(stored.dtype)
    window = None
    if use_window:
        slope, intercept = rescale or (1.0, 0.0)
        lo, hi = np.percentile(stored, (1, 99)) * slope + intercept
        window = (round(float(lo + hi) / 2, 2), round(float(max(hi - lo, 1.0)), 2))
    return stored, window


def _write_one(job: dict) -> dict:
    case = generate_case(
        job["seed"], job["size"], positive=job["positive"], subtype=job["subtype"],
        other_abnormality=job.get("other", False), difficulty=job["difficulty"], patient_number=job["patient"],
    )
    rescale = tuple(job["rescale"]) if job["rescale"] else None
    stored, window = _to_stored(case.image, job["bits"], job["photometric"], rescale, job["window"])
    write_dicom(
        Path(job["dir"]) / job["file"], stored,
        bits_stored=job["bits"], photometric=job["photometric"], transfer_syntax=job["transfer_syntax"],
        modality=case.modality, view_position=case.view, pixel_spacing=case.pixel_spacing,
        window=window, rescale=rescale, header=case.header(),
    )
    boxes = [{"x": b.x, "y": b.y, "w": b.w, "h": b.h, "finding": b.finding, "subtype": b.subtype} for b in case.boxes]
    subtype, noise = case.subtype, job.get("noise")
    if noise == "subtype" and subtype is not None:  # the reader named another subtype
        subtype = job["noise_subtype"]
        boxes = [{**b, "subtype": subtype} for b in boxes]
    elif noise == "box" and len(boxes) > 1:  # the reader missed the smallest box
        boxes.remove(min(boxes, key=lambda b: b["w"] * b["h"]))
    else:
        noise = None
    return {
        "file": job["file"],
        "labeled": job["labeled"],
        "split": job["split"],
        "impression": case.impression,
        "subtype": subtype,
        "boxes": boxes,
        # Non-PHI facts: checking ingest per format, and what the image shows beyond its labels.
        "label_noise": noise,
        "difficulty": round(job["difficulty"], 4),
        "mimics": case.mimics,
        "view": case.view,
        "width": job["size"],
        "height": job["size"],
        "transfer_syntax": job["transfer_syntax"],
        "bits_stored": job["bits"],
        "photometric": job["photometric"],
    }


def generate_study(
    out_dir: str | os.PathLike,
    n: int,
    seed: int = 0,
    size: int = 1024,
    *,
    population: Population = PUBLISHED,
    positive_fraction: float | None = None,
    difficulty: float | None = None,
    transfer_syntaxes: Sequence[str] = tuple(TRANSFER_SYNTAXES),
    bits: Sequence[int] = (8, 12, 16),
    monochrome1_fraction: float = 0.2,
    window_fraction: float = 0.5,
    rescale_fraction: float = 0.3,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    labeled_fraction: float = 1.0,
    repeat_patient_fraction: float = 0.2,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write `n` synthetic DICOM files `img_00000.dcm`... and `truth.jsonl` into `out_dir`.

    Deterministic by `seed` (pixels, headers and truth; not by `workers`).
    population: the shares of pneumonia, other-abnormality and normal films, of subtypes,
        the per-film difficulty and the label noise (default PUBLISHED: published dataset
        statistics, see `Population`).
    positive_fraction: instead of the population, a two-class study: pneumonia with this
        share (uniform subtypes), the rest normal, no label noise (the draws of earlier
        versions, so fixtures built on them stay the same).
    difficulty: one difficulty for every film instead of the population's per-film draw.
    transfer_syntaxes: keys of dicom_write.TRANSFER_SYNTAXES, drawn per image;
        JPEG Baseline images are 8-bit, the others draw from `bits`.
    monochrome1_fraction: share stored inverted (MONOCHROME1).
    window_fraction / rescale_fraction: share with WindowCenter/Width and with
        a non-identity RescaleSlope/Intercept in the header.
    split_fractions: train/val/test, assigned per patient so no patient spans splits.
    labeled_fraction: share of train images whose truth is exposed (`labeled`);
        val and test are always labeled. Truth for all images stays in the file
        (the simulator's oracle).
    repeat_patient_fraction: share of images of a patient seen before (same
        PatientID and name, other visit), for pseudonym-consistency tests.
    workers: processes; 0 means one per core.
    progress: called with 1 after each image (advances a progress bar).
    Returns `out_dir`.
    """
    unknown = set(transfer_syntaxes) - set(TRANSFER_SYNTAXES)
    if unknown:
        raise ValueError(f"unknown transfer syntaxes {sorted(unknown)}; known: {', '.join(TRANSFER_SYNTAXES)}")
    if any(b not in (8, 12, 16) for b in bits):
        raise ValueError(f"bits must be drawn from 8, 12, 16, got {bits}")
    if not math.isclose(sum(split_fractions), 1.0):
        raise ValueError(f"split_fractions must sum to 1, got {split_fractions}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    schema = load_schema()
    rng = np.random.default_rng([seed, 1_000_003])
    # The population's draws come from their own stream: the shared one keeps the sequence of
    # the two-class studies (positive_fraction) that fixtures rely on.
    pop_rng = np.random.default_rng([seed, 1_000_033])
    subtype_names, subtype_p = population.subtype_weights(schema)
    classes = (schema.pneumonia, schema.other_abnormality, schema.normal)
    class_p = np.array([population.pneumonia, population.other_abnormality,
                        1.0 - population.pneumonia - population.other_abnormality])
    if class_p.min() < 0:
        raise ValueError(f"population shares of pneumonia and other abnormality sum to more than 1: {population}")
    first_patient = int(rng.integers(1, 900_000))
    patient_split: list[str] = []
    jobs = []
    for i in range(n):
        if patient_split and rng.random() < repeat_patient_fraction:
            patient = int(rng.integers(len(patient_split)))
        else:
            patient = len(patient_split)
            patient_split.append(str(rng.choice(["train", "val", "test"], p=split_fractions)))
        split = patient_split[patient]
        if positive_fraction is not None:
            positive, other = bool(rng.random() < positive_fraction), False
        else:
            kind = classes[int(pop_rng.choice(3, p=class_p))]
            positive, other = kind == schema.pneumonia, kind == schema.other_abnormality
        subtype = str(pop_rng.choice(subtype_names, p=subtype_p)) if positive and positive_fraction is None else None
        noise = noise_subtype = None
        if positive_fraction is None and split == "train" and pop_rng.random() < population.label_noise:
            noise = str(pop_rng.choice(["subtype", "box"]))
            others = [s for s in schema.subtypes if s != subtype]
            noise_subtype = str(pop_rng.choice(others)) if others else None
        film_difficulty = float(difficulty) if difficulty is not None else float(pop_rng.beta(*population.difficulty_beta))
        syntax = str(rng.choice(list(transfer_syntaxes)))
        depth = 8 if syntax == "jpeg-baseline" else int(rng.choice(list(bits)))
        jobs.append({
            "dir": str(out),
            "file": f"img_{i:05d}.dcm",
            "seed": int(np.random.SeedSequence([seed, i]).generate_state(1)[0]),
            "size": size,
            "difficulty": film_difficulty,
            "patient": first_patient + patient,
            "split": split,
            "labeled": split != "train" or bool(rng.random() < labeled_fraction),
            "positive": positive,
            "other": other,
            # (two-class studies draw the subtype here, where earlier versions did)
            "subtype": subtype if positive_fraction is None else str(rng.choice(schema.subtypes)) if positive else None,
            "noise": noise,
            "noise_subtype": noise_subtype,
            "transfer_syntax": syntax,
            "bits": depth,
            "photometric": "MONOCHROME1" if rng.random() < monochrome1_fraction else "MONOCHROME2",
            "window": bool(rng.random() < window_fraction),
            "rescale": [float(rng.choice([0.5, 2.0])), float(rng.choice([-100.0, 0.0, 100.0]))] if rng.random() < rescale_fraction else None,
        })

    def done(results):
        truths = []
        for truth in results:
            truths.append(truth)
            if progress:
                progress(1)
        return truths

    workers = workers or os.cpu_count() or 1
    if workers > 1:
        # One OpenCV thread per worker: the processes already use the cores. forkserver, not
        # fork: a forked child can hang on a lock held by one of the parent's OpenCV threads.
        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
            truths = done(pool.map(_write_one, jobs, chunksize=4))
    else:
        truths = done(map(_write_one, jobs))
    write_atomic(out / TRUTH_FILE, "".join(json.dumps(t, sort_keys=True) + "\n" for t in truths))
    return out
