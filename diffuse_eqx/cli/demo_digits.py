"""`diffuse-eqx demo` on the shipped digits model (the default target): the original FLUX tutorial's
three parts, plus guidance and an inverse problem, on learned images.

1. **Timers**: the schedules and their step sizes; samples per timer from the same noise and labels,
   with their error to an adaptive reference of the same noise and the classifier's accuracy.
2. **Integrators** at equal NFE (10 and 20): samples side by side and the RMS error to the reference,
   diffrax `Dopri8` (`rtol = atol = 1e-5`, float32; within 5e-5 of the float64 `rtol = 1e-8` solution)
   on the same network and the same noise.
3. **Batched generation**: `n_batch` unconditional samples in one `Denoiser.generate` call, its
   compile and run time, samples per second; their class histogram (reference classifier) against
   uniform, and the Fréchet distance to the test digits against the train-test floor.
4. **Guidance**: one row per CFG scale, guidance interval and APG; the classifier's accuracy per row.
5. **An inverse problem**: test digits with the lower half masked, and 2x downsampled, completed by
   DPS, PiGDM and MCGdiff, next to the truth; the classifier's agreement with the true label.

Each part returns its data; `results.json` holds them all and `report.md` is rendered from it alone.
"""

import concurrent.futures
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import diffuse_eqx as dx
from diffuse_eqx._check import check_int
from diffuse_eqx.models import digits
from diffuse_eqx.models.digits import Labelled, guided

from . import _markdown as md
from .demo import _environment, rms_error


#: The sampler of parts 3-4: DPM++ 2M on the uniform grid (FluxTimer, shift 1), 16 steps.
SAMPLE_STEPS = 16
#: The measurement noise of part 5.
SIGMA_Y = 0.05
DEFAULT_GUIDANCE = 2.0
#: The NFE budgets of part 2.
BUDGETS = (10, 20)
#: The tolerance of the demo's adaptive reference (float32 Dopri8; see `reference_solve`).
REFERENCE_RTOL = 1e-5
FIGURES = {
    "timers": "digits_timers.png",
    "integrators": "digits_integrators.png",
    "batched": "digits_batched.png",
    "guidance": "digits_guidance.png",
    "inverse": "digits_inverse.png",
}


@dataclasses.dataclass(frozen=True)
class DigitsDemoConfig:
    """What the digits demo runs.

    **Arguments:**

    - `out`: the folder that receives `report.md`, `results.json` and the figures.
    - `n_particles`: samples of parts 1-2, labels 0-9 in turn (each with its adaptive reference).
    - `n_batch`: unconditional samples of part 3.
    - `n_guided`: samples per guidance row of part 4, labels 0-9 in turn.
    - `n_inverse`: test digits of part 5 (one of each class in turn).
    - `n_posterior`: posterior samples per digit and method in part 5 (MCGdiff runs `n_smc`
      particles and shows the first of its resampled ones).
    - `n_smc`: MCGdiff's particles per digit.
    - `seed`: the seed of every random draw.
    - `n_timing_runs`: timed calls of part 3 after the first (their median is the run time); 0,
      the default, times the first call only (its run time: the call less JAX's compile time).
    """

    out: Path | str = Path("diffuse_eqx_demo")
    n_particles: int = 10
    n_batch: int = 1000
    n_guided: int = 100
    n_inverse: int = 5
    n_posterior: int = 4
    n_smc: int = 32
    seed: int = 0
    n_timing_runs: int = 0

    def __post_init__(self):
        for name in (
            "n_particles",
            "n_batch",
            "n_guided",
            "n_inverse",
            "n_posterior",
            "n_smc",
            "n_timing_runs",
        ):
            check_int(f"DigitsDemoConfig.{name}", getattr(self, name), 0 if name == "n_timing_runs" else 1)
        if self.n_particles < 10 or self.n_batch < 10 or self.n_guided < 10:
            raise ValueError("The digits demo needs at least 10 samples (one per class) per part.")
        if self.n_posterior > self.n_smc:
            raise ValueError(f"n_posterior={self.n_posterior} must be <= n_smc={self.n_smc}.")


QUICK = {"n_particles": 10, "n_batch": 200, "n_guided": 20, "n_inverse": 2, "n_posterior": 2, "n_smc": 8}
"""The `--quick` settings: a small, fast run (for tests and a first look)."""


