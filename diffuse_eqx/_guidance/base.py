import abc
from collections.abc import Callable
from typing import TypeAlias

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, PyTree, Real

from .._check import concrete
from .._custom_types import NFE, Particle, Time
from .._path import AbstractPath
from .._predictor import PREDICTIONS, AbstractPredictor, Prediction, PredictionType, Predictor


#: A guidance hyperparameter: a Python number or a scalar array (a pytree leaf, so it can be traced).
Hyperparameter: TypeAlias = Real[ArrayLike, ""]


def _int32(n) -> NFE:
    return jnp.asarray(n, jnp.int32)


def check_same_shape(cond: Prediction, uncond: Prediction, what: str = "cond and uncond") -> None:
    if cond.x0.shape != uncond.x0.shape or cond.noise.shape != uncond.noise.shape:
        raise ValueError(
            f"Guidance combines predictions of the same shape; {what} gave x0 of shapes "
            f"{cond.x0.shape} and {uncond.x0.shape}. Both models must take and return one particle "
            "shaped like x."
        )


def cfg_combine(cond: Prediction, uncond: Prediction, scale: Hyperparameter) -> Prediction:
    r"""$\hat u + w(\hat c - \hat u)$ on both members of the pair, written
    $\hat c + (w - 1)(\hat c - \hat u)$ so that $w = 1$ returns $\hat c$ bit for bit."""
    check_same_shape(cond, uncond)
    x0 = cond.x0 + (scale - 1) * (cond.x0 - uncond.x0)
    noise = cond.noise + (scale - 1) * (cond.noise - uncond.noise)
    return Prediction(x0=x0.astype(cond.x0.dtype), noise=noise.astype(cond.noise.dtype))


def check_nonnegative(name: str, argument: str, value) -> None:
    if concrete(value) and not float(value) >= 0:
        raise ValueError(
            f"{name} {argument} must be >= 0 ({argument} = 1 is the conditional model, 0 the guiding "
            f"(unconditional or weak) one); got {argument}={value}."
        )


class AbstractConditional(eqx.Module):
    r"""What guidance combines: two predictions at the same point $(x, t)$, the *conditional* one
    $\hat c$ (the model guided towards) and the *unconditional* one $\hat u$ (the model guided away
    from: the null condition, a negative prompt, or autoguidance's weak model).

    A guidance module ([`CFG`][diffuse_eqx.CFG], ...) wraps one of these and is itself an
    [`AbstractPredictor`][diffuse_eqx.AbstractPredictor], so every integrator runs it unchanged.
    Concrete conditionals: [`ConditionalNetwork`][diffuse_eqx.ConditionalNetwork] (one network
    `network(x, t, c)` evaluated with a condition and a null condition, in one batched call) and
    [`PredictorPair`][diffuse_eqx.PredictorPair] (two predictors).
    """

    path: eqx.AbstractVar[AbstractPath]

    def init(self, x: Particle) -> PyTree:
        """The state before the first evaluation (`None` unless a member predictor is stateful)."""
        return None

    @abc.abstractmethod
    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, Prediction, PyTree, NFE]:
        """Both predictions at `(x, t)`.

        **Returns:** the conditional and unconditional [`Prediction`][diffuse_eqx.Prediction]s, the
        new state, and the network evaluations they cost (2 for two single evaluations)."""

    @abc.abstractmethod
    def evaluate_cond(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """The conditional prediction alone (where guidance is switched off), its new state and
        cost."""


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
        if not callable(self.network):
            raise TypeError(
                f"ConditionalNetwork network must be callable as network(x, t, c); got {self.network!r}."
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
    - `uncond`: the unconditional one (or any guiding model, e.g. a negative prompt).
    """

    cond: AbstractPredictor
    uncond: AbstractPredictor

    def __check_init__(self):
        check_pair("PredictorPair", "cond", self.cond, "uncond", self.uncond)

    @property
    def path(self) -> AbstractPath:
        return self.cond.path

    def init(self, x: Particle) -> PyTree:
        return self.cond.init(x), self.uncond.init(x)

    def evaluate(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, Prediction, PyTree, NFE]:
        """Both predictors in turn; cost the sum of theirs."""
        cond, s_cond, n_cond = self.cond.evaluate(x, t, state[0])
        uncond, s_uncond, n_uncond = self.uncond.evaluate(x, t, state[1])
        check_same_shape(cond, uncond)
        return cond, uncond, (s_cond, s_uncond), _int32(n_cond + n_uncond)

    def evaluate_cond(self, x: Particle, t: Time, state: PyTree) -> tuple[Prediction, PyTree, NFE]:
        """The conditional predictor alone."""
        cond, s_cond, n_cond = self.cond.evaluate(x, t, state[0])
        return cond, (s_cond, state[1]), _int32(n_cond)


def check_pair(name: str, first: str, a, second: str, b) -> None:
    for arg, value in ((first, a), (second, b)):
        if not isinstance(value, AbstractPredictor):
            raise TypeError(
                f"{name} {arg} must be an AbstractPredictor (e.g. dx.Predictor(network, path)); "
                f"got {type(value).__name__}."
            )
    same = type(a.path) is type(b.path)
    if same and concrete(a.path, b.path):
        same = bool(eqx.tree_equal(a.path, b.path))
    if not same:
        raise ValueError(
            f"{name} {first} and {second} must be on the same path (their predictions are combined at "
            f"the same x_t); got {a.path} and {b.path}."
        )
