import math
from typing import ClassVar

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from .._check import check_int
from .._custom_types import Grid, Key, Particle, Scalar, Time
from .._path import AbstractPath
from .._predictor import AbstractPredictor
from .base import AbstractIntegrator, History, IntegratorState, Shared, data_step, evaluate


class UniPC(AbstractIntegrator):
    r"""UniPC (Zhao et al. 2023) in data prediction, as diffusers' `UniPCMultistepScheduler`
    (`predict_x0=True`): the multistep predictor UniP-$p$, and the corrector UniC that reuses the
    evaluation at the new point (made by the next step anyway), raising the order by one at no extra
    NFE. With $h = \lambda_s - \lambda_t$, $\hat x_0^{(k)}$ the estimates at earlier times $t_k$,
    $r_k = (\lambda_{t_k} - \lambda_t)/h$ and $D_k = (\hat x_0^{(k)} - \hat x_0)/r_k$, UniP-$p$ is

    $$x_s = \frac{\sigma_s}{\sigma_t} x_t - \alpha_s (e^{-h} - 1)\,\hat x_0
      - \alpha_s B(h) \sum_{k=1}^{p-1} \rho_k D_k, \qquad
      \sum_{k} \rho_k r_k^{i-1} = \frac{i!\,(-h)\,\varphi_{i+1}(-h)}{B(h)}\ \ (i = 1..p-1),$$

    $\varphi_0(z) = e^z$, $\varphi_{k+1}(z) = (\varphi_k(z) - 1/k!)/z$, and $B(h) = -h$ (`"bh1"`) or
    $e^{-h} - 1$ (`"bh2"`); with one term ($p = 2$), $\rho_1 = 1/2$, as in the paper and diffusers.
    UniC-$p$ is the same formula from $x_t$ with one more node, $r = 1$, the estimate
    $\hat x_0(x_s, s)$ at the predicted point, and the $p \times p$ system (one node: $\rho = 1/2$);
    it is applied at the start of the next step, after that evaluation, as its difference to UniP-$p$
    (so a change a wrapper made to the particle in between is kept). Where the system is solved,
    $B(h)\rho$ does not depend on $B$: `variant` matters only where $\rho = 1/2$.

    One evaluation per step. As in diffusers: the order rises from 1 while the history fills; the
    last step has no corrector; on a grid ending at $\sigma = 0$ (diffusers' default
    `final_sigmas_type="zero"`) the last step is first order ($x_s = \hat x_0$: $h = \infty$ leaves
    no multistep term) and, with $p = 3$, the one before it second order (diffusers'
    `lower_order_final`, which diffusers also applies to grids ending at $\sigma > 0$; here those
    keep the full order). The corrector of a step from $\alpha_t = 0$ (`Flow` from $t = 1$,
    $h = \infty$) takes $B = -1$, the limit of $B_2$ ($B_1 = -h$ is infinite there); a later node
    at $\lambda = -\infty$ takes the first-order value $\lambda_j + (t_k - t_j)\dot\lambda(t_j)$ from
    its newer neighbour $t_j$, as in [`DPMpp2M`][diffuse_eqx.DPMpp2M] (which is
    `UniPC(2, "bh2", corrector=False)`).

    `order` is the global order on a fixed grid: $p + 1$ with the corrector, $p$ without, but at most
    3 and 2: the first step (UniP-1, with UniC-1) is locally third (second) order whatever $p$, so
    $p = 3$ only lowers the error constant (measured orders then lie above `order` until the steps
    are small).

    ??? cite "Reference"
        ```bibtex
        @inproceedings{zhao2023unipc,
          title={UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
                 Diffusion Models},
          author={Zhao, Wenliang and Bai, Lujia and Rao, Yongming and Zhou, Jie and Lu, Jiwen},
          booktitle={NeurIPS}, year={2023}}
        ```

    **Arguments:**

    - `order`: $p \in \{1, 2, 3\}$, the order of the predictor UniP-$p$ (default 2; diffusers'
      `solver_order`), kept as the field `solver_order` (the property `order` is the ODE order).
    - `variant`: `"bh1"` or `"bh2"` (default), the choice of $B(h)$ (diffusers' `solver_type`).
    - `corrector`: apply UniC (default `True`); `False` gives UniP alone.
    """

    solver_order: int = eqx.field(static=True)
    variant: str = eqx.field(static=True)
    corrector: bool = eqx.field(static=True)
    history_size: ClassVar[int] = 3

    def __init__(self, order: int = 2, variant: str = "bh2", corrector: bool = True):
        self.solver_order, self.variant, self.corrector = order, variant, corrector

    def __check_init__(self):
        check_solver_order("UniPC", self.solver_order, (1, 2, 3))
        if self.variant not in ("bh1", "bh2"):
            raise ValueError(f'UniPC variant must be "bh1" or "bh2"; got {self.variant!r}.')
        if not isinstance(self.corrector, bool):
            raise TypeError(f"UniPC corrector must be True or False; got {self.corrector!r}.")

    @property
    def order(self) -> int:
        return min(self.solver_order + 1, 3) if self.corrector else min(self.solver_order, 2)

    @property
    def nfe_per_step(self) -> int:
        return 1

    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        """An empty history and (shared) the steps left and whether the grid ends at sigma = 0."""
        grid = Shared((jnp.asarray(ts.shape[0] - 1, jnp.int32), predictor.path.sigma(ts[-1]) == 0))
        return IntegratorState(x, key, (History.empty(x, ts, self.history_size), grid))

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        (history, grid), path, p = state.memory, predictor.path, self.solver_order
        remaining, ends_at_zero = grid.value
        x, dtype = state.position, state.position.dtype
        pred, state = evaluate(predictor, state, x, t)

        def lowered(n_left):  # diffusers' lower_order_final, on a grid ending at sigma = 0
            return jnp.where(ends_at_zero, jnp.minimum(p, n_left), p)

        if self.corrector:  # UniC of the previous step t_prev -> t, as its difference to UniP there
            order = jnp.minimum(history.count, lowered(remaining + 1))  # 0 on the first step: none
            nodes = (path, self.variant, history.times[0], t, history.times[1:p], order)
            w = _weights(*nodes, corrector=True) - jnp.append(_weights(*nodes, corrector=False), 0.0)
            values = jnp.concatenate([history.values[1:p], pred.x0[None]])
            x = x - path.alpha(t) * jnp.tensordot(w, values - history.values[:1], axes=1)
        order = jnp.minimum(history.count + 1, lowered(remaining))
        w = _weights(path, self.variant, t, t_next, history.times[: p - 1], order, corrector=False)
        correction = jnp.tensordot(w, history.values[: p - 1] - pred.x0[None], axes=1)
        x_next = data_step(path, x, t, t_next, pred.x0) - path.alpha(t_next) * correction
        memory = (history.push(pred.x0, t), Shared((remaining - 1, ends_at_zero)))
        return state.replace(position=x_next.astype(dtype), memory=memory)