# ---------------------------------------------------------------------------------------------------
# Sampling helpers: one compiled program per integrator and grid size, for every label and timer
# ---------------------------------------------------------------------------------------------------


def labels_in_turn(n: int) -> np.ndarray:
    return (np.arange(n) % digits.N_CLASSES).astype(np.int32)


def initial_noise(key, n: int) -> jax.Array:
    """`n` draws of the Flow prior at $t = 1$, $N(0, I)$, one key per particle."""
    return jax.vmap(lambda k: jr.normal(k, digits.IMAGE_SHAPE))(dx.particle_keys(key, n))


def _guided_predictor(model, label, kind: str, scale):
    if kind == "conditional":
        return dx.Predictor(Labelled(model, label), model.path)
    if kind == "cfg":
        return guided(model, label, scale)
    pair = dx.ConditionalNetwork(model, model.path, cond=label, null=jnp.int32(digits.NULL_LABEL))
    if kind == "interval":
        return dx.GuidanceInterval(pair, scale, 0.2, 0.8)
    if kind == "apg":
        return dx.APG(pair, scale, eta=0.0, norm_threshold=2.0)
    raise ValueError(kind)


@eqx.filter_jit
def sample(model, integrator, ts, x_init, keys, labels, kind: str = "conditional", scale=None):
    """Every particle integrated over the grid `ts` (traced: timers of one size share a
    compilation) with its own label. **Returns:** the samples and the NFE per particle."""

    def one(x, k, c):
        predictor = _guided_predictor(model, c, kind, scale)
        samples, nfe, _ = dx.integrate(integrator, predictor, ts, x, k)
        return samples, nfe

    samples, nfe = jax.vmap(one)(x_init, keys, labels)
    return samples, jnp.max(nfe)


def reference_solve(
    model, x_init, labels, rtol: float = REFERENCE_RTOL, x64: bool = False
) -> tuple[np.ndarray, dict]:
    """The probability-flow ODE of the conditional model from $t = 1$ to $0$ for every particle,
    diffrax `Dopri8` with `PIDController(rtol=rtol, atol=rtol)` (max norm over all particles, so each
    meets it), in float32, or in float64 with `x64` (the network cast to float64).

    The learned velocity turns sharp near $t = 0$ (the data has 17 grey levels), so a tight
    tolerance takes hundreds of steps: the demo's float32 `rtol = 1e-5` is within 5e-5 RMS of the
    float64 `rtol = 1e-8` solution (`benchmarks/digits_quality.py` measures both)."""
    dtype = jnp.float64 if x64 else jnp.float32
    with jax.enable_x64(x64):
        model = jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, model)
        labels = jnp.asarray(labels)

        def velocity(t, x, args):
            return jax.vmap(lambda xi, c: model(xi, t, c))(x, labels)

        def max_norm(v):
            return jnp.max(jnp.abs(v))

        @jax.jit
        def solve(x):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(velocity), diffrax.Dopri8(), t0=1.0, t1=0.0, dt0=-0.05, y0=x,
                stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol, norm=max_norm),
                max_steps=4096,
            )  # fmt: skip
            return sol.ys[-1], sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"]

        ends, accepted, rejected = solve(jnp.asarray(x_init, dtype))
        steps = int(accepted) + int(rejected)
        info = dict(accepted=int(accepted), rejected=int(rejected), nfe=12 * steps + 1, rtol=rtol)
        return np.asarray(ends, np.float64), {**info, "dtype": jnp.dtype(dtype).name}


class Judge:
    """The reference classifier and the Fréchet distances to the test digits, with their floors
    (the same distances from the training digits)."""

    def __init__(self):
        self.classifier = digits.reference_classifier()
        self.train, _ = digits.load_data("train")
        self.test, self.test_labels = digits.load_data("test")
        self.test_accuracy = self.accuracy(self.test, self.test_labels)
        self.test_logits = self._logits(self.test)
        self.floor_pixels = self.fd_pixels(self.train)
        self.floor_logits = self.fd_logits(self.train)

    def labels(self, images) -> np.ndarray:
        return self.classifier.predict(np.asarray(images, np.float64).reshape(len(images), -1))

    def accuracy(self, images, labels) -> float:
        return float(np.mean(self.labels(images) == np.asarray(labels)))

    def fd_pixels(self, images) -> float:
        flat = np.asarray(images, np.float64).reshape(len(images), -1)
        return dx.frechet_distance(flat, self.test.reshape(len(self.test), -1))

    def _logits(self, images) -> np.ndarray:
        return self.classifier.decision_function(np.asarray(images, np.float64).reshape(len(images), -1))

    def fd_logits(self, images) -> float:
        return dx.frechet_distance(self._logits(images), self.test_logits)


