"""Diffrax solvers as integrators: fixed steps on the grid (ODE and reverse SDE) and adaptive steps
between grid points (ODE).

Diffrax calls the vector field itself, inside its own loops, so the evaluation count cannot be
threaded out of a solver step. It is computed instead from the solver's structure: a Runge--Kutta
step makes one evaluation per stage of its Butcher tableau, one fewer when the tableau is FSAL
(first same as last) and the previous step's last stage is carried in the integrator's memory;
an adaptive solve makes that many per attempted step (accepted or rejected, from `diffeqsolve`'s
statistics). This count is multiplied by the network evaluations of one predictor evaluation,
which must therefore not depend on $(x, t)$; it is read once from the predictor without running
its network.
"""

import functools
from typing import NamedTuple

import diffrax as dfx
import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np

from .._check import check_int, check_value
from .._custom_types import NFE, Grid, Key, Particle, Time
from .._predictor import AbstractPredictor
from .base import AbstractIntegrator, IntegratorState, evaluate, evaluate_and_data_step


# Solvers are asked their order through a term; only its type matters.
_ODE_TERM = dfx.ODETerm(lambda t, y, args: y)
_SDE_ONLY = (dfx.AbstractSRK, dfx.EulerHeun, dfx.ItoMilstein, dfx.StratonovichMilstein)
_ODE_SOLVERS = (
    "diffrax.Euler or an explicit Runge-Kutta solver (Heun, Midpoint, Ralston, Bosh3, Tsit5, Dopri5, Dopri8)"
)
_SDE_SOLVERS = (
    "diffrax.Euler, EulerHeun, a stochastic Runge-Kutta solver (ShARK, SRA1, SEA, SPaRK, GeneralShARK, "
    "SlowRK) or an explicit Runge-Kutta solver with a strong order (Heun, Midpoint, Ralston)"
)


class _Stages(NamedTuple):
    """Vector-field evaluations of a solver step made from scratch, and whether the last one is
    reused as the first of the next step (FSAL)."""

    n: int
    fsal: bool


def _check_solver(solver, owner: str):
    if not isinstance(solver, dfx.AbstractSolver):
        raise TypeError(f"{owner} solver must be a diffrax solver, e.g. diffrax.Tsit5(); got {solver!r}.")
    if isinstance(solver, dfx.AbstractWrappedSolver):
        raise ValueError(
            f"{owner} does not take wrapped solvers ({type(solver).__name__}): their evaluations "
            "cannot be counted. Pass the solver itself."
        )


def _ode_stages(solver) -> _Stages | None:
    """The stages of an ODE solver step, or `None` if they cannot be read from its structure."""
    if type(solver) is dfx.Euler:
        return _Stages(1, False)
    tableau = getattr(type(solver), "tableau", None)
    if isinstance(solver, dfx.AbstractERK) and isinstance(tableau, dfx.ButcherTableau):
        return _Stages(tableau.num_stages, tableau.fsal)
    return None


def _check_ode_solver(solver, owner: str) -> None:
    _check_solver(solver, owner)
    if isinstance(solver, _SDE_ONLY):
        raise TypeError(
            f"{owner}: {type(solver).__name__} is an SDE solver; use it with DiffraxSDE, or pass "
            f"{_ODE_SOLVERS}."
        )
    if _ode_stages(solver) is None:
        raise ValueError(
            f"{owner} takes {_ODE_SOLVERS}; got {type(solver).__name__}, whose evaluations per step "
            "cannot be counted from its structure (implicit and multistep solvers are not supported)."
        )


def _sde_stages(solver) -> _Stages | None:
    """The drift evaluations of an SDE solver step, or `None` if they cannot be read from its
    structure."""
    if type(solver) in (dfx.Euler, dfx.EulerHeun):
        return _Stages(1, False)  # one drift evaluation (EulerHeun evaluates the diffusion twice)
    if isinstance(solver, dfx.AbstractSRK):
        tableau = solver.tableau
        skipped = 0 if tableau.ignore_stage_f is None else int(np.sum(tableau.ignore_stage_f))
        return _Stages(len(tableau.b_sol) - skipped, False)
    return _ode_stages(solver) if isinstance(solver, dfx.AbstractERK) else None


