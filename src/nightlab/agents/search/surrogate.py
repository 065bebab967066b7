"""A small Gaussian-process model of "metric as a function of the knobs", in numpy.

The search agent asks it two questions about a candidate move: how good is it likely to be
(posterior mean and spread, turned into expected improvement), and how likely is it to crash
(a kernel-weighted share of nearby failures). A GP is the right tool at this scale: tens to a
few hundred noisy experiments, each minutes of compute, where every one of them should count.

Inputs are unit coordinates from :class:`~nightlab.agents.search.space.Space`; categorical dimensions
use a mismatch distance instead of a difference. The kernel is Matérn 5/2 with one length
scale per dimension (learned, so the model finds which knobs matter), and the per-run noise is
the harness's measured noise floor when it is known.

Example::

    >>> import numpy as np
    >>> x = np.array([[0.1], [0.5], [0.9]])
    >>> gp = GaussianProcess(np.array([False])).fit(x, np.array([1.0, 0.2, 1.1]))
    >>> mean, sd = gp.predict(np.array([[0.5]]))
    >>> bool(mean[0] < 0.6)
    True
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.optimize import minimize
from scipy.stats import norm

_LOG_L_PRIOR = (math.log(0.5), 1.0)  # length scales around half the range, loosely


def _distances(a: np.ndarray, b: np.ndarray, categorical: np.ndarray) -> np.ndarray:
    """Per-dimension distances, shape (len(a), len(b), d): |difference|, or 0/1 for categories."""
    diff = np.abs(a[:, None, :] - b[None, :, :])
    if categorical.any():
        diff[:, :, categorical] = (diff[:, :, categorical] > 0.5).astype(float)
    return diff


def _matern52(dist: np.ndarray, log_l: np.ndarray) -> np.ndarray:
    r = np.sqrt(np.sum((dist / np.exp(log_l)) ** 2, axis=-1))
    s = math.sqrt(5.0) * r
    return (1.0 + s + s * s / 3.0) * np.exp(-s)


class GaussianProcess:
    """GP regression with a constant mean, Matérn 5/2 ARD kernel and known or learned noise.

    ``noise_var`` (in the metric's units squared, per run) fixes the noise when given; each
    point may average several runs (``runs``), which divides its noise.
    """

    def __init__(self, categorical: np.ndarray, noise_var: float | None = None) -> None:
        self.categorical = np.asarray(categorical, dtype=bool)
        self.noise_var = noise_var
        self.log_l = np.full(len(self.categorical), _LOG_L_PRIOR[0])
        self.log_signal = 0.0
        self.log_noise = math.log(1e-2)

    def fit(self, x: np.ndarray, y: np.ndarray, runs: np.ndarray | None = None) -> GaussianProcess:
        self.x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        self.runs = np.ones(len(y)) if runs is None else np.maximum(np.asarray(runs, dtype=float), 1.0)
        self.y_mean = float(np.mean(y))
        spread = float(np.std(y))
        if self.noise_var is not None:
            spread = max(spread, math.sqrt(self.noise_var))
        self.y_scale = spread if spread > 0 else 1.0
        self.z = (y - self.y_mean) / self.y_scale
        self.dist = _distances(self.x, self.x, self.categorical)
        fixed_noise = None
        if self.noise_var is not None:
            fixed_noise = math.log(max(self.noise_var / self.y_scale**2, 1e-6))
        if len(y) >= 3:
            self._optimise(fixed_noise)
        elif fixed_noise is not None:
            self.log_noise = fixed_noise
        self._factor()
        return self

    def _unpack(self, theta: np.ndarray, fixed_noise: float | None) -> tuple[np.ndarray, float, float]:
        d = len(self.categorical)
        noise = fixed_noise if fixed_noise is not None else float(theta[d + 1])
        return theta[:d], float(theta[d]), noise

    def _nll(self, theta: np.ndarray, fixed_noise: float | None) -> tuple[float, np.ndarray]:
        """Negative log marginal likelihood (plus weak priors) and its gradient in ``theta``."""
        log_l, log_signal, log_noise = self._unpack(theta, fixed_noise)
        scaled_sq = (self.dist / np.exp(log_l)) ** 2  # (n, n, d)
        r = np.sqrt(scaled_sq.sum(axis=-1))
        s5 = math.sqrt(5.0) * r
        decay = np.exp(-s5)
        signal = math.exp(log_signal)
        k_signal = signal * (1.0 + s5 + s5 * s5 / 3.0) * decay
        noise_diag = math.exp(log_noise) / self.runs
        k = k_signal.copy()
        k[np.diag_indices_from(k)] += noise_diag + 1e-8
        try:
            c, low = cho_factor(k, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return 1e10, np.zeros_like(theta)
        alpha = cho_solve((c, low), self.z, check_finite=False)
        mu, sd = _LOG_L_PRIOR
        nll = 0.5 * self.z @ alpha + np.sum(np.log(np.diag(c)))
        nll += 0.5 * np.sum(((log_l - mu) / sd) ** 2) + 0.5 * log_signal**2
        # d nll / d theta = 0.5 tr((K^-1 - alpha alpha^T) dK/d theta)
        w = cho_solve((c, low), np.eye(len(k)), check_finite=False) - np.outer(alpha, alpha)
        dk_common = signal * (5.0 / 3.0) * (1.0 + s5) * decay  # times (delta_d / l_d)^2 per dimension
        grad_l = 0.5 * np.einsum("ij,ijd->d", w * dk_common, scaled_sq) + (log_l - mu) / sd**2
        grad_signal = 0.5 * np.sum(w * k_signal) + log_signal
        grads = [grad_l, [grad_signal]]
        if fixed_noise is None:
            grads.append([0.5 * np.sum(np.diag(w) * noise_diag)])
        return float(nll), np.concatenate(grads)

    def _optimise(self, fixed_noise: float | None) -> None:
        d = len(self.categorical)
        theta0 = np.concatenate([self.log_l, [self.log_signal]])
        bounds = [(math.log(0.03), math.log(20.0))] * d + [(math.log(0.05), math.log(20.0))]
        if fixed_noise is None:
            theta0 = np.append(theta0, self.log_noise)
            bounds.append((math.log(1e-6), math.log(1.0)))
        result = minimize(
            self._nll,
            theta0,
            args=(fixed_noise,),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 60},
        )
        theta = result.x if np.isfinite(result.fun) else theta0
        self.log_l, self.log_signal, self.log_noise = self._unpack(theta, fixed_noise)

    def _factor(self) -> None:
        k = math.exp(self.log_signal) * _matern52(self.dist, self.log_l)
        k[np.diag_indices_from(k)] += math.exp(self.log_noise) / self.runs + 1e-8
        self.chol = cho_factor(k, lower=True, check_finite=False)
        self.alpha = cho_solve(self.chol, self.z, check_finite=False)

    def predict(self, xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the noise-free metric at ``xc``."""
        ks = math.exp(self.log_signal) * _matern52(
            _distances(np.asarray(xc, float), self.x, self.categorical), self.log_l
        )
        mean = ks @ self.alpha
        v = cho_solve(self.chol, ks.T, check_finite=False)
        var = np.maximum(math.exp(self.log_signal) - np.sum(ks * v.T, axis=1), 1e-12)
        return self.y_mean + self.y_scale * mean, self.y_scale * np.sqrt(var)

    @property
    def length_scales(self) -> np.ndarray:
        return np.exp(self.log_l)


def expected_improvement(mean: np.ndarray, sd: np.ndarray, best: float, margin: float = 0.0) -> np.ndarray:
    """Expected amount by which a minimised metric falls below ``best - margin``."""
    gap = best - margin - mean
    z = gap / sd
    return gap * norm.cdf(z) + sd * norm.pdf(z)


def failure_probability(
    xc: np.ndarray,
    failed: np.ndarray,
    succeeded: np.ndarray,
    categorical: np.ndarray,
    reach: float = 0.15,
) -> np.ndarray:
    """A smoothed share of failures near each candidate (0 where no failure is near).

    Each past run votes with a kernel weight that falls off over ``reach`` of a knob's range;
    a different choice of a categorical knob counts as a small distance only, since crashes
    (out of memory, divergence) mostly follow the numeric knobs. Half a pseudo-success
    everywhere keeps a single crash from condemning a whole region.
    """
    if len(failed) == 0:
        return np.zeros(len(xc))
    scales = np.where(categorical, 4.0 * reach, reach)
    log_l = np.log(scales)
    w_fail = _matern52(_distances(xc, failed, categorical), log_l).sum(axis=1)
    w_ok = _matern52(_distances(xc, succeeded, categorical), log_l).sum(axis=1) if len(succeeded) else 0.0
    return w_fail / (w_fail + w_ok + 0.5)
