"""Calibrated scores: a monotone map from a model's served score to P(relevant), fitted on labelled pairs.

A cross-encoder's sigmoid and an embedding model's cosine are scores, not probabilities, and their scales differ by
model, so a fixed threshold means nothing across models. ``python evaluate.py DATASET --calibrate OUT.json`` fits
this map (isotonic regression or Platt scaling, scikit-learn) on a collection's judged pairs; with
``RERANK_CALIBRATION=OUT.json`` every face reports the probability instead. The ranking is decided on the model's own
scores before the map is applied, so the order never changes (an isotonic map is flat in places: equal probabilities,
the model's order). The file names the model it was fitted for; serving it with another model is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scoring.errors import RerankError

METHODS = ("isotonic", "platt")


class CalibrationError(RerankError):
    """A calibration file that cannot serve: unreadable, malformed, or fitted for another model."""


@dataclass(frozen=True)
class Calibration:
    """A fitted monotone map (``isotonic``: interpolation between ``x`` and ``y``; ``platt``: ``sigmoid(a * s + b)``)
    and the model it was fitted for (its name and fingerprint)."""

    model: str
    fingerprint: str
    method: str
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    a: float = 1.0
    b: float = 0.0
    report: dict = field(default_factory=dict)  # what it was fitted on and how well it did there
    source: str = ""  # the file it was read from (its name only, for /info)

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """P(relevant) of each served score."""
        s = np.asarray(scores, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(s, self.x, self.y)
        return 1.0 / (1.0 + np.exp(-(self.a * s + self.b)))

    def check(self, model: str, fingerprint: str) -> None:
        """Refuse to serve with a model other than the one this map was fitted for, naming both."""
        if fingerprint != self.fingerprint:
            same = " (the same name, other weights or files)" if model == self.model else ""
            raise CalibrationError(f"the calibration {self.source or 'file'} was fitted for {self.model}, not the "
                                   f"served model {model}{same}; fit one for this model with python evaluate.py "
                                   "DATASET --calibrate OUT.json")

    def as_dict(self) -> dict:
        """What /info and the page say of it."""
        return {"file": self.source, "model": self.model, "method": self.method,
                "fitted_on": self.report.get("dataset"), "ece": self.report.get("after", {}).get("ece")}

    def write(self, path: str | Path) -> None:
        """Save as JSON (the map, the model, the report)."""
        body = {"model": self.model, "fingerprint": self.fingerprint, "method": self.method, "report": self.report}
        body |= {"x": list(self.x), "y": list(self.y)} if self.method == "isotonic" else {"a": self.a, "b": self.b}
        Path(path).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: str | Path) -> Calibration:
        """A calibration file, or a :class:`CalibrationError` naming the file and the field at fault."""
        path = Path(path)
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"RERANK_CALIBRATION={path}: cannot read it as JSON ({exc})") from None
        if not isinstance(body, dict):
            raise CalibrationError(f"RERANK_CALIBRATION={path}: expected a JSON object")
        for name in ("model", "fingerprint", "method"):
            if not isinstance(body.get(name), str):
                raise CalibrationError(f"RERANK_CALIBRATION={path}: field {name!r} must be text")
        if body["method"] not in METHODS:
            raise CalibrationError(f"RERANK_CALIBRATION={path}: method must be one of {', '.join(METHODS)}, "
                                   f"got {body['method']!r}")
        common = {"model": body["model"], "fingerprint": body["fingerprint"], "method": body["method"],
                  "report": body.get("report") or {}, "source": path.name}
        if body["method"] == "platt":
            a, b = body.get("a"), body.get("b")
            if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in (a, b)):
                raise CalibrationError(f"RERANK_CALIBRATION={path}: Platt scaling needs finite numbers 'a' and 'b'")
            return cls(**common, a=float(a), b=float(b))
        x, y = body.get("x"), body.get("y")
        if not (isinstance(x, list) and isinstance(y, list) and len(x) == len(y) >= 1
                and all(isinstance(v, (int, float)) and np.isfinite(v) for v in x + y)):
            raise CalibrationError(f"RERANK_CALIBRATION={path}: isotonic regression needs lists 'x' and 'y' of finite "
                                   "numbers, of one length")
        if np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0) or min(y) < 0 or max(y) > 1:
            raise CalibrationError(f"RERANK_CALIBRATION={path}: 'x' and 'y' must rise, and 'y' stay within [0, 1]")
        return cls(**common, x=tuple(map(float, x)), y=tuple(map(float, y)))


def fit(scores: np.ndarray, labels: np.ndarray, *, method: str, model: str, fingerprint: str) -> Calibration:
    """The monotone map from served scores to P(relevant) that fits these labelled pairs best."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if method not in METHODS:
        raise CalibrationError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if len(set(y.tolist())) < 2:
        raise CalibrationError("the training pairs are all relevant or all not: nothing to fit a probability on")
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression  # lazy: scikit-learn loads only on this path

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, y)
        return Calibration(model, fingerprint, method, x=tuple(map(float, iso.X_thresholds_)),
                           y=tuple(map(float, iso.y_thresholds_)))
    from sklearn.linear_model import LogisticRegression  # lazy: scikit-learn loads only on this path

    platt = LogisticRegression(C=1e6).fit(s.reshape(-1, 1), y)
    return Calibration(model, fingerprint, method, a=float(platt.coef_[0, 0]), b=float(platt.intercept_[0]))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """|mean probability - share relevant| per equal-width bin, weighted by the bin's pairs."""
    p, y = np.asarray(probabilities, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.sum() * abs(p[members].mean() - y[members].mean())
    return float(total / max(len(p), 1))


def brier(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared difference between probability and label."""
    p, y = np.asarray(probabilities, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    return float(np.mean((p - y) ** 2)) if len(p) else float("nan")
