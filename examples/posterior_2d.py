"""A 2-D linear inverse problem with an exact posterior: prior, likelihood, posterior, and each method's
samples.

The prior is the 25-component mixture of the benchmark (benchmarks/posterior_gmm.py) in d_x = 2: unit
covariances at (-8i, -8j), i, j in -2..2, random weights. One noisy linear measurement
y = a^T x + sigma_y n cuts a band through it; the posterior (closed form,
`GaussianMixture.posterior`) keeps the modes along the band. Every method uses the same exact network
(`prior.network(path, "x0")`) on the Flow path with `FluxTimer(100, shift=3)`: the particle methods
(MCGdiff, TDS) with one ensemble of 8 000 particles (1 000 draws from its final weights), the
guidance-type methods (if present) one particle per sample with DDIM(eta=1). Each panel reports the
sliced-Wasserstein distance to exact posterior samples relative to the noise floor (the SW between two
exact sample sets of the same size).

Run: `python examples/posterior_2d.py` (writes docs/_static/posterior_2d.png).
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib
import numpy as np


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import diffuse_eqx as dx  # noqa: E402


jax.config.update("jax_enable_x64", True)

M, N_PARTICLES, N_STEPS = 1000, 8000, 100
OUT = Path(__file__).resolve().parent.parent / "docs" / "_static" / "posterior_2d.png"

rng = np.random.default_rng(3)
means = np.array([[-8.0 * i, -8.0 * j] for i in range(-2, 3) for j in range(-2, 3)])
weights = rng.normal(size=25) ** 2
prior = dx.GaussianMixture(weights / weights.sum(), means, np.tile(np.eye(2), (25, 1, 1)))
A = np.array([[0.6, 0.8]])
sigma_y = 1.5
y = np.array([3.0])
posterior = prior.posterior(A, y, sigma_y)

path = dx.Flow()
timer = dx.FluxTimer(N_STEPS, shift=3.0)
pred = dx.Predictor(prior.network(path, "x0"), path, "x0")
op = dx.Matrix(A, sigma_y=sigma_y)
key = jr.PRNGKey(0)


def smc(sampler):
    k_run, k_draw = jr.split(key)
    out = sampler.generate(k_run, N_PARTICLES)
    return out.particles[jr.categorical(k_draw, out.log_weights, shape=(M,))], int(out.nfe)


def denoise(predictor, integrator):
    out = dx.Denoiser(predictor, integrator, timer, (2,)).generate(key, M)
    return out.samples, int(out.nfe)


methods = {
    "MCGdiff": lambda: smc(dx.MCGdiff(pred, op, y, timer)),
    "TDS": lambda: smc(dx.TDS(pred, op, y, timer)),
}
ddpm = dx.DDIM(eta=1.0)
guided = {  # name: (class, constructor); the guidance module may not be there yet
    "Exact guidance": ("ExactPosteriorGuidance", lambda c: c(pred, prior, op, y)),
    "DPS": ("DPS", lambda c: c(pred, op, y)),
    "PiGDM": ("PiGDM", lambda c: c(pred, op, y)),
    "TMPD": ("TMPD", lambda c: c(pred, op, y)),
    "DDNM": ("DDNM", lambda c: c(pred, op, y)),
}
for name, (cls_name, build) in guided.items():
    if hasattr(dx, cls_name):
        methods[name] = lambda cls=getattr(dx, cls_name), build=build: denoise(build(cls), ddpm)

sw_key = jr.PRNGKey(12345)
exact = posterior.sample(jr.PRNGKey(1), M)
floor = np.mean(
    [
        float(
            dx.sliced_wasserstein(
                posterior.sample(jr.PRNGKey(10 + 2 * i), M),
                posterior.sample(jr.PRNGKey(11 + 2 * i), M),
                sw_key,
            )
        )
        for i in range(4)
    ]
)

panels = [
    ("Prior", np.asarray(prior.sample(jr.PRNGKey(2), M)), None),
    ("Likelihood", None, None),
    ("Exact posterior", np.asarray(exact), None),
]
for name, run in methods.items():
    samples, nfe = run()
    ratio = float(dx.sliced_wasserstein(samples, exact, sw_key)) / floor
    n_evals = f"{N_PARTICLES} particles x {nfe}" if name in ("MCGdiff", "TDS") else f"NFE {nfe}"
    panels.append((name, np.asarray(samples), f"SW / floor {ratio:.1f}   ({n_evals})"))
    print(f"{name:15s} SW / noise floor = {ratio:.2f}")

lim = 24
grid = np.linspace(-lim, lim, 300)
gx, gy = np.meshgrid(grid, grid)
pts = np.stack([gx.ravel(), gy.ravel()], -1)
likelihood = np.exp(-0.5 * ((pts @ A.T - y) ** 2).sum(-1) / sigma_y**2).reshape(gx.shape)
log_post = np.asarray(jax.vmap(posterior.log_prob)(jnp.asarray(pts))).reshape(gx.shape)

cols = 4
rows = -(-len(panels) // cols)
fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
for ax in axes.ravel():
    ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal")
    ax.set_xticks([]), ax.set_yticks([])
for ax, (title, samples, note) in zip(axes.ravel(), panels):
    ax.set_title(title if note is None else f"{title}\n{note}", fontsize=9)
    if samples is None:
        ax.imshow(likelihood, extent=(-lim, lim, -lim, lim), origin="lower", cmap="Blues")
        ax.scatter(*means.T, s=4, c="0.4")
        continue
    if title != "Prior":
        ax.contour(gx, gy, log_post, levels=[log_post.max() - 8], colors="0.75", linewidths=0.6)
    ax.scatter(*samples.T, s=1, alpha=0.4, c="C3" if title == "Exact posterior" else "C0")
for ax in axes.ravel()[len(panels) :]:
    ax.axis("off")
fig.suptitle(f"y = a^T x + {sigma_y} n, prior: 25 unit Gaussians; grey: exact posterior contour", fontsize=10)
fig.tight_layout()
OUT.parent.mkdir(parents=True, exist_ok=True)
fig.savefig(OUT, dpi=120)
print(f"wrote {OUT}")