def check_solver_order(name: str, value, allowed: tuple[int, ...]) -> int:
    """`value` an integer in `allowed` (a `TypeError` / `ValueError` naming `name` otherwise)."""
    text = ", ".join(map(str, allowed[:-1])) + f" or {allowed[-1]}"
    check_int(f"{name} order", value, hint=f" ({text})")
    if value not in allowed:
        raise ValueError(f"{name} order must be {text}; got {value!r}.")
    return value


def finite_lambda(
    path: AbstractPath, times: Float[Array, " k"]
) -> tuple[Float[Array, " k"], Bool[Array, " k"]]:
    r"""$\lambda$ at `times` and where it is finite. Where it is not ($\alpha = 0$ or $\sigma = 0$),
    $\lambda$ of a stand-in time (distinct ones inside the path), so that neither the values nor their
    derivatives are infinite: a quantity computed from them but not selected (a lowered order) then
    has finite derivatives too, and cannot turn the derivatives of the selected ones into NaN
    (`fit_timer` differentiates through the grid)."""
    ok = jnp.isfinite(lax.stop_gradient(path.lambda_(times)))
    stand_in = path.t_max * (
        0.3 + 0.4 * jnp.arange(times.shape[0], dtype=times.dtype) / max(times.shape[0], 1)
    )
    return path.lambda_(jnp.where(ok, times, stand_in)), ok


def node_lambdas(path: AbstractPath, times: Float[Array, " k"]) -> tuple[Float[Array, " k"], Bool[Array, ""]]:
    r"""$\lambda$ at `times` (newest first), and whether the newest is finite. A node at
    $\lambda = -\infty$ ($\alpha = 0$: `Flow` at $t = 1$) takes the first-order value
    $\lambda_j + (t_k - t_j)\,\dot\lambda(t_j)$ from its newer neighbour $t_j$ (as in
    `multistep_data`), so that a difference to it stays a slope. Infinite values are replaced as in
    `finite_lambda` (they are never used)."""
    lam, ok = finite_lambda(path, times)
    newer = jnp.where(ok[:-1], times[:-1], path.t_max / 2)
    d_lam = path.d_alpha(newer) / path.alpha(newer) - path.d_sigma(newer) / path.sigma(newer)
    from_newer = lam[:-1] + (times[1:] - newer) * d_lam
    return jnp.concatenate([lam[:1], jnp.where(ok[1:], lam[1:], from_newer)]), ok[0]


