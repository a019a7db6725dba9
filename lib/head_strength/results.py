"""Per-head strength results: per-sample arrays, the per-head statistics made from them, the model's identity,
and their files (a JSON of the statistics and identity, the per-sample arrays in a safetensors file beside it
whose sha256 the JSON records; nothing is pickled).

Per sample (row) i, layer l, head h: ``mean`` = the mean over its real tokens of ||y_h||, ``last`` = ||y_h|| at
its last real token, ``z_mean`` = the mean over its real tokens of ||z_h||; ``n_tokens`` [n] its real tokens.

>>> import numpy as np, tempfile, pathlib
>>> r = HeadStrengthResults(layers=[0], heads=[0, 1], identity={"name": "m", "n_layers": 1, "n_heads": 2},
...                         per_sample={"mean": np.ones((3, 1, 2)), "last": np.ones((3, 1, 2)),
...                                     "z_mean": np.ones((3, 1, 2)), "n_tokens": np.array([2, 3, 4])})
>>> r.compute_R_h()
{(0, 0): 1.0, (0, 1): 1.0}
>>> p = r.save(pathlib.Path(tempfile.mkdtemp()) / "a.json"); load_results(p).per_sample["n_tokens"].tolist()
[2, 3, 4]
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lib.errors import UserError
from lib.files import write_json
from lib.models.weights import sha256_file

__all__ = ["HeadStats", "HeadStrengthResults", "ResultsFileError", "HeadStrengthError", "load_results",
           "samples_path", "FORMAT", "PER_HEAD_KEYS"]

FORMAT = "head_strength/1"
PER_HEAD_KEYS = ("mean", "last", "z_mean")  # [n_samples, layers, heads] float64; plus n_tokens [n_samples]


class HeadStrengthError(UserError, ValueError):
    """A bad request to the extractor or comparator (layer or head out of range, structures that differ)."""


class ResultsFileError(UserError, ValueError):
    """A results file that is missing, damaged, or does not match its per-sample arrays."""


@dataclass(frozen=True)
class HeadStats:
    """One head's statistics over samples: ``R_h`` (mean over samples of each sample's token mean of ||y_h||),
    ``R_h_std`` (its standard deviation over samples, ddof=1; 0 for one sample), ``R_h_last`` (mean over samples
    of ||y_h|| at the last real token), ``z_norm`` (mean over samples of each sample's token mean of ||z_h||)."""

    layer_idx: int
    head_idx: int
    R_h: float
    R_h_std: float
    R_h_last: float
    z_norm: float
    n_samples: int
    n_tokens: int


def samples_path(path: Path) -> Path:
    """The per-sample arrays' file beside a results JSON: ``x.json`` -> ``x.samples.safetensors``."""
    path = Path(path)
    return path.with_name(path.stem + ".samples.safetensors")



@dataclass
class HeadStrengthResults:
    """Per-sample arrays over ``layers`` x ``heads`` (the hooked ones, model indices) and the model's identity."""

    layers: list[int]
    heads: list[int]
    identity: dict
    per_sample: dict[str, np.ndarray] = field(repr=False)

    def __post_init__(self):
        self.layers, self.heads = [int(x) for x in self.layers], [int(x) for x in self.heads]
        shape = (len(self.per_sample["n_tokens"]), len(self.layers), len(self.heads))
        for key in PER_HEAD_KEYS:
            if self.per_sample[key].shape != shape:
                raise ResultsFileError(f"per-sample array {key!r} has shape {self.per_sample[key].shape}; "
                                       f"expected {shape} [samples, layers, heads]")

    @property
    def n_samples(self) -> int:
        return int(len(self.per_sample["n_tokens"]))

    def _need_samples(self) -> None:
        if self.n_samples == 0:
            raise HeadStrengthError(f"no samples in the results of {self.identity.get('name')!r}: "
                                    f"run extract_activations on at least one batch first")

    def table(self, key: str = "mean") -> np.ndarray:
        """[layers, heads]: the mean over samples of the per-sample ``key`` (``mean``, ``last`` or ``z_mean``)."""
        self._need_samples()
        return self.per_sample[key].mean(0)

    def compute_R_h(self) -> dict[tuple[int, int], float]:
        """{(layer, head): R_h}, R_h = mean over samples of each sample's mean over its real tokens of ||y_h||."""
        table = self.table("mean")
        return {(layer, head): float(table[i, j]) for i, layer in enumerate(self.layers)
                for j, head in enumerate(self.heads)}

    def get_all_stats(self) -> list[HeadStats]:
        """One ``HeadStats`` per hooked head, by layer then head."""
        self._need_samples()
        n = self.n_samples
        mean, last, z = (self.table(k) for k in PER_HEAD_KEYS)
        std = self.per_sample["mean"].std(0, ddof=1) if n > 1 else np.zeros_like(mean)
        tokens = int(self.per_sample["n_tokens"].sum())
        return [HeadStats(layer, head, float(mean[i, j]), float(std[i, j]), float(last[i, j]), float(z[i, j]), n,
                          tokens) for i, layer in enumerate(self.layers) for j, head in enumerate(self.heads)]

    def to_json(self) -> dict:
        """The JSON body (identity, hooked layers and heads, per-head statistics); arrays go to the side file."""
        return {"format": FORMAT, "identity": self.identity, "layers": self.layers, "heads": self.heads,
                "n_samples": self.n_samples, "n_tokens": int(self.per_sample["n_tokens"].sum()),
                "stats": [asdict(s) for s in self.get_all_stats()] if self.n_samples else []}

    def save(self, path) -> Path:
        """Write ``path`` (JSON) and its per-sample arrays beside it (``samples_path``), each written aside
        and renamed into place, arrays first. Returns ``path``."""
        from safetensors.numpy import save_file

        path = Path(path)
        side = samples_path(path)
        tmp = side.with_name(side.name + ".tmp")
        arrays = {k: np.ascontiguousarray(self.per_sample[k], dtype=np.float64) for k in PER_HEAD_KEYS}
        arrays["n_tokens"] = np.ascontiguousarray(self.per_sample["n_tokens"], dtype=np.int64)
        save_file(arrays, str(tmp))
        tmp.replace(side)
        body = self.to_json()
        body["samples_file"] = {"name": side.name, "sha256": sha256_file(side)}
        write_json(path, body)
        return path


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise ResultsFileError(f"{path}: no such results file")
    try:
        body = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultsFileError(f"{path} is not valid JSON ({err}); was its writing cut short? Rerun the extraction")
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        found = body.get("format") if isinstance(body, dict) else type(body).__name__
        raise ResultsFileError(f"{path} is not a head-strength results file (format {found!r}; expected {FORMAT!r})")
    return body


def load_results(path) -> HeadStrengthResults:
    """The results saved at ``path`` (by ``HeadStrengthResults.save`` / ``ActivationExtractor.save_results``);
    a missing, damaged or mismatched file (JSON or its per-sample arrays) is one ``ResultsFileError``."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    body = _load_json(path)
    try:
        side = path.with_name(body["samples_file"]["name"])
        want = body["samples_file"]["sha256"]
        layers, heads, identity = body["layers"], body["heads"], body["identity"]
    except (KeyError, TypeError) as err:
        raise ResultsFileError(f"{path} lacks the field {err}; it is damaged or from another tool")
    if not side.is_file():
        raise ResultsFileError(f"{path}: its per-sample arrays {side.name} are missing beside it")
    if sha256_file(side) != want:
        raise ResultsFileError(f"{side} does not match {path.name} (sha256 differs): one of them was replaced or "
                               f"damaged; rerun the extraction")
    try:
        arrays = load_file(str(side))
    except SafetensorError as err:
        raise ResultsFileError(f"{side} cannot be read ({err})")
    missing = [k for k in (*PER_HEAD_KEYS, "n_tokens") if k not in arrays]
    if missing:
        raise ResultsFileError(f"{side} lacks the arrays {missing}")
    results = HeadStrengthResults(layers=layers, heads=heads, identity=identity, per_sample=arrays)
    if results.n_samples != body.get("n_samples"):
        raise ResultsFileError(f"{path} says {body.get('n_samples')} samples, its arrays hold {results.n_samples}")
    r_h = results.compute_R_h() if results.n_samples else {}
    for stat in body.get("stats") or []:
        try:
            key, value = (stat["layer_idx"], stat["head_idx"]), float(stat["R_h"])
        except (KeyError, TypeError, ValueError):
            raise ResultsFileError(f"{path}: a per-head entry {stat!r} is damaged") from None
        if key not in r_h or not math.isclose(r_h[key], value, rel_tol=1e-12, abs_tol=1e-300):
            raise ResultsFileError(f"{path}: R_h of layer {key[0]} head {key[1]} does not match its per-sample "
                                   f"arrays; the file was edited or damaged")
    return results