def _check_sde_solver(solver, owner: str) -> None:
    _check_solver(solver, owner)
    if _sde_stages(solver) is None:
        raise ValueError(f"{owner} takes {_SDE_SOLVERS}; got {type(solver).__name__}.")
    if isinstance(solver, dfx.AbstractERK) and solver.strong_order(_ODE_TERM) is None:
        raise TypeError(
            f"{owner}: {type(solver).__name__} is an ODE solver with no strong order for SDEs; use "
            f"it with DiffraxIntegrator or DiffraxAdaptive, or pass {_SDE_SOLVERS}."
        )


def _evaluations(stages: _Stages, solver_state) -> NFE:
    """Evaluations of one step from `solver_state` (an FSAL solver's state is `(first_step, f0)`)."""
    if stages.fsal:
        return jnp.where(solver_state[0], stages.n, stages.n - 1).astype(jnp.int32)
    return jnp.asarray(stages.n, jnp.int32)


def _cost(predictor: AbstractPredictor, x: Particle, t: Time, owner: str) -> NFE:
    """Network evaluations of one predictor evaluation, read without running the network: the
    predictor is traced abstractly, and the count must come out as a constant."""
    if jax.tree.leaves(predictor.init(x)):
        raise ValueError(
            f"{owner} cannot run a predictor with state ({type(predictor).__name__}, e.g. APG): "
            "diffrax calls the vector field itself and cannot thread the state. Use one of "
            "diffuse_eqx's own integrators (Euler, Heun, DPMpp2M, ...)."
        )
    dynamic, static = eqx.partition(predictor, eqx.is_array)
    found = []

    def probe(dynamic, x, t):
        with jax.ensure_compile_time_eval():
            predictor = eqx.combine(dynamic, static)
            found.append(predictor.evaluate(x, t, predictor.init(x))[2])

    jax.eval_shape(probe, dynamic, x, jnp.asarray(t))
    if isinstance(found[0], jax.core.Tracer):
        raise ValueError(
            f"{owner} needs a predictor whose network evaluations per call do not depend on (x, t): "
            f"diffrax calls the vector field itself, so a varying count cannot be read per call. "
            f"{type(predictor).__name__} reports a count computed from its inputs; use one of "
            "diffuse_eqx's own integrators instead."
        )
    return jnp.asarray(found[0], jnp.int32)


def _velocity_term(predictor: AbstractPredictor) -> dfx.ODETerm:
    r"""The probability-flow ODE in $s = -t$ (diffrax integrates forward in time):
    $dx/ds = -v(x, -s)$."""

    def vector_field(s, y, args):
        t = -s
        return -predictor.predict(y, t).velocity(predictor.path, t).astype(y.dtype)

    return dfx.ODETerm(vector_field)


def _reverse_sde_terms(predictor: AbstractPredictor, brownian: dfx.AbstractBrownianPath) -> dfx.MultiTerm:
    r"""The reverse-time SDE in $s = -t$: $dx = -[f x - g^2 \nabla\log p]\,ds + g\, dW_s$."""
    path = predictor.path

    def drift(s, y, args):
        t = -s
        return -path.reverse_drift(y, t, predictor.predict(y, t).score(path, t)).astype(y.dtype)

    def diffusion(s, y, args):
        return lx.DiagonalLinearOperator(jnp.full(y.shape, path.diffusion(-s), y.dtype))

    return dfx.MultiTerm(dfx.ODETerm(drift), dfx.ControlTerm(diffusion, brownian))


class AbstractDiffraxODE(AbstractIntegrator):
    """A diffrax ODE solver on the probability-flow ODE: what
    [`DiffraxIntegrator`][diffuse_eqx.DiffraxIntegrator] and
    [`DiffraxAdaptive`][diffuse_eqx.DiffraxAdaptive] share (the solver's order, its evaluations per
    step, and the check that they can be counted)."""

    solver: eqx.AbstractVar[dfx.AbstractSolver]

    def __check_init__(self):
        _check_ode_solver(self.solver, type(self).__name__)

    @property
    def order(self) -> int:
        r"""The solver's ODE order, `solver.order(terms)`."""
        return self.solver.order(_ODE_TERM)

    @property
    def nfe_per_step(self) -> int:
        """Evaluations of a solver step: the stages of the solver, one fewer for FSAL solvers (per
        attempted step for adaptive solves)."""
        stages = _ode_stages(self.solver)
        return stages.n - stages.fsal


