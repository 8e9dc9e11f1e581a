"""The Steered Mixture-of-Experts model ([AS-SMoE], section II, eqs. 1-5; [QSMoE],
section 2, eqs. 1-8).

    y(x) = sum_j m_j(x) w_j(x),   w_j(x) = pi_j K_j(x) / sum_i pi_i K_i(x),
    K_j(x) = exp(-1/2 (x - mu_j)^T P_j (x - mu_j)),   P_j = A_j A_j^T,
    m_j(x) = e_j + S_j (x - mu_j)     (constant experts when S is absent)

and its RBF variant (eq. 1 of [AS-SMoE]): y(x) = sum_j pi_j K_j(x) m_j(x).

Coordinates are pixels: pixel (row r, column c) is the point (x=c, y=r).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from .limits import check_shape

FORMAT_VERSION = 1
FIELDS = ("mu", "chol", "pi", "experts", "slopes")
COLOR_SPACES = ("gray", "rgb", "yuv")


def _is_torch(x) -> bool:
    return isinstance(x, torch.Tensor)


class SMoE:
    """K steered kernels with experts.

    Fields (numpy arrays or torch tensors, all of one kind):

    - ``mu`` (K, 2): centres (x, y) in pixels.
    - ``chol`` (K, 3): ``(a11, a21, a22)``, the lower-triangular factor A of each kernel's precision,
      **P = A A^T** with A = [[a11, 0], [a21, a22]]. This is the ordinary Cholesky factor of P (what
      ``numpy.linalg.cholesky(P)`` returns), as in [QSMoE]'s eq. 4 and the TF SMoE code, so
      :meth:`from_precision` is exact, and the quadratic form is q = (a11 dx + a21 dy)^2 + (a22 dy)^2 with
      two products per pixel. [AS-SMoE] writes P = B^T B with B lower-triangular (an upper-lower
      factorization); both parameterize every positive-definite P, and its export rule B_s = B / sqrt(s)
      holds for A unchanged since P scales by 1/s either way.
    - ``pi`` (K,): mixing weights (kernels with pi <= 0 carry no weight and are removed by training).
    - ``experts`` (K, C): constant experts m_0 (C = 1 gray, 3 colour).
    - ``slopes`` (K, C, 2) or None: linear experts, m_j(x) = e_j + S_j (x - mu_j). This is the coding
      paper's eqs. 2/6, m_j(x) = M_j x + m_0j, with the offset taken at the kernel centre
      (m_0j = e_j - S_j mu_j): the expert's offset is then its value at the centre, which is what
      initializers estimate and what keeps offset and slopes on comparable scales in pixel units.

    ``rbf=True`` makes it the RBF network (weighted sum of kernels, no normalization) over the same fields.
    ``image_shape`` (H, W) is the native image size (two positive integers, or None); ``color_space`` is "gray",
    "rgb" or "yuv".
    ``validate=False`` skips :meth:`check` (for callers that validate once elsewhere, such as a training step,
    whose model :func:`~smoe_core.render.render_many` checks: on a GPU each check waits for the device).
    """

    def __init__(self, mu, chol, pi, experts, slopes=None, *, rbf: bool = False, image_shape=None,
                 color_space: str | None = None, validate: bool = True):
        self.mu, self.chol, self.pi, self.experts, self.slopes = mu, chol, pi, experts, slopes
        self.rbf = bool(rbf)
        self.image_shape = _check_image_shape(image_shape)
        if color_space is None:
            color_space = "gray" if self.n_channels == 1 else "rgb"
        if color_space not in COLOR_SPACES:
            raise ValueError(f"color_space must be one of {COLOR_SPACES}, got {color_space!r}")
        self.color_space = color_space
        if validate:
            self.check()

    # ------------------------------------------------------------------ basic properties
    @property
    def n_kernels(self) -> int:
        return int(self.mu.shape[0])

    def __len__(self) -> int:
        return self.n_kernels

    @property
    def n_channels(self) -> int:
        return int(self.experts.shape[1])

    @property
    def is_torch(self) -> bool:
        return _is_torch(self.mu)

    @property
    def linear(self) -> bool:
        return self.slopes is not None

    def fields(self) -> dict:
        return {name: getattr(self, name) for name in FIELDS}

    def _meta(self) -> dict:
        return dict(rbf=self.rbf, image_shape=self.image_shape, color_space=self.color_space)

    def replace(self, **fields) -> "SMoE":
        """A new model with some fields replaced (no copy of the others)."""
        f = self.fields()
        f.update(fields)
        return SMoE(**f, **self._meta())

    def __repr__(self) -> str:
        kind = "RBF" if self.rbf else "SMoE"
        where = f"torch/{self.mu.device}" if self.is_torch else "numpy"
        return (f"{kind}(kernels={self.n_kernels}, channels={self.n_channels}, linear={self.linear}, "
                f"image_shape={self.image_shape}, color_space={self.color_space!r}, {where})")

    # ------------------------------------------------------------------ validation
    def check(self) -> None:
        """Raises ValueError, naming the field, on inconsistent shapes, mixed array kinds, non-float or
        non-finite parameters, a singular kernel (``chol``'s a11 or a22 zero: P = A A^T is then singular, the
        kernel unbounded) or a model in which no kernel has pi > 0 (nothing carries weight)."""
        self.check_structure()
        K = self.n_kernels
        names = [n for n, x in self.fields().items() if x is not None]
        if self.is_torch:  # one device synchronization for all the value checks
            with torch.no_grad():
                flags = [torch.isfinite(getattr(self, n)).all() for n in names]
                flags += [((self.chol[:, 0] != 0) & (self.chol[:, 2] != 0)).all(), (self.pi > 0).any()]
                ok = torch.stack(flags).tolist()
        else:
            ok = [bool(np.isfinite(getattr(self, n)).all()) for n in names]
            ok += [bool(((self.chol[:, 0] != 0) & (self.chol[:, 2] != 0)).all()), bool((self.pi > 0).any())]
        for n, good in zip(names, ok):
            if not good:
                raise ValueError(f"{n} contains NaN or infinite values")
        if not ok[-2]:
            chol = self.chol.detach().cpu().numpy() if self.is_torch else np.asarray(self.chol)
            j = int(np.flatnonzero((chol[:, 0] == 0) | (chol[:, 2] == 0))[0])
            raise ValueError(f"chol of kernel {j} has a11 = {chol[j, 0]:g}, a22 = {chol[j, 2]:g}: both must be "
                             "non-zero (P = A A^T is singular otherwise)")
        if not ok[-1]:
            raise ValueError(f"pi must be > 0 for at least one kernel (a kernel with pi <= 0 carries no weight); "
                             f"all {K} are <= 0")

    def check_structure(self) -> None:
        """The checks of :meth:`check` that do not read the values: array kinds, float dtypes, shapes, at least
        one kernel (ValueError naming the field)."""
        arrays = [x for x in self.fields().values() if x is not None]
        kinds = {_is_torch(x) for x in arrays}
        if len(kinds) != 1:
            raise ValueError("model fields must be all numpy arrays or all torch tensors")
        for name, x in self.fields().items():
            if x is None:
                continue
            if not hasattr(x, "shape") or not hasattr(x, "dtype"):
                raise ValueError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
            floating = x.is_floating_point() if _is_torch(x) else np.issubdtype(x.dtype, np.floating)
            if not floating:
                how = ".float()" if _is_torch(x) else ".astype(np.float32)"
                raise ValueError(f"{name} must hold floating-point values, got dtype {x.dtype} (convert it, e.g. "
                                 f"with {how})")
        K = self.mu.shape[0] if self.mu.ndim >= 1 else -1
        expect = {"mu": (K, 2), "chol": (K, 3), "pi": (K,)}
        for name, shape in expect.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(getattr(self, name).shape)}")
        if self.experts.ndim != 2 or self.experts.shape[0] != K:
            raise ValueError(f"experts must have shape ({K}, C), got {tuple(self.experts.shape)}")
        C = self.experts.shape[1]
        if not 1 <= C <= 4:
            raise ValueError(f"experts must have 1 to 4 channels, got {C}")
        if self.slopes is not None and tuple(self.slopes.shape) != (K, C, 2):
            raise ValueError(f"slopes must have shape ({K}, {C}, 2), got {tuple(self.slopes.shape)}")
        if K == 0:
            raise ValueError("the model has zero kernels")

    # ------------------------------------------------------------------ precision matrices
    def precision(self):
        """(K, 2, 2) precision matrices P = A A^T (numpy or torch, like the fields)."""
        a11, a21, a22 = self.chol[:, 0], self.chol[:, 1], self.chol[:, 2]
        if self.is_torch:
            row0 = torch.stack([a11 * a11, a11 * a21], -1)
            row1 = torch.stack([a11 * a21, a21 * a21 + a22 * a22], -1)
            return torch.stack([row0, row1], -2)
        return np.stack([np.stack([a11 * a11, a11 * a21], -1), np.stack([a11 * a21, a21 * a21 + a22 * a22], -1)], -2)

    def covariance(self):
        """(K, 2, 2) covariance matrices P^-1."""
        P = self.precision()
        return torch.linalg.inv(P) if self.is_torch else np.linalg.inv(P)

    @classmethod
    def from_precision(cls, mu, precision, pi, experts, slopes=None, **meta) -> "SMoE":
        """Builds a model from precision matrices (K, 2, 2) (numpy or torch), via their Cholesky factors."""
        if _is_torch(precision):
            L = torch.linalg.cholesky(precision)
            chol = torch.stack([L[:, 0, 0], L[:, 1, 0], L[:, 1, 1]], -1)
        else:
            precision = np.asarray(precision, dtype=np.float64)
            if precision.ndim != 3 or precision.shape[1:] != (2, 2):
                raise ValueError(f"precision must have shape (K, 2, 2), got {precision.shape}")
            try:
                L = np.linalg.cholesky(precision)
            except np.linalg.LinAlgError as exc:
                raise ValueError("every precision matrix must be symmetric positive definite") from exc
            chol = np.stack([L[:, 0, 0], L[:, 1, 0], L[:, 1, 1]], -1).astype(np.asarray(mu).dtype)
        return cls(mu, chol, pi, experts, slopes, **meta)

    # ------------------------------------------------------------------ conversions
    def numpy(self) -> "SMoE":
        """A float32 numpy copy (detached)."""
        conv = {k: (None if v is None
                    else (v.detach().cpu().numpy() if _is_torch(v) else np.asarray(v)).astype(np.float32))
                for k, v in self.fields().items()}
        return SMoE(**conv, **self._meta())

    def torch(self, *, requires_grad: bool = False, device=None, dtype=torch.float32) -> "SMoE":
        """A torch copy whose fields are new leaf tensors (optionally requiring grad)."""
        conv = {}
        for k, v in self.fields().items():
            if v is None:
                conv[k] = None
                continue
            t = v.detach().clone() if _is_torch(v) else torch.from_numpy(np.array(v))
            conv[k] = t.to(device=device, dtype=dtype).requires_grad_(requires_grad)
        return SMoE(**conv, **self._meta())

    def subset(self, index) -> "SMoE":
        """The model restricted to some kernels (boolean mask or indices)."""
        return self.replace(**{k: (None if v is None else v[index]) for k, v in self.fields().items()})

    def copy(self) -> "SMoE":
        if self.is_torch:
            return self.replace(**{k: (None if v is None else v.detach().clone()) for k, v in self.fields().items()})
        return self.replace(**{k: (None if v is None else np.array(v)) for k, v in self.fields().items()})

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        """Writes an .npz with the fields and metadata (format version, image shape, colour space, kind).

        The file is written to a temporary name and moved into place, so an interrupted save never leaves a
        half-written model behind.
        """
        path = Path(path)
        m = self.numpy()
        meta = dict(self._meta(), format_version=FORMAT_VERSION, package_version=_package_version())
        arrays = {k: v for k, v in m.fields().items() if v is not None}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays, metadata=np.array(json.dumps(meta)))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path) -> "SMoE":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such model file: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["metadata"]))
                fields = {k: (np.array(z[k]) if k in z.files else None) for k in FIELDS}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path} is not an SMoE model file ({exc})") from exc
        if not isinstance(meta, dict):
            raise ValueError(f"{path} is not an SMoE model file (its metadata is a JSON {type(meta).__name__}, "
                             "not an object)")
        version = meta.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValueError(f"{path} is not an SMoE model file (format_version {version!r} is not an integer)")
        if version > FORMAT_VERSION:
            raise ValueError(f"{path} was written by a newer smoe_core (format {version})")
        if any(fields[k] is None for k in ("mu", "chol", "pi", "experts")):
            raise ValueError(f"{path} is not an SMoE model file (missing fields)")
        return cls(**fields, rbf=meta.get("rbf", False), image_shape=meta.get("image_shape"),
                   color_space=meta.get("color_space"))


def check_models(models) -> None:
    """:meth:`SMoE.check` of every model of a list, with the value checks done once over all models' fields
    together (a render of thousands of small models, such as N-SMoE's blocks, spent most of its time in one check
    per model). The same models pass and fail as with one :meth:`SMoE.check` each: when the joint checks find a
    bad value, the first failing model's own check raises, its message prefixed by the model's index (when there is
    more than one). The models must be all numpy or all torch (on one device)."""
    models = list(models)

    def failing(i: int, m: SMoE):
        try:
            m.check()
        except ValueError as exc:
            raise ValueError(f"model {i}: {exc}" if len(models) > 1 else str(exc)) from None

    for i, m in enumerate(models):
        try:
            m.check_structure()
        except ValueError:
            for j in range(i + 1):  # the first model that fails its own check, as one check per model would find
                failing(j, models[j])
    if not models:
        return
    torch_models = models[0].is_torch
    names = [n for n, x in models[0].fields().items() if x is not None]
    if any(m.is_torch != torch_models or [n for n, x in m.fields().items() if x is not None] != names
           for m in models):
        for i, m in enumerate(models):  # mixed kinds: each model on its own
            failing(i, m)
        return
    counts = [m.n_kernels for m in models]
    if torch_models:
        with torch.no_grad():
            cat = {n: torch.cat([getattr(m, n).detach().reshape(m.n_kernels, -1) for m in models]) for n in names}
            owner = torch.repeat_interleave(torch.arange(len(models), device=cat["pi"].device),
                                            torch.tensor(counts, device=cat["pi"].device))
            weighted = torch.zeros(len(models), device=cat["pi"].device).index_add_(
                0, owner, (cat["pi"][:, 0] > 0).float())
            flags = [torch.isfinite(cat[n]).all() for n in names]
            flags += [((cat["chol"][:, 0] != 0) & (cat["chol"][:, 2] != 0)).all(), (weighted > 0).all()]
            ok = all(torch.stack(flags).tolist())
    else:
        cat = {n: np.concatenate([np.asarray(getattr(m, n)).reshape(m.n_kernels, -1) for m in models]) for n in names}
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        weighted = np.add.reduceat((cat["pi"][:, 0] > 0).astype(np.int64), starts)
        ok = (all(bool(np.isfinite(cat[n]).all()) for n in names)
              and bool(((cat["chol"][:, 0] != 0) & (cat["chol"][:, 2] != 0)).all()) and bool((weighted > 0).all()))
    if not ok:
        for i, m in enumerate(models):
            failing(i, m)


def _check_image_shape(image_shape):
    """``image_shape`` as (H, W), two positive integers, or None (ValueError naming it otherwise)."""
    return None if image_shape is None else check_shape(image_shape, "image_shape")


def _package_version() -> str:
    from .version import __version__

    return __version__
