"""Trains the shipped digits model: `python examples/train_digits.py` (about 9 minutes on 2 CPU cores).

Flow matching (Lipman et al. 2023; Liu et al. 2023) on the 1 500 training digits of
`diffuse_eqx.models.digits.load_data`: for a digit $x_0$, a time $t \\sim U(0, 1)$ and noise
$\\varepsilon$, the network at $x_t = (1 - t)\\,x_0 + t\\,\\varepsilon$ regresses the velocity
$\\varepsilon - x_0$. The label is replaced by the null label with probability 0.1, so that one
network is both the conditional and the unconditional model (classifier-free guidance). Each
training pixel gets uniform noise one grey level wide (dequantisation: the data has 17 grey levels).
Adam with a warm-up and a cosine decay, gradients clipped to norm 1, and an exponential moving
average of the weights (decay 0.999), which is what is saved. Every random draw comes from `--seed`.

Writes `config.json` (the architecture and a record of the training) and `weights.safetensors` (the
averaged weights, float32) to `--out` (by default the package's `weights/` folder), and the loss
curve (`loss.png`, `loss.csv`) to `--figures`. It ends with a quick check: 200 samples (20 per class,
Heun, 16 steps, guidance 2) labelled by the reference classifier.
"""

import argparse
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from tqdm.auto import tqdm