class DiffraxIntegrator(AbstractDiffraxODE):
    r"""Any explicit diffrax ODE solver, one solver step per grid interval, on the probability-flow
    ODE $dx/dt = v(x, t)$ (integrated in $s = -t$, so that diffrax steps forward):

    $$x_{t_{i+1}} = \Phi_{\rm solver}\big(x_{t_i};\ s_i = -t_i \to s_{i+1} = -t_{i+1}\big),
      \qquad \frac{dx}{ds} = -v(x, -s).$$

    The order is the solver's (`solver.order`). A step costs the tableau's stages, one fewer after
    the first step for FSAL solvers (the solver's state is carried from step to step). The step to
    $\sigma = 0$ is a data step ([`data_step`][diffuse_eqx.data_step]; one evaluation), which may lower
    the order measured on grids ending at $t = 0$. Predictors with state (APG) cannot be run, and each
    predictor evaluation must cost a fixed number of network evaluations. Details:
    [Concepts → Diffrax solvers][diffrax-integrators].

    ??? cite "Reference"
        ```bibtex
        @phdthesis{kidger2021on,
          title={On Neural Differential Equations}, author={Patrick Kidger},
          school={University of Oxford}, year={2021}}
        ```

    **Arguments:**

    - `solver`: a diffrax solver: `diffrax.Euler()` or an explicit Runge--Kutta solver
      (`Heun`, `Midpoint`, `Ralston`, `Bosh3`, `Tsit5`, `Dopri5`, `Dopri8`).
    """

    solver: dfx.AbstractSolver

    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        cost = _cost(predictor, x, ts[0], "DiffraxIntegrator")
        solver_state = self.solver.init(_velocity_term(predictor), -ts[0], -ts[1], x, None)
        return IntegratorState(x, key, memory=(solver_state, cost), x0=jnp.zeros_like(x))

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        x, path = state.position, predictor.path
        solver_state, cost = state.memory
        stages = _ode_stages(self.solver)
        final_step = functools.partial(evaluate_and_data_step, predictor, t=t, t_next=t_next)

        def solver_step(state):
            term = _velocity_term(predictor)
            x_next, _, _, new_solver_state, _ = self.solver.step(
                term, -t, -t_next, x, None, solver_state, False
            )
            nfe = state.nfe + _evaluations(stages, solver_state) * cost
            memory = (new_solver_state, cost)
            return state.replace(position=x_next.astype(x.dtype), memory=memory, nfe=nfe)

        return lax.cond(path.sigma(t_next) == 0, final_step, solver_step, state)


