import equinox as eqx
import jax.random as jr
from jaxtyping import Array, Float

from .._check import check_interval
from .._custom_types import Grid, Key
from .._denoiser import Denoiser, particle_keys
from .._integrator import AbstractIntegrator, Euler
from .._predictor import AbstractPredictor
from .._timer import AbstractTimer, CustomTimer
from .base import EditOutput, check_batch, start_index
from .invert import checked_grid
from .noise import noise_each


class SDEdit(eqx.Module):
    r"""SDEdit (Meng et al., ICLR 2022): noise the input to an intermediate time with the forward
    process, $x_{t_k} = \alpha_{t_k} x + \sigma_{t_k}\varepsilon$ ([`noise_to`][diffuse_eqx.noise_to]),
    then generate from there with the target condition over the rest of the grid. `strength` is the
    fraction of the grid's steps that runs (diffusers' img2img `strength`): 1 starts from the first
    grid time (pure noise at $t_{\max}$: a fresh sample), small values keep more of the input. With
    exact data and an exact sampler the output has the data distribution at every strength.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{meng2022sdedit,
          title={SDEdit: Guided Image Synthesis and Editing with Stochastic Differential Equations},
          author={Meng, Chenlin and He, Yutong and Song, Yang and Song, Jiaming and Wu, Jiajun
                  and Zhu, Jun-Yan and Ermon, Stefano},
          booktitle={ICLR}, year={2022}}
        ```

    **Arguments:**

    - `strength`: in $(0, 1]$ (default 0.6): the last `round(strength * n_steps)` grid steps run.
    - `integrator`: any [`AbstractIntegrator`][diffuse_eqx.AbstractIntegrator] (default
      [`Euler`][diffuse_eqx.Euler]); stochastic ones are allowed.
    """

    strength: float = 0.6
    integrator: AbstractIntegrator = eqx.field(default_factory=Euler)

    def __check_init__(self):
        check_interval("SDEdit strength", self.strength, 0.0, 1.0, open_lo=True)
        if not isinstance(self.integrator, AbstractIntegrator):
            raise TypeError(f"SDEdit integrator must be an AbstractIntegrator; got {self.integrator!r}.")

    def edit(
        self,
        key: Key,
        x: Float[Array, " n_particles *shape"],
        target: AbstractPredictor,
        timer: AbstractTimer | Grid,
        **generate_options,
    ) -> EditOutput:
        """Edits the particles `x` (data, shape `(n_particles, *x0_shape)`) towards `target`.

        **Arguments:**

        - `key`: a PRNG key: particle $i$ is noised and sampled with keys from `fold_in(key, i)`.
        - `x`: the inputs.
        - `target`: the [`AbstractPredictor`][diffuse_eqx.AbstractPredictor] of the target condition
          (a label, a prompt, guidance).
        - `timer`: the full generation grid (from $t_{\\max}$ to 0); the edit runs its end.
        - `generate_options`: passed to [`Denoiser.generate`][diffuse_eqx.Denoiser.generate]
          (`batch_size`, `sharding`, `progress`, `callback`, ...).

        **Returns:** an [`EditOutput`][diffuse_eqx.EditOutput].
        """
        x = check_batch("SDEdit", x)
        ts = checked_grid(target.path, timer, "SDEdit")
        k = start_index("SDEdit", self.strength, ts)
        k_noise, k_run = jr.split(key)
        x_start = noise_each(target.path, x, ts[k], particle_keys(k_noise, x.shape[0]))
        den = Denoiser(target, self.integrator, CustomTimer(ts[k:]), x.shape[1:], dtype=x.dtype)
        out = den.generate(k_run, x.shape[0], x_init=x_start, **generate_options)
        return EditOutput(out.samples, out.nfe, ts[k])