# ---------------------------------------------------------------------------------------------------
# The five parts
# ---------------------------------------------------------------------------------------------------


def timer_factories() -> dict[str, Callable[[int], dx.AbstractTimer]]:
    return {
        "Uniform": lambda n: dx.UniformTimer(n),
        "Flux static (shift 3)": lambda n: dx.FluxTimer(n, shift=3.0),
        "Flux static (shift 1/3)": lambda n: dx.FluxTimer(n, shift=1 / 3),
        "Karras (ρ=7, t_min=1e-3)": lambda n: dx.KarrasTimer(n, t_min=1e-3, t_max=1.0, rho=7.0),
        "Exponential (t_min=1e-3)": lambda n: dx.ExponentialTimer(n, t_min=1e-3, t_max=1.0),
    }


def part1_timers(model, x_init, keys, labels, reference, judge) -> dict:
    """Every timer at 10 Heun steps, the same noise and labels."""
    rows = []
    for label, make in timer_factories().items():
        ts = make(10).times()
        samples, nfe = sample(model, dx.Heun(), ts, x_init, keys, labels)
        samples = np.asarray(samples)
        rows.append(
            dict(
                label=label,
                times=np.asarray(ts, np.float64).tolist(),
                nfe=int(nfe),
                rms=rms_error(samples.reshape(len(samples), -1), reference.reshape(len(reference), -1)),
                accuracy=judge.accuracy(samples, labels),
                samples=samples,
            )
        )
    return {"integrator": "Heun", "n_steps": 10, "rows": rows}


