"""The `diffuse-eqx` command: an application on top of the library, which never imports it.

```
diffuse-eqx demo [--target digits|gmm] [--out DIR] [--particles N] [--batch-particles N] [--seed S] [--quick]
diffuse-eqx generate --model REPO_OR_DIR --prompt TEXT [--height H] [--width W] [--steps N]
                     [--timer T] [--integrator I] [--n N] [--seed S] [--guidance G]
                     [--negative-prompt TEXT --true-cfg W] [--dtype D] [--out DIR] [--progress]
diffuse-eqx edit --model REPO_OR_DIR --image IN.png --prompt TEXT [--source-prompt TEXT]
                 [--method flowedit|rf-inversion|sdedit] [--mask MASK.png] [--steps N] [--n N]
                 [--strength S] [--gamma G] [--eta E] [--guidance G] [--source-guidance G] [--out DIR]
```

One module per command (`demo_digits.py` and `demo.py` for the demo's two targets, `generate.py`,
`edit.py`),
imported only when that command runs: the parser below needs nothing but the standard library.
"""

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, `diffuse-eqx: error: ...`, exit code 2 (subcommands included)."""

    def error(self, message: str):
        self.exit(2, f"diffuse-eqx: error: {message} (see {self.prog} --help)\n")


def _integer(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {text!r}")
        return value

    return parse


_particle_count = _integer(16)


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0; got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="diffuse-eqx", description="Modular sampling from diffusion and flow-matching models."
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="timers, integrators, batched generation, guidance and inverse problems, no download",
        description=(
            "The original FLUX tutorial's three parts (timer comparison, integrator comparison at equal "
            "NFE, batched generation), plus guidance and an inverse problem. --target digits (default): "
            "on the shipped digits model, judged by a reference classifier, the Fréchet distance to the "
            "test digits and an adaptive ODE reference. --target gmm: on an 8-component Gaussian mixture "
            "with its exact velocity field, measured against exact samples and the exact ODE solution. "
            "Writes report.md, results.json and PNG figures."
        ),
    )
    demo.add_argument(
        "--target",
        choices=["digits", "gmm"],
        default="digits",
        help="the learned digits model or the exact 2-D mixture (default: %(default)s)",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("diffuse_eqx_demo"),
        metavar="DIR",
        help="output folder (default: %(default)s)",
    )
    demo.add_argument(
        "--particles",
        type=_particle_count,
        metavar="N",
        help="samples of parts 1-2 (digits: 50, 20 with --quick; gmm: 4000, 1000 with --quick)",
    )
    demo.add_argument(
        "--batch-particles",
        type=_particle_count,
        metavar="N",
        help="samples of part 3 (digits: 1000, 200 with --quick; gmm: 10000, 2000 with --quick)",
    )
    demo.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: %(default)s)")
    demo.add_argument("--quick", action="store_true", help="a small, fast run")

    gen = commands.add_parser(
        "generate",
        help="text-to-image with FLUX.1 (weights from the Hugging Face hub or a local folder)",
        description="Samples FLUX.1 with any timer and integrator of the library and writes PNGs.",
    )
    gen.add_argument("--model", default="black-forest-labs/FLUX.1-dev", help="repo id or diffusers folder")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--height", type=_integer(16), default=512, help="a multiple of 16 (default 512)")
    gen.add_argument("--width", type=_integer(16), default=512, help="a multiple of 16 (default 512)")
    gen.add_argument("--steps", type=_integer(1), default=20)
    gen.add_argument("--timer", default="flux", choices=["flux", "uniform", "karras", "exponential"])
    gen.add_argument("--integrator", default="euler", choices=["euler", "heun", "ddim", "dpmpp2s", "dpmpp2m"])
    gen.add_argument("--n", type=_integer(1), default=1, help="images (particles) to draw")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--guidance", type=_finite_float, default=3.5, help="distilled guidance (dev only)")
    gen.add_argument("--negative-prompt", default=None, metavar="TEXT", help="prompt to guide away from")
    gen.add_argument(
        "--true-cfg",
        type=_finite_float,
        default=1.0,
        metavar="W",
        help="true CFG scale between --prompt and --negative-prompt (default 1: off; 2 NFE per call)",
    )
    gen.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    gen.add_argument("--out", type=Path, default=Path("flux_out"), metavar="DIR")
    gen.add_argument("--progress", action="store_true", help="show a progress bar over the sampling steps")

    ed = commands.add_parser(
        "edit",
        help="edit an image with FLUX.1 (FlowEdit, RF-Inversion, SDEdit) or inpaint it with a mask",
        description="Edits an image from a source prompt to a prompt, or regenerates a masked part.",
    )
    ed.add_argument("--model", default="black-forest-labs/FLUX.1-dev", help="repo id or diffusers folder")
    ed.add_argument("--image", type=Path, required=True, help="the input image (H and W multiples of 16)")
    ed.add_argument("--prompt", required=True, help="the target prompt")
    ed.add_argument(
        "--source-prompt", default="", metavar="TEXT", help="what the image shows (not for sdedit)"
    )
    ed.add_argument("--method", default="flowedit", choices=["flowedit", "rf-inversion", "sdedit"])
    ed.add_argument("--mask", type=Path, default=None, help="inpaint the white part of this mask instead")
    ed.add_argument("--steps", type=_integer(1), default=28)
    ed.add_argument("--n", type=_integer(1), default=1, help="edits to draw")
    ed.add_argument("--seed", type=int, default=0)
    ed.add_argument(
        "--strength", type=_finite_float, default=None, help="FlowEdit / SDEdit strength in (0, 1]"
    )
    ed.add_argument("--gamma", type=_finite_float, default=None, help="RF-Inversion's gamma in [0, 1]")
    ed.add_argument("--eta", type=_finite_float, default=None, help="RF-Inversion's eta in [0, 1]")
    ed.add_argument(
        "--guidance", type=_finite_float, default=5.5, help="target distilled guidance (dev only)"
    )
    ed.add_argument(
        "--source-guidance", type=_finite_float, default=1.5, help="source distilled guidance (dev)"
    )
    ed.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ed.add_argument("--out", type=Path, default=Path("flux_edit"), metavar="DIR")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `diffuse-eqx` command; `argv` defaults to `sys.argv[1:]`. An error is
    printed as one line, `diffuse-eqx: error: ...`, with exit code 2 (`--debug`: the traceback)."""
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except Exception as e:
        if args.debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"diffuse-eqx: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    return 0