import diffuse_eqx as dx
from diffuse_eqx.models import digits
from diffuse_eqx.models._weights import parameter_paths


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4000, help="optimizer steps (default 4000)")
    parser.add_argument("--batch", type=int, default=128, help="digits per step (default 128)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up steps (default 200)")
    parser.add_argument("--ema", type=float, default=0.999, help="weight-averaging decay (default 0.999)")
    parser.add_argument("--label-dropout", type=float, default=0.1, help="null-label probability")
    parser.add_argument(
        "--dequantise",
        type=float,
        default=1.0,
        help="uniform noise added to each training pixel, in grey levels (default 1: one level wide)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=digits.WEIGHTS, help="the weights folder")
    parser.add_argument(
        "--figures", type=Path, default=Path("digits_training"), help="the loss curve's folder"
    )
    args = parser.parse_args(argv)
    for name in ("steps", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.steps % CHUNK:
        parser.error(f"--steps must be a multiple of {CHUNK}")
    if not 0 <= args.warmup < args.steps:
        parser.error("--warmup must be >= 0 and below --steps")
    return args


#: Optimizer steps per compiled call (a `lax.scan`); the loss curve has one point per chunk (their
#: mean loss).
CHUNK = 50


def flow_matching_loss(net, x0, labels, key):
    """The mean squared error of the velocity at $x_t$, over a batch."""
    k_t, k_eps = jr.split(key)
    t = jr.uniform(k_t, (x0.shape[0],))
    eps = jr.normal(k_eps, x0.shape)
    xt = (1 - t)[:, None, None] * x0 + t[:, None, None] * eps
    v = jax.vmap(net)(xt, t, labels)
    return jnp.mean((v - (eps - x0)) ** 2)


#: One grey level in the model's pixel scale ($x = p/8 - 1$ for grey levels $p = 0, \\dots, 16$).
GREY_LEVEL = 1 / 8


def dequantisation_noise(key, width: float, shape) -> jax.Array:
    """Uniform noise `width` grey levels wide, centred on 0 (Theis et al. 2016): the digits have
    17 grey levels, and a model fitted to the exact levels learns their grid, which pulls its
    samples onto the training digits."""
    return width * GREY_LEVEL * jr.uniform(key, shape, minval=-0.5, maxval=0.5)


def train(args) -> tuple[digits.DigitsUNet, list[float], float]:
    x_train, y_train = (jnp.asarray(a) for a in digits.load_data("train"))
    key = jr.key(args.seed)
    k_init, k_run = jr.split(key)
    net = digits.DigitsUNet(digits.DigitsConfig(), key=k_init)
    params, static = eqx.partition(net, eqx.is_array)
    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, args.warmup, args.steps, args.lr / 20)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    opt_state = optimizer.init(params)

    def one_step(carry, step):
        params, ema, opt_state = carry
        k = jr.fold_in(k_run, step)
        k_batch, k_drop, k_loss, k_noise = jr.split(k, 4)
        idx = jr.randint(k_batch, (args.batch,), 0, x_train.shape[0])
        labels = jnp.where(
            jr.uniform(k_drop, (args.batch,)) < args.label_dropout, digits.NULL_LABEL, y_train[idx]
        )
        x0 = x_train[idx] + dequantisation_noise(k_noise, args.dequantise, (args.batch, *digits.IMAGE_SHAPE))
        loss, grads = jax.value_and_grad(
            lambda p: flow_matching_loss(eqx.combine(p, static), x0, labels, k_loss)
        )(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: args.ema * e + (1 - args.ema) * p, ema, params)
        return (params, ema, opt_state), loss

    @jax.jit
    def chunk(carry, first):
        return jax.lax.scan(one_step, carry, first + jnp.arange(CHUNK))

    carry, losses = (params, params, opt_state), []
    start = time.perf_counter()
    with tqdm(total=args.steps, desc="training", unit="step") as bar:
        for first in range(0, args.steps, CHUNK):
            carry, chunk_losses = chunk(carry, first)
            losses.append(float(jnp.mean(chunk_losses)))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            bar.update(CHUNK)
    seconds = time.perf_counter() - start
    return eqx.combine(carry[1], static), losses, seconds


def save(net: digits.DigitsUNet, args, losses: list[float], seconds: float) -> None:
    from safetensors.numpy import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.asarray(leaf, np.float32) for name, leaf in parameter_paths(net).items()}
    save_file(tensors, str(args.out / "weights.safetensors"))
    config = {
        "architecture": {
            "channels": list(net.config.channels),
            "emb_dim": net.config.emb_dim,
            "groups": net.config.groups,
        },
        "training": {
            "script": "examples/train_digits.py",
            "data": "sklearn.datasets.load_digits: the 1 500 training digits of digits.load_data",
            "path": "Flow: x_t = (1 - t) x0 + t eps, velocity target eps - x0, t ~ U(0, 1)",
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "warmup": args.warmup,
            "ema": args.ema,
            "label_dropout": args.label_dropout,
            "dequantise": args.dequantise,
            "seed": args.seed,
            "final_loss": losses[-1],
            "seconds": round(seconds, 1),
            "parameters": int(sum(t.size for t in tensors.values())),
            "jax": jax.__version__,
        },
    }
    (args.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def plot_losses(losses: list[float], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    steps = CHUNK * (np.arange(len(losses)) + 1)
    np.savetxt(folder / "loss.csv", np.c_[steps, losses], delimiter=",", header="step,loss", comments="")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses)
    ax.set(xlabel="step", ylabel=f"flow-matching loss (mean of {CHUNK} steps)", yscale="log")
    ax.set_title("Training the digits model")
    fig.tight_layout()
    fig.savefig(folder / "loss.png", dpi=120)
    plt.close(fig)


def quick_check(folder: Path, seed: int) -> float:
    """The reference classifier's accuracy on 200 samples, 20 per class, of the saved model."""
    model = digits.DigitsModel.load(folder)
    correct = 0
    for label in range(digits.N_CLASSES):
        den = dx.Denoiser(
            model.predictor(label, guidance=2.0), dx.Heun(), dx.FluxTimer(16, shift=1.0), model.x0_shape
        )
        samples = den.generate(jr.key(seed + label), 20).samples
        correct += int(np.sum(digits.classify(samples) == label))
    return correct / 200


def main(argv=None) -> None:
    args = parse_args(argv)
    net, losses, seconds = train(args)
    save(net, args, losses, seconds)
    plot_losses(losses, args.figures)
    print(f"trained {args.steps} steps in {seconds:.0f} s, final loss {losses[-1]:.4f}; saved to {args.out}")
    print(
        f"200 samples (Heun, 16 steps, guidance 2): {100 * quick_check(args.out, args.seed):.1f}% "
        "classified right"
    )


if __name__ == "__main__":
    main()