def _g(i: int, z: Scalar) -> Scalar:
    r"""$G_i = i!\, z\, \varphi_{i+1}(z)$ for $z = -h \le 0$ ($-1$ at $z = -\infty$): its series
    $i! \sum_{j \ge 1} z^j/(i + j)!$ for $|z| < 1$ (no cancellation), $i!\,\varphi_i(z) - 1$ by the
    recursion otherwise."""
    small = jnp.abs(z) < 1
    zs, zl = jnp.where(small, z, 0.0), jnp.where(small, -1.0, z)
    series = 0.0
    for j in range(19, 0, -1):  # Horner
        series = (series + math.factorial(i) / math.factorial(i + j)) * zs
    phi = jnp.exp(zl)
    for k in range(i):
        phi = (phi - 1 / math.factorial(k)) / zl
    return jnp.where(small, series, math.factorial(i) * phi - 1)


def lagrange(nodes: list, k: int) -> list:
    r"""The coefficients $c_m$ of the Lagrange basis polynomial
    $\ell_k(x) = \prod_{j \ne k} \frac{x - x_j}{x_k - x_j} = \sum_m c_m x^m$ on the (scalar) `nodes`."""
    coeffs, denominator = [1.0], 1.0
    for j, node in enumerate(nodes):
        if j != k:
            coeffs = [up - node * c for up, c in zip([0.0, *coeffs], [*coeffs, 0.0])]  # times (x - node)
            denominator = denominator * (nodes[k] - node)
    return [c / denominator for c in coeffs]


def _b_rho(r: list, h: Scalar, g: list, variant: str, h_finite=True) -> list:
    r"""$B(h)\,\rho_k$ for the nodes $r_k$: $\rho = 1/2$ with one node, else the solution of
    $\sum_k \rho_k r_k^{i-1} = G_i / B(h)$, $i = 1..K$, given $G$ (`g`): a Vandermonde system,
    $B(h)\rho_k = \sum_m [x^m]\ell_k\; G_{m+1}$."""
    if len(r) == 1:
        b = -h if variant == "bh1" else jnp.expm1(-h)
        return [0.5 * jnp.where(h_finite, b, -1.0)]
    return [sum(c * g_m for c, g_m in zip(lagrange(r, k), g)) for k in range(len(r))]


def _weights(
    path: AbstractPath, variant: str, t: Time, s: Time, times: Float[Array, " k"], order, corrector: bool
) -> Float[Array, " n"]:
    r"""The weights $B(h)\rho_k / r_k$ of $\hat x_0^{(k)} - \hat x_0$ in UniP-`order` from $t$ to $s$
    (nodes: the earlier `times`, newest first) or, with `corrector`, in UniC-`order` (one more node,
    last: the new point at $s$, $r = 1$). `order` may be traced: each order up to the static maximum
    is formed (scalars only) and one is selected; none (zeros) for an order out of range."""
    lam, ok_t = node_lambdas(path, jnp.concatenate([jnp.asarray(t, times.dtype)[None], times]))
    lam_s, ok_s = finite_lambda(path, jnp.asarray(s, lam.dtype)[None])
    h = lam_s[0] - lam[0]
    # h = inf (from alpha = 0, or to sigma = 0): the single-node limit below; other orders unused
    h_finite = ok_t & ok_s[0]
    h = jnp.where(h_finite & (h != 0), h, 1.0)
    r = [(lam[k] - lam[0]) / h for k in range(1, lam.shape[0])] + ([1.0] if corrector else [])
    g = [_g(i, -h) for i in range(1, len(r) + 1)]
    weights = [jnp.zeros((), lam.dtype)] * len(r)  # UniP-1: the data step alone
    for k in range(1, len(r) + 1):  # k nodes: the k - 1 newest earlier ones, and the next or the new point
        used = [*range(k - 1), len(r) - 1 if corrector else k - 1]
        for i, b_rho in zip(used, _b_rho([r[i] for i in used], h, g[:k], variant, h_finite)):
            weights[i] = jnp.where(order == (k if corrector else k + 1), b_rho / r[i], weights[i])
    return jnp.stack(weights) if weights else jnp.zeros(0, lam.dtype)
