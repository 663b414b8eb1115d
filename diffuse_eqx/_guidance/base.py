import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from .._check import check_nonnegative, check_traced, concrete, finite_nonnegative
from .._custom_types import NFE, Hyperparameter, Particle, Scalar, Time
from .._path import AbstractPath
from .._predictor import PREDICTIONS, AbstractPredictor, Prediction, PredictionType, Predictor


def _int32(n) -> NFE:
    return jnp.asarray(n, jnp.int32)


class AbstractConditional(eqx.Module):
    r"""What guidance combines: two predictions at the same point $(x, t)$, the *conditional* one
    $\hat c$ (the model guided towards) and the *unconditional* one $\hat u$ (the model guided away
    from: the null condition, a negative prompt, or autoguidance's weak model).

    A guidance module ([`CFG`][diffuse_eqx.CFG], ...) wraps one of these and is itself an
    [`AbstractPredictor`][diffuse_eqx.AbstractPredictor], so every integrator runs it unchanged.
    Concrete conditionals: [`ConditionalNetwork`][diffuse_eqx.ConditionalNetwork] (one network
    `network(x, t, c)` evaluated with a condition and a null condition, in one batched call),
    [`PredictorPair`][diffuse_eqx.PredictorPair] (two predictors) and
    [`IntervalConditional`][diffuse_eqx.IntervalConditional] (another conditional, guided only on an
    interval of times).
    """

    path: eqx.AbstractVar[AbstractPath]

    @abc.abstractmethod
    def init(self, x: Particle) -> PyTree:
        """The state before the first evaluation (`None` unless a member predictor is stateful)."""

    @abc.abstractmethod
    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, Prediction, PyTree, NFE]:
        """Both predictions at `(x, t)`.

        **Returns:** the conditional and unconditional [`Prediction`][diffuse_eqx.Prediction]s, the
        new state, and the network evaluations they cost (2 for two single evaluations)."""

    @abc.abstractmethod
    def evaluate_cond(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """The conditional prediction alone, its new state and cost."""


def _check_same_shape(cond: Prediction, uncond: Prediction) -> None:
    if cond.x0.shape != uncond.x0.shape or cond.noise.shape != uncond.noise.shape:
        raise ValueError(
            f"Guidance combines predictions of the same shape; cond and uncond gave x0 of shapes "
            f"{cond.x0.shape} and {uncond.x0.shape}. Both models must take and return one particle "
            "shaped like x."
        )


class AbstractGuidance(AbstractPredictor):
    r"""A guided predictor: it evaluates an [`AbstractConditional`][diffuse_eqx.AbstractConditional]
    (the wrapped `predictor`) and combines its conditional and unconditional predictions by a rule,
    the only thing a concrete guidance declares ([`combine`][diffuse_eqx.AbstractGuidance.combine],
    with [`init_memory`][diffuse_eqx.AbstractGuidance.init_memory] for rules that carry a value from
    one evaluation to the next, as APG's momentum). Its path is the conditional's, its state the
    conditional's state and the rule's memory, and an evaluation costs what the conditional's
    evaluation costs.
    """

    predictor: eqx.AbstractVar[AbstractConditional]
    scale: eqx.AbstractVar[Hyperparameter]

    def __check_init__(self):
        name = type(self).__name__
        if not isinstance(self.predictor, AbstractConditional):
            raise TypeError(
                f"{name} predictor must be an AbstractConditional (dx.ConditionalNetwork or "
                f"dx.PredictorPair); got {type(self.predictor).__name__}."
            )
        check_nonnegative(
            f"{name} scale", self.scale, " (scale = 1 is the conditional model, 0 the guiding one)"
        )

    @property
    def path(self) -> AbstractPath:
        """The conditional's path."""
        return self.predictor.path

    def init(self, x: Particle) -> PyTree:
        """The conditional's initial state and the rule's initial memory."""
        return self.predictor.init(x), self.init_memory(x)

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """Both predictions of the conditional, combined by the rule; cost: the conditional's."""
        inner, memory = state
        t = jnp.asarray(t)
        x = check_traced(x, f"{type(self).__name__} scale", self.scale, finite_nonnegative, ">= 0 and finite")
        cond, uncond, inner, nfe = self.predictor.evaluate(x, t, inner)
        _check_same_shape(cond, uncond)
        pred, memory = self.combine(cond, uncond, t, memory)
        return pred, (inner, memory), nfe

    @abc.abstractmethod
    def init_memory(self, x: Particle) -> PyTree:
        """What the rule carries from one evaluation to the next, before the first (`None` for
        none)."""

    @abc.abstractmethod
    def combine(
        self, cond: Prediction, uncond: Prediction, t: Scalar, memory: PyTree
    ) -> tuple[Prediction, PyTree]:
        """The guided prediction from the conditional `cond` and unconditional `uncond` ones at
        time `t`, and the rule's new memory."""


def cfg_combine(cond: Prediction, uncond: Prediction, scale: Hyperparameter) -> Prediction:
    r"""$\hat u + w(\hat c - \hat u)$ on both members of the pair, written
    $\hat c + (w - 1)(\hat c - \hat u)$ so that $w = 1$ returns $\hat c$ bit for bit."""
    x0 = cond.x0 + (scale - 1) * (cond.x0 - uncond.x0)
    noise = cond.noise + (scale - 1) * (cond.noise - uncond.noise)
    return Prediction(x0=x0.astype(cond.x0.dtype), noise=noise.astype(cond.noise.dtype))


class ConditionalNetwork(AbstractConditional):
    r"""One network taking a condition, `network(x, t, c)`, evaluated with the condition `cond`
    and with the null condition `null` (an empty prompt, a null class token).

    With `batch=True` (default) the two evaluations are one call of the network vmapped over the
    stacked conditions `[cond, null]` (one forward pass of batch 2, as in every CFG implementation);
    this needs `cond` and `null` to be pytrees of the same structure, shapes and dtypes. With
    `batch=False` the network is called twice. Either way the cost is 2 network evaluations.

    **Arguments:**

    - `network`: `network(x, t, c) -> array like x`, for a single particle.
    - `path`: the [`AbstractPath`][diffuse_eqx.AbstractPath] the network was trained on.
    - `cond`: the condition (any pytree of arrays).
    - `null`: the null condition.
    - `prediction`: what the network outputs, as for [`Predictor`][diffuse_eqx.Predictor]:
      `"velocity"`, `"score"`, `"noise"` or `"x0"`.
    - `batch`: evaluate both conditions in one vmapped call (default `True`).
    """

    network: Callable
    path: AbstractPath
    cond: PyTree
    null: PyTree
    prediction: PredictionType = eqx.field(default="velocity", static=True)
    batch: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(
                f"ConditionalNetwork prediction must be one of {PREDICTIONS}; got {self.prediction!r}."
            )
        if not self.batch:
            return
        cond_leaves, cond_def = jax.tree.flatten(self.cond)
        null_leaves, null_def = jax.tree.flatten(self.null)
        if cond_def != null_def:
            raise ValueError(
                "ConditionalNetwork cond and null must have the same pytree structure to be evaluated "
                f"in one batched call; got {cond_def} and {null_def}. Pass batch=False to call the "
                "network twice."
            )
        for i, (c, n) in enumerate(zip(cond_leaves, null_leaves)):
            c_shape, n_shape = np.shape(c), np.shape(n)
            c_dtype, n_dtype = jnp.result_type(c), jnp.result_type(n)
            if c_shape != n_shape or c_dtype != n_dtype:
                raise ValueError(
                    f"ConditionalNetwork cond and null must have the same shapes and dtypes to be "
                    f"evaluated in one batched call; leaf {i} is {c_dtype}{list(c_shape)} in cond and "
                    f"{n_dtype}{list(n_shape)} in null. Pad the null condition to the condition's shape, "
                    "or pass batch=False to call the network twice."
                )

    def _predictor(self, c) -> Predictor:
        return Predictor(lambda x, t: self.network(x, t, c), self.path, self.prediction)

    def init(self, x: Particle) -> None:
        return None

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, Prediction, PyTree, NFE]:
        """Both predictions (one batched call if `batch`); cost 2."""
        t = jnp.asarray(t)
        if not self.batch:
            return (
                self._predictor(self.cond).predict(x, t),
                self._predictor(self.null).predict(x, t),
                state,
                _int32(2),
            )
        both = jax.tree.map(lambda c, n: jnp.stack([jnp.asarray(c), jnp.asarray(n)]), self.cond, self.null)
        out = jax.vmap(lambda c: self.network(x, t, c))(both)
        if out.shape != (2, *x.shape):
            raise ValueError(
                f"ConditionalNetwork network(x, t, c) must return an array shaped like x {x.shape}; "
                f"got {out.shape[1:]}."
            )
        convert = self._predictor(self.cond).convert
        return convert(x, t, out[0].astype(x.dtype)), convert(x, t, out[1].astype(x.dtype)), state, _int32(2)

    def evaluate_cond(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """The conditional prediction alone; cost 1."""
        return self._predictor(self.cond).predict(x, jnp.asarray(t)), state, _int32(1)


class PredictorPair(AbstractConditional):
    r"""Two predictors on the same path: `cond` (guided towards) and `uncond` (guided away from).
    Their costs add up and their states (if any) are both threaded.

    **Arguments:**

    - `cond`: the conditional [`AbstractPredictor`][diffuse_eqx.AbstractPredictor].
    - `uncond`: the unconditional one (or any guiding model: a negative prompt, a weaker model).
    """

    cond: AbstractPredictor
    uncond: AbstractPredictor

    def __check_init__(self):
        a, b = self.cond.path, self.uncond.path
        same = type(a) is type(b) and (not concrete(a, b) or bool(eqx.tree_equal(a, b)))
        if not same:
            raise ValueError(
                "PredictorPair cond and uncond must be on the same path (their predictions are combined "
                f"at the same x_t); got {a} and {b}."
            )

    @property
    def path(self) -> AbstractPath:
        return self.cond.path

    def init(self, x: Particle) -> PyTree:
        return self.cond.init(x), self.uncond.init(x)

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, Prediction, PyTree, NFE]:
        """Both predictors in turn; cost the sum of theirs."""
        cond, s_cond, n_cond = self.cond.evaluate(x, t, state[0])
        uncond, s_uncond, n_uncond = self.uncond.evaluate(x, t, state[1])
        return cond, uncond, (s_cond, s_uncond), _int32(n_cond + n_uncond)

    def evaluate_cond(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """The conditional predictor alone."""
        cond, s_cond, n_cond = self.cond.evaluate(x, t, state[0])
        return cond, (s_cond, state[1]), _int32(n_cond)


class IntervalConditional(AbstractConditional):
    r"""A conditional guided only in an interval of times (Kynkäänniemi et al. 2024): inside
    $(t_{\rm lo}, t_{\rm hi}]$ the wrapped conditional's two predictions, elsewhere the conditional
    prediction twice, $(\hat c, \hat c)$, for which every guidance rule returns $\hat c$ (CFG's
    $\hat c + (w - 1)(\hat c - \hat c)$ exactly). Outside the interval only the conditional model
    is evaluated (a `lax.cond` on $t$, the same for every particle), so an evaluation costs the
    conditional alone there. [`GuidanceInterval`][diffuse_eqx.GuidanceInterval] is
    [`CFG`][diffuse_eqx.CFG] over this.

    **Arguments:**

    - `predictor`: the wrapped [`AbstractConditional`][diffuse_eqx.AbstractConditional].
    - `t_lo`, `t_hi`: the interval $(t_{\rm lo}, t_{\rm hi}]$, $0 \le t_{\rm lo} \le t_{\rm hi}$, in
      the path's time.
    """

    predictor: AbstractConditional
    t_lo: Hyperparameter
    t_hi: Hyperparameter

    def __check_init__(self):
        hint = " (guidance is applied for t_lo < t <= t_hi, 0 <= t_lo <= t_hi)"
        check_nonnegative("The guidance interval's t_lo", self.t_lo, hint)
        if concrete(self.t_lo, self.t_hi) and not float(self.t_lo) <= float(self.t_hi):
            raise ValueError(
                f"The guidance interval needs t_lo <= t_hi{hint}; got t_lo={self.t_lo}, t_hi={self.t_hi}."
            )

    @property
    def path(self) -> AbstractPath:
        return self.predictor.path

    def init(self, x: Particle) -> PyTree:
        return self.predictor.init(x)

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, Prediction, PyTree, NFE]:
        """Both predictions inside the interval; the conditional one twice (at its cost) outside."""
        t = jnp.asarray(t)

        def conditional_only(state):
            cond, state, nfe = self.predictor.evaluate_cond(x, t, state)
            return cond, cond, state, nfe

        inside = (t > self.t_lo) & (t <= self.t_hi)
        return lax.cond(inside, lambda s: self.predictor.evaluate(x, t, s), conditional_only, state)

    def evaluate_cond(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        return self.predictor.evaluate_cond(x, t, state)