def part2_integrators(model, x_init, keys, labels, reference, judge) -> dict:
    """Euler, Heun and DPM++ 2M at each NFE budget, Uniform timer."""
    rows = []
    for budget in BUDGETS:
        for name, integrator, n_steps in (
            ("Euler", dx.Euler(), budget),
            ("Heun", dx.Heun(), (budget + 1) // 2),
            ("DPM++ 2M", dx.DPMpp2M(), budget),
        ):
            samples, nfe = sample(model, integrator, dx.UniformTimer(n_steps).times(), x_init, keys, labels)
            samples = np.asarray(samples)
            rows.append(
                dict(
                    label=name,
                    budget=budget,
                    n_steps=n_steps,
                    nfe=int(nfe),
                    rms=rms_error(samples.reshape(len(samples), -1), reference.reshape(len(reference), -1)),
                    accuracy=judge.accuracy(samples, labels),
                    samples=samples,
                )
            )
    return {"timer": "Uniform", "rows": rows}


def _denoiser(predictor) -> dx.Denoiser:
    return dx.Denoiser(
        predictor, dx.DPMpp2M(), dx.FluxTimer(SAMPLE_STEPS, shift=1.0), x0_shape=digits.IMAGE_SHAPE
    )


#: JAX's own timings of the work before a program first runs: tracing, lowering, XLA compilation.
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


def _timed_first_call(fn) -> tuple[object, float, float]:
    """`fn()`'s result, the seconds until it is ready, and the seconds of those that JAX spent
    tracing and compiling (its `jax.monitoring` events; run nothing else meanwhile)."""
    spent = []

    def listener(event, seconds, **kwargs):
        if event in _COMPILE_EVENTS:
            spent.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        first = time.perf_counter() - start
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return out, first, sum(spent)


def part3_batched(model, key, config: DigitsDemoConfig, judge) -> dict:
    """`n_batch` unconditional samples in one `generate` call, timed: the first call, the compile
    time JAX measures within it, and the run (the rest of the first call, or the median of
    `n_timing_runs` further calls)."""
    denoiser = _denoiser(model.predictor())
    n = config.n_batch
    out, first, compile_s = _timed_first_call(lambda: denoiser.generate(key, n))
    runs = []
    for _ in range(config.n_timing_runs):
        start = time.perf_counter()
        jax.block_until_ready(denoiser.generate(key, n).samples)
        runs.append(time.perf_counter() - start)
    run = statistics.median(runs) if runs else max(first - compile_s, 1e-9)
    samples = np.asarray(out.samples)
    histogram = np.bincount(judge.labels(samples), minlength=digits.N_CLASSES) / n
    return dict(
        label=f"unconditional, DPM++ 2M, FluxTimer({SAMPLE_STEPS}, shift=1)",
        n=n,
        nfe=int(out.nfe),
        first_call=first,
        compile=compile_s,
        run=run,
        runs=runs,
        samples_per_s=n / run,
        histogram=histogram.tolist(),
        histogram_max_deviation=float(np.max(np.abs(histogram - 0.1))),
        fd_pixels=judge.fd_pixels(samples),
        fd_logits=judge.fd_logits(samples),
        samples=samples,
    )


GUIDANCE_ROWS = (
    ("CFG w=1 (conditional)", "cfg", 1.0),
    ("CFG w=2", "cfg", 2.0),
    ("CFG w=4", "cfg", 4.0),
    ("Guidance interval w=4, t in (0.2, 0.8]", "interval", 4.0),
    ("APG w=4 (η=0, r=2)", "apg", 4.0),
)


def part4_guidance(model, key, config: DigitsDemoConfig, judge) -> dict:
    """Every guidance row on the same noise and labels, DPM++ 2M on FluxTimer(16, shift 1)."""
    n = config.n_guided
    labels = labels_in_turn(n)
    x_init, keys = initial_noise(key, n), dx.particle_keys(jr.fold_in(key, 1), n)
    ts = dx.FluxTimer(SAMPLE_STEPS, shift=1.0).times()
    rows = []
    for label, kind, scale in GUIDANCE_ROWS:
        samples, nfe = sample(model, dx.DPMpp2M(), ts, x_init, keys, labels, kind, jnp.asarray(scale))
        samples = np.asarray(samples)
        rows.append(
            dict(
                label=label,
                nfe=int(nfe),
                accuracy=judge.accuracy(samples, labels),
                fd_pixels=judge.fd_pixels(samples),
                samples=samples,
            )
        )
    return {"n": n, "rows": rows, "labels": labels.tolist()}


def inverse_operators() -> dict[str, dx.AbstractLinearOperator]:
    mask = np.zeros(digits.IMAGE_SHAPE, bool)
    mask[:4] = True  # the upper half is seen
    return {
        "lower half masked": dx.Inpainting(mask, sigma_y=SIGMA_Y),
        "2x downsampled": dx.Downsampling(factor=2, sigma_y=SIGMA_Y),
    }


class _Flat(eqx.Module):
    """A network on images, as one on flat vectors of 64 (for MCGdiff's matrix operator)."""

    network: eqx.Module

    def __call__(self, x, t):
        return self.network(x.reshape(digits.IMAGE_SHAPE), t).reshape(-1)


@eqx.filter_jit
def _guided_posterior(model, method: str, operator, ys, x_init, keys, ts):
    prior = dx.Predictor(Labelled(model, jnp.int32(digits.NULL_LABEL)), model.path)

    def one(y, x, k):
        guide = dx.DPS(prior, operator, y) if method == "DPS" else dx.PiGDM(prior, operator, y)
        return dx.integrate(dx.DDIM(eta=1.0), guide, ts, x, k)[0]

    return jax.vmap(jax.vmap(one, (None, 0, 0)), (0, 0, 0))(ys, x_init, keys)


def part5_inverse(model, key, config: DigitsDemoConfig, judge) -> dict:
    """Test digits (one of each class in turn), measured by each operator, completed by DPS, PiGDM
    (DDIM η=1, 30 steps) and MCGdiff (30 steps, `n_smc` particles)."""
    test, test_labels = judge.test, judge.test_labels
    index = np.array([np.flatnonzero(test_labels == c % 10)[c // 10] for c in range(config.n_inverse)])
    truth, labels = test[index], test_labels[index]
    m, k = config.n_inverse, config.n_posterior
    ts = dx.FluxTimer(30, shift=1.0).times()
    x_init = initial_noise(key, m * k).reshape(m, k, *digits.IMAGE_SHAPE)
    keys = dx.particle_keys(jr.fold_in(key, 1), m * k).reshape(m, k)
    blocks = []
    for op_name, operator in inverse_operators().items():
        ys = jax.vmap(operator.measure)(dx.particle_keys(jr.fold_in(key, 2), m), jnp.asarray(truth))
        results = {}
        for method in ("DPS", "PiGDM"):
            results[method] = np.asarray(_guided_posterior(model, method, operator, ys, x_init, keys, ts))
        A = jax.jacfwd(lambda v: operator.apply(v.reshape(digits.IMAGE_SHAPE)).reshape(-1))(jnp.zeros(64))
        prior = dx.Predictor(_Flat(Labelled(model, jnp.int32(digits.NULL_LABEL))), model.path)
        smc = []
        for i in range(m):
            sampler = dx.MCGdiff(prior, dx.Matrix(A, SIGMA_Y), ys[i].reshape(-1), dx.FluxTimer(30, shift=1.0))
            smc.append(np.asarray(sampler.generate(jr.fold_in(key, 100 + i), config.n_smc).samples)[:k])
        results["MCGdiff"] = np.stack(smc).reshape(m, k, *digits.IMAGE_SHAPE)
        rows = []
        for method, samples in results.items():
            flat = samples.reshape(m * k, *digits.IMAGE_SHAPE)
            rows.append(
                dict(
                    method=method,
                    agreement=judge.accuracy(flat, np.repeat(labels, k)),
                    rms_to_truth=rms_error(
                        flat.reshape(m * k, -1), np.repeat(truth, k, 0).reshape(m * k, -1)
                    ),
                    residual=float(
                        np.max(np.abs(jax.vmap(operator.apply)(jnp.asarray(flat)) - jnp.repeat(ys, k, 0)))
                    ),
                    samples=samples,
                )
            )
        blocks.append(dict(operator=op_name, rows=rows, observed=_observed(operator, truth, ys)))
    return {"truth": truth, "labels": labels.tolist(), "blocks": blocks}


def _observed(operator, truth, ys) -> np.ndarray:
    """What each measurement shows, as an image: the masked digit (unseen pixels NaN, drawn blank),
    or the low-resolution digit drawn at full size."""
    if isinstance(operator, dx.Inpainting):
        return np.where(np.asarray(operator.mask)[None], truth, np.nan)
    return np.repeat(np.repeat(np.asarray(ys), 2, axis=1), 2, axis=2)


# ---------------------------------------------------------------------------------------------------
# The run and the report
# ---------------------------------------------------------------------------------------------------


def _strip(value):
    """Results without the sample arrays (for `results.json`)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in ("samples", "truth", "observed")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def run_digits_demo(
    config: DigitsDemoConfig = DigitsDemoConfig(), log: Callable[[str], None] = print
) -> Path:
    """Runs the five parts on the shipped digits model, writes the figures, `results.json` and
    `report.md` (rendered from the results alone) into `config.out`.

    **Returns:** the path of `report.md`.
    """
    from ._digits_figures import write_figures

    start = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    env = _environment()
    log(f"diffuse-eqx demo (digits): JAX {env['jax']} on {env['device']}, seed {config.seed}")

    def elapsed():
        return f"[{time.perf_counter() - start:5.1f} s]"

    model = digits.pretrained()
    judge = Judge()
    k_noise, k_run, k_batch, k_guide, k_inverse = jr.split(jr.key(config.seed), 5)
    n = config.n_particles
    labels = labels_in_turn(n)
    x_init, keys = initial_noise(k_noise, n), dx.particle_keys(k_run, n)
    log(
        f"{elapsed()} the model, the data ({len(judge.train)} train / {len(judge.test)} test digits), "
        f"the reference classifier ({100 * judge.test_accuracy:.1f}% on the test digits)"
    )

    def ode_parts():
        reference, ref = reference_solve(model, x_init, labels)
        p1 = part1_timers(model, x_init, keys, labels, reference, judge)
        lines = [
            f"{elapsed()} reference: Dopri8, rtol {ref['rtol']:g}, {ref['dtype']}: "
            f"{ref['accepted']} steps for {n} samples; part 1/5: timers (Heun, 10 steps, {n} samples)"
        ]
        lines += [
            f"      {r['label']:28s} RMS {r['rms']:.2e}  accuracy {_pct(r['accuracy']):>6s}"
            for r in p1["rows"]
        ]
        log("\n".join(lines))
        p2 = part2_integrators(model, x_init, keys, labels, reference, judge)
        lines = [f"{elapsed()} part 2/5: integrators at {BUDGETS} NFE"]
        lines += [f"      {r['label']:10s} {r['nfe']:3d} NFE  RMS {r['rms']:.2e}" for r in p2["rows"]]
        log("\n".join(lines))
        return reference, ref, p1, p2

    def guidance_part():
        p4 = part4_guidance(model, k_guide, config, judge)
        lines = [f"{elapsed()} part 4/5: guidance ({p4['n']} samples per row)"]
        lines += [
            f"      {r['label']:40s} accuracy {_pct(r['accuracy']):>6s}  FD {r['fd_pixels']:.2f}"
            for r in p4["rows"]
        ]
        log("\n".join(lines))
        return p4

    def inverse_part():
        p5 = part5_inverse(model, k_inverse, config, judge)
        lines = [f"{elapsed()} part 5/5: inverse problems ({config.n_inverse} test digits)"]
        lines += [
            f"      {b['operator']:18s} {r['method']:8s} agreement {_pct(r['agreement']):>6s}"
            for b in p5["blocks"]
            for r in b["rows"]
        ]
        log("\n".join(lines))
        return p5

    # Parts 1-2, 4 and 5 in two threads: much of their time is XLA compiling one program on one core
    # (the programs do not depend on each other), so one thread compiles while the other runs.
    # Part 3 runs alone afterwards, so that its timings are not shared with other work.
    log(f"{elapsed()} parts 1, 2, 4 and 5 (two at a time), then part 3 alone")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        f_inverse, f_ode = pool.submit(inverse_part), pool.submit(ode_parts)
        f_guidance = pool.submit(guidance_part)
        (reference, ref, p1, p2), p4, p5 = f_ode.result(), f_guidance.result(), f_inverse.result()
    p3 = part3_batched(model, k_batch, config, judge)
    log(
        f"{elapsed()} part 3/5: {p3['n']} unconditional samples: first call {p3['first_call']:.2f} s "
        f"(compile {p3['compile']:.2f} s), {p3['samples_per_s']:,.0f} samples/s; FD {p3['fd_pixels']:.2f} "
        f"(floor {judge.floor_pixels:.2f})"
    )

    parts = {"timers": p1, "integrators": p2, "batched": p3, "guidance": p4, "inverse": p5}
    write_figures(parts, reference, out)
    env["total_s"] = time.perf_counter() - start
    results = dict(
        target="digits",
        config={**dataclasses.asdict(config), "out": str(config.out)},
        environment=env,
        data=dict(
            n_train=len(judge.train),
            n_test=len(judge.test),
            classifier_test_accuracy=judge.test_accuracy,
            fd_floor_pixels=judge.floor_pixels,
            fd_floor_logits=judge.floor_logits,
        ),
        reference=ref,
        **{name: _strip(part) for name, part in parts.items()},
        figures=dict(FIGURES),
    )
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    report = out / "report.md"
    report.write_text(render_report(results))
    log(f"\nDone in {env['total_s']:.1f} s.\nReport:  {report.resolve()}")
    return report


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render_report(results: dict) -> str:
    """`report.md`, from `results.json` alone."""
    data, env = results["data"], results["environment"]
    p1, p2, p3, p4, p5 = (results[k] for k in ("timers", "integrators", "batched", "guidance", "inverse"))
    intro = [
        md.paragraph(
            f"The shipped digits model (`diffuse_eqx.models.digits`, a class-conditional flow-matching "
            f"UNet trained on {data['n_train']} of scikit-learn's 8x8 digits) through the library's "
            f"timers, integrators, guidance and posterior samplers. Judge: a logistic regression on the "
            f"pixels of the training digits, {_pct(data['classifier_test_accuracy'])} right on the "
            f"{data['n_test']} test digits. Fréchet distances (FD) are to the test digits, in pixel "
            f"space; the floor is the training digits' own FD, {data['fd_floor_pixels']:.2f} "
            f"({data['fd_floor_logits']:.2f} in the classifier's logits)."
        ),
        md.key_value_table(
            {
                "JAX": env["jax"],
                "device": f"{env['device']}, {env['cpus']} CPUs",
                "total time": f"{env['total_s']:.1f} s",
                "seed": str(results["config"]["seed"]),
            }
        ),
    ]
    ref = results["reference"]
    timers = md.Section(
        "1. Timers",
        [
            md.paragraph(
                f"Heun, {p1['n_steps']} steps, the same noise and labels for every timer. RMS: the "
                f"distance to the adaptive reference of the same noise (diffrax Dopri8, rtol = atol = "
                f"{ref['rtol']:g}, {ref['dtype']}, {ref['accepted']} steps). Left: the grids and "
                f"their step sizes; right: the samples (one row per timer, the labels 0-9 in turn)."
            ),
            md.table(
                p1["rows"],
                [
                    md.Column("Timer", "label", align="left"),
                    md.Column("NFE", "nfe"),
                    md.Column("RMS to reference", "rms", "{:.2e}"),
                    md.Column("Accuracy", "accuracy", _pct),
                ],
            ),
            md.image("timers", results["figures"]["timers"]),
        ],
    )
    integrators = md.Section(
        "2. Integrators at equal NFE",
        [
            md.paragraph(
                "Uniform grid; each integrator gets the steps its NFE budget buys. The figure shows "
                "the samples of each row under the reference's."
            ),
            md.table(
                p2["rows"],
                [
                    md.Column("Integrator", "label", align="left"),
                    md.Column("Budget", "budget"),
                    md.Column("Steps", "n_steps"),
                    md.Column("NFE", "nfe"),
                    md.Column("RMS to reference", "rms", "{:.2e}"),
                    md.Column("Accuracy", "accuracy", _pct),
                ],
            ),
            md.image("integrators", results["figures"]["integrators"]),
        ],
    )
    batched = md.Section(
        "3. Batched generation",
        [
            md.paragraph(
                f"{p3['n']} unconditional samples ({p3['label']}, {p3['nfe']} NFE) in one "
                f"`Denoiser.generate` call. The classifier's histogram of their labels is at most "
                f"{_pct(p3['histogram_max_deviation'])} from uniform (10% each)."
            ),
            md.key_value_table(
                {
                    "first call (compile + run)": f"{p3['first_call']:.2f} s",
                    "compile": f"{p3['compile']:.2f} s",
                    "run": f"{p3['run']:.2f} s",
                    "samples per second": f"{p3['samples_per_s']:,.0f}",
                    "FD to the test digits (pixels)": (
                        f"{p3['fd_pixels']:.2f} (floor {data['fd_floor_pixels']:.2f})"
                    ),
                    "FD (classifier logits)": f"{p3['fd_logits']:.2f} (floor {data['fd_floor_logits']:.2f})",
                    "label histogram": " ".join(f"{h:.2f}" for h in p3["histogram"]),
                }
            ),
            md.image("batched", results["figures"]["batched"]),
        ],
    )
    guidance = md.Section(
        "4. Guidance",
        [
            md.paragraph(
                f"{p4['n']} samples per row (labels 0-9 in turn), the same noise; accuracy: the share "
                f"the classifier labels as asked. The figure shows the first 20 of each row."
            ),
            md.table(
                p4["rows"],
                [
                    md.Column("Guidance", "label", align="left"),
                    md.Column("NFE", "nfe"),
                    md.Column("Accuracy", "accuracy", _pct),
                    md.Column("FD (pixels)", "fd_pixels", "{:.2f}"),
                ],
            ),
            md.image("guidance", results["figures"]["guidance"]),
        ],
    )
    inverse_rows = [{"operator": b["operator"], **r} for b in p5["blocks"] for r in b["rows"]]
    inverse = md.Section(
        "5. An inverse problem",
        [
            md.paragraph(
                f"{len(p5['labels'])} test digits, measured with noise of std {SIGMA_Y}, completed from the "
                "unconditional model. Agreement: the share of completions the classifier labels as the "
                "true digit; residual: the largest |A x - y| (about the noise for a sampler that fits "
                "the data)."
            ),
            md.table(
                inverse_rows,
                [
                    md.Column("Measurement", "operator", align="left"),
                    md.Column("Method", "method", align="left"),
                    md.Column("Agreement", "agreement", _pct),
                    md.Column("RMS to truth", "rms_to_truth", "{:.3f}"),
                    md.Column("Residual", "residual", "{:.1e}"),
                ],
            ),
            md.image("inverse", results["figures"]["inverse"]),
        ],
    )
    return md.document(
        "diffuse-eqx demo: the digits model", intro, [timers, integrators, batched, guidance, inverse]
    )