def _run(args: argparse.Namespace) -> None:
    if args.command == "demo":
        if args.target == "digits":  # heavy imports only when running
            from .demo_digits import QUICK, DigitsDemoConfig as Config, run_digits_demo as run
        else:
            from .demo import QUICK, DemoConfig as Config, run_demo as run

        settings = dict(QUICK) if args.quick else {}
        if args.particles is not None:
            settings["n_particles"] = args.particles
        if args.batch_particles is not None:
            settings["n_batch"] = args.batch_particles
        run(Config(out=args.out, seed=args.seed, **settings))
    elif args.command == "edit":
        from .edit import edit

        edit(
            args.model,
            args.image,
            args.prompt,
            source_prompt=args.source_prompt,
            method=args.method,
            mask=args.mask,
            steps=args.steps,
            n=args.n,
            seed=args.seed,
            strength=args.strength,
            gamma=args.gamma,
            eta=args.eta,
            guidance=args.guidance,
            source_guidance=args.source_guidance,
            dtype=args.dtype,
            out=args.out,
        )
    elif args.command == "generate":
        from .generate import generate

        generate(
            args.model,
            args.prompt,
            height=args.height,
            width=args.width,
            steps=args.steps,
            timer=args.timer,
            integrator=args.integrator,
            n=args.n,
            seed=args.seed,
            guidance=args.guidance,
            negative_prompt=args.negative_prompt,
            true_cfg=args.true_cfg,
            dtype=args.dtype,
            out=args.out,
            progress=args.progress,
        )


if __name__ == "__main__":
    raise SystemExit(main())
