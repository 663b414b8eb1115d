"""Every guidance module at two strengths on a 2-D mixture with exact networks.

The unconditional model is an 8-component Gaussian mixture on a circle; the conditional model is the
same mixture restricted to 3 adjacent components (the "class"). Both networks are exact, and one
`ConditionalNetwork` evaluates them in one batched call: the condition is the mixture itself (its
weights), the null condition the full mixture. Autoguidance guides the conditional model with a
weaker version of it (the same components, twice as wide).

Run: `python examples/guidance_figure.py` (writes docs/_static/guidance.png).
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import diffuse_eqx as dx  # noqa: E402


jax.config.update("jax_enable_x64", True)

N_PARTICLES, N_STEPS = 2000, 32
OUT = Path(__file__).resolve().parent.parent / "docs" / "_static" / "guidance.png"

angles = 2 * jnp.pi * jnp.arange(8) / 8
means = 3.0 * jnp.stack([jnp.cos(angles), jnp.sin(angles)], -1)
covs = jnp.tile(0.35**2 * jnp.eye(2), (8, 1, 1))
in_class = jnp.arange(8) < 3
uncond = dx.GaussianMixture(jnp.full(8, 1 / 8), means, covs)
cond = dx.GaussianMixture(jnp.where(in_class, 1 / 3, 0.0), means, covs)
weak = dx.GaussianMixture(cond.weights, means, 4 * covs)
path = dx.Flow()


def mixture_velocity(x, t, mixture):
    """`network(x, t, c)`: the exact velocity of the mixture `c` (a pytree, so it can be batched)."""
    return mixture.velocity(path, x, t)


model = dx.ConditionalNetwork(mixture_velocity, path, cond=cond, null=uncond)
good = dx.Predictor(cond.network(path), path)
bad = dx.Predictor(weak.network(path), path)

# (title, integrator, {label: predictor}) for the weak and the strong setting
METHODS = [
    ("CFG", dx.Heun(), {"w = 2": dx.CFG(model, 2.0), "w = 6": dx.CFG(model, 6.0)}),
    (
        "Guidance interval (0.3, 0.8]",
        dx.Heun(),
        {
            "w = 2": dx.GuidanceInterval(model, 2.0, 0.3, 0.8),
            "w = 6": dx.GuidanceInterval(model, 6.0, 0.3, 0.8),
        },
    ),
    (
        "CFG++ (DDIM)",
        dx.DDIM(),
        {"λ = 0.2": dx.CFGPlusPlus(model, 0.2), "λ = 0.8": dx.CFGPlusPlus(model, 0.8)},
    ),
    (
        "APG (η = 0, β = -0.5)",
        dx.Heun(),
        {"w = 2": dx.APG(model, 2.0, momentum=-0.5), "w = 6": dx.APG(model, 6.0, momentum=-0.5)},
    ),
    (
        "Autoguidance",
        dx.Heun(),
        {"w = 2": dx.AutoGuidance(good, bad, 2.0), "w = 6": dx.AutoGuidance(good, bad, 6.0)},
    ),
]


def main():
    key = jr.key(0)
    timer = dx.UniformTimer(N_STEPS)
    fig, axes = plt.subplots(
        2, len(METHODS) + 1, figsize=(3.0 * (len(METHODS) + 1), 6.2), sharex=True, sharey=True
    )
    exact_uncond = uncond.sample(jr.key(1), N_PARTICLES)
    exact_cond = cond.sample(jr.key(2), N_PARTICLES)
    for row, (samples, title) in enumerate(
        ((exact_uncond, "unconditional (exact)"), (exact_cond, "conditional (exact)"))
    ):
        axes[row, 0].scatter(*samples.T, s=1.5, alpha=0.4, color="0.3")
        axes[row, 0].set_title(title, fontsize=10)
    for col, (name, integrator, settings) in enumerate(METHODS, start=1):
        for row, (label, predictor) in enumerate(settings.items()):
            out = dx.Denoiser(predictor, integrator, timer, (2,)).generate(key, N_PARTICLES)
            ax = axes[row, col]
            ax.scatter(*exact_cond.T, s=1.5, alpha=0.15, color="0.7")
            ax.scatter(*out.samples.T, s=1.5, alpha=0.4, color=f"C{col - 1}")
            ax.set_title(f"{name}\n{label}, NFE {int(out.nfe)}", fontsize=10)
            print(f"{name:30s} {label:8s} NFE {int(out.nfe):3d}  mean {jnp.round(out.samples.mean(0), 2)}")
    for ax in axes.flat:
        ax.set_aspect("equal")
        ax.set_xlim(-5, 5)
        ax.set_ylim(-5, 5)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