class DiffraxAdaptive(AbstractDiffraxODE):
    r"""The probability-flow ODE solved adaptively between consecutive grid points by
    `diffrax.diffeqsolve` with a PID step-size controller (in $s = -t$, $dx/ds = -v(x, -s)$).
    The grid fixes only where the solution is reported; a grid $[t_{\max}, t_{\min}]$ with
    $t_{\min} > 0$ is one fully adaptive solve. The network evaluations are counted exactly, from
    `diffeqsolve`'s statistics: with $S$ the tableau's stages and $c$ the predictor's network
    evaluations per call,

    $$\text{NFE}_{\rm interval} = c\,(S - \mathbb 1_{\rm FSAL})\,(\text{accepted} + \text{rejected}),$$

    plus $c$ once, in the first interval, for FSAL solvers. An interval ending at $\sigma = 0$ is a data
    step (one evaluation; a one-interval grid ending there is refused): end at $t_{\min} > 0$ or use a
    grid $[t_{\max}, t_{\min}, 0]$. Predictors with state cannot be run, and each predictor evaluation
    must cost a fixed number of network evaluations. Details:
    [Concepts → Diffrax solvers][diffrax-integrators].

    ??? cite "Reference"
        ```bibtex
        @phdthesis{kidger2021on,
          title={On Neural Differential Equations}, author={Patrick Kidger},
          school={University of Oxford}, year={2021}}
        ```

    **Arguments:**

    - `solver`: an explicit Runge--Kutta diffrax solver with an error estimate (default
      `diffrax.Tsit5()`; also `Heun`, `Midpoint`, `Ralston`, `Bosh3`, `Dopri5`, `Dopri8`).
    - `rtol`, `atol`: the controller's relative and absolute tolerances (default $10^{-5}$).
    - `max_steps`: the most solver steps per grid interval (default 4096); more is an error.
    """

    solver: dfx.AbstractSolver = dfx.Tsit5()
    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = eqx.field(default=4096, static=True)

    def __check_init__(self):
        _check_ode_solver(self.solver, "DiffraxAdaptive")  # equinox runs this before the base's check
        if not isinstance(self.solver, dfx.AbstractAdaptiveSolver):
            raise ValueError(
                f"DiffraxAdaptive needs a solver with an error estimate; {type(self.solver).__name__} has "
                "none. Use e.g. diffrax.Tsit5(), or DiffraxIntegrator for fixed steps."
            )
        for name in ("rtol", "atol"):
            check_value(f"DiffraxAdaptive {name}", getattr(self, name), lambda v: v > 0, "positive")
        check_int("DiffraxAdaptive max_steps", self.max_steps)

    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        cost = _cost(predictor, x, ts[0], "DiffraxAdaptive")
        if ts.shape[0] == 2:
            x = eqx.error_if(
                x,
                predictor.path.sigma(ts[-1]) == 0,
                "DiffraxAdaptive on a one-step grid ending at sigma = 0 would make a single data step. "
                "End the grid at t_min > 0, or add a point: [t_max, t_min, 0].",
            )
        # The velocity at the start of the next interval (FSAL solvers), and whether it is known.
        fsal_memory = (jnp.asarray(False), jnp.zeros_like(x))
        return IntegratorState(x, key, memory=(fsal_memory, cost), x0=jnp.zeros_like(x))

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        x, path = state.position, predictor.path
        (known, f_start), cost = state.memory
        stages = _ode_stages(self.solver)
        final_step = functools.partial(evaluate_and_data_step, predictor, t=t, t_next=t_next)

        def adaptive(state):
            term = _velocity_term(predictor)
            if stages.fsal:

                def first_stage(state):
                    pred, state = evaluate(predictor, state, x, t)
                    return state, -pred.velocity(path, t).astype(x.dtype)

                state, f0 = lax.cond(known, lambda state: (state, f_start), first_stage, state)
                solver_state = (jnp.asarray(False), f0)
            else:
                solver_state = None
            s, s_next = -jnp.asarray(t), -jnp.asarray(t_next)
            sol = dfx.diffeqsolve(
                term,
                self.solver,
                s,
                s_next,
                s_next - s,
                x,
                solver_state=solver_state,
                saveat=dfx.SaveAt(t1=True, solver_state=stages.fsal),
                stepsize_controller=dfx.PIDController(rtol=self.rtol, atol=self.atol),
                max_steps=self.max_steps,
            )
            attempts = jnp.asarray(sol.stats["num_steps"], jnp.int32)
            nfe = state.nfe + attempts * (stages.n - stages.fsal) * cost
            f_end = sol.solver_state[1].astype(x.dtype) if stages.fsal else f_start
            memory = ((jnp.asarray(True), f_end), cost)
            return state.replace(position=sol.ys[0].astype(x.dtype), memory=memory, nfe=nfe)

        return lax.cond(path.sigma(t_next) == 0, final_step, adaptive, state)


class DiffraxSDE(AbstractIntegrator):
    r"""A diffrax SDE solver on the reverse-time SDE, one solver step per grid interval:

    $$dx = \big[f(t)\, x - g(t)^2\, \nabla\log p_t(x)\big]\, dt + g(t)\, d\bar W_t,$$

    from $t_{\max}$ down to 0, with $f$ and $g^2$ the path's
    [`drift_coefficient`][diffuse_eqx.AbstractPath.drift_coefficient] and
    [`diffusion_squared`][diffuse_eqx.AbstractPath.diffusion_squared] (the noise is additive). The
    Brownian motion is one `diffrax.VirtualBrownianTree` per particle, from the particle's key:
    refining the grid with the same key refines the same Brownian path. Each regular step costs the
    solver's drift evaluations; the step to $\sigma = 0$ is a data step and a step from $\alpha = 0$
    is DDIM's ($\eta = 1$), one evaluation each. `order` reports 1, the weak order guaranteed for
    every solver accepted. Predictors with state cannot be run, and each predictor evaluation must
    cost a fixed number of network evaluations. Details: [Concepts → Diffrax solvers][diffrax-integrators].

    ??? cite "Reference"
        ```bibtex
        @phdthesis{kidger2021on,
          title={On Neural Differential Equations}, author={Patrick Kidger},
          school={University of Oxford}, year={2021}}
        @inproceedings{song2021scorebased,
          title={Score-Based Generative Modeling through Stochastic Differential Equations},
          author={Song, Yang and Sohl-Dickstein, Jascha and Kingma, Diederik P. and Kumar, Abhishek
                  and Ermon, Stefano and Poole, Ben},
          booktitle={ICLR}, year={2021}}
        @article{foster2023high,
          title={High order splitting methods for SDEs satisfying a commutativity condition},
          author={Foster, James and dos Reis, Goncalo and Strange, Calum},
          journal={arXiv:2210.17543}, year={2023}}
        ```

    **Arguments:**

    - `solver`: a diffrax SDE solver (default `diffrax.ShARK()`): `Euler` (Euler--Maruyama),
      `EulerHeun`, a stochastic Runge--Kutta solver (`ShARK`, `SRA1`, `SEA`, `SPaRK`,
      `GeneralShARK`, `SlowRK`) or an explicit Runge--Kutta solver with a strong order (`Heun`,
      `Midpoint`, `Ralston`).
    """

    solver: dfx.AbstractSolver = dfx.ShARK()

    def __check_init__(self):
        _check_sde_solver(self.solver, "DiffraxSDE")

    @property
    def order(self) -> int:
        """1, the weak order guaranteed for every solver accepted (see above)."""
        return 1

    @property
    def nfe_per_step(self) -> int:
        """Drift evaluations of a regular step."""
        stages = _sde_stages(self.solver)
        return stages.n - stages.fsal

    def _levy_area(self) -> type:
        needed = getattr(self.solver, "minimal_levy_area", dfx.AbstractBrownianIncrement)
        for area in (dfx.BrownianIncrement, dfx.SpaceTimeLevyArea, dfx.SpaceTimeTimeLevyArea):
            if issubclass(area, needed):
                return area
        raise ValueError(f"DiffraxSDE cannot simulate the Levy area {needed.__name__}.")

    def init(self, predictor: AbstractPredictor, x: Particle, key: Key, ts: Grid) -> IntegratorState:
        cost = _cost(predictor, x, ts[0], "DiffraxSDE")
        key, brownian_key = jr.split(key)
        s = -ts
        brownian = dfx.VirtualBrownianTree(
            s[0],
            s[-1],
            tol=jnp.min(s[1:] - s[:-1]) / 2,  # grid points fall in different cells of the tree
            shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
            key=brownian_key,
            levy_area=self._levy_area(),
        )
        solver_state = self.solver.init(_reverse_sde_terms(predictor, brownian), s[0], s[1], x, None)
        return IntegratorState(x, key, memory=(brownian, solver_state, cost), x0=jnp.zeros_like(x))

    def step(
        self, predictor: AbstractPredictor, state: IntegratorState, t: Time, t_next: Time
    ) -> IntegratorState:
        x, path = state.position, predictor.path
        brownian, solver_state, cost = state.memory
        stages = _sde_stages(self.solver)
        s, s_next = -jnp.asarray(t), -jnp.asarray(t_next)
        final_step = functools.partial(evaluate_and_data_step, predictor, t=t, t_next=t_next)

        def solver_step(state):
            terms = _reverse_sde_terms(predictor, brownian)
            x_next, _, _, new_solver_state, _ = self.solver.step(
                terms, s, s_next, x, None, solver_state, False
            )
            nfe = state.nfe + _evaluations(stages, solver_state) * cost
            memory = (brownian, new_solver_state, cost)
            return state.replace(position=x_next.astype(x.dtype), memory=memory, nfe=nfe)

        def posterior_step(state):
            pred, state = evaluate(predictor, state, x, t)
            z = brownian.evaluate(s, s_next) / jnp.sqrt(s_next - s)
            x_next = path.alpha(t_next) * pred.x0 + path.sigma(t_next) * z
            return state.replace(position=x_next.astype(x.dtype))

        branch = jnp.where(path.sigma(t_next) == 0, 1, jnp.where(path.alpha(t) == 0, 2, 0))
        return lax.switch(branch, (solver_step, final_step, posterior_step), state)
