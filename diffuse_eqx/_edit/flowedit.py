import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float

from .._check import check_int, check_interval
from .._custom_types import Grid, Key
from .._denoiser import integrate, particle_keys
from .._integrator import AbstractIntegrator, Euler
from .._predictor import AbstractPredictor
from .._timer import AbstractTimer
from .base import EditOutput, check_batch, start_index
from .invert import checked_grid


class FlowEdit(eqx.Module):
    r"""FlowEdit (Kulikov et al. 2025): inversion-free editing. From $Z = x^{\rm src}$ at the start
    time $t_k$, each step $t_i \to t_{i+1}$ draws $n_{\rm avg}$ noises $\varepsilon$, couples noisy
    source and target points and integrates (Euler) the mean velocity difference:

    $$\tilde x^{\rm src} = \alpha_{t_i} x^{\rm src} + \sigma_{t_i}\varepsilon, \qquad
      \tilde x^{\rm tgt} = \tilde x^{\rm src} + (Z - x^{\rm src}), \qquad
      Z \leftarrow Z + (t_{i+1} - t_i)\,\overline{v_{\rm tgt}(\tilde x^{\rm tgt}, t_i)
      - v_{\rm src}(\tilde x^{\rm src}, t_i)}.$$

    With source = target the difference is zero and the output is the input, exactly. The last
    `n_min` steps are plain sampling with the target from the noised edit
    $\tilde x^{\rm tgt}$ (with `integrator`). NFE: $2 n_{\rm avg}$ per edit step. The paper's FLUX
    settings: 28 steps, strength 24/28, $n_{\rm avg} = 1$, `n_min = 0`, source guidance 1.5,
    target guidance 5.5 (the predictors' business).

    ??? cite "Reference"
        ```bibtex
        @article{kulikov2025flowedit,
          title={FlowEdit: Inversion-Free Text-Based Editing Using Pre-Trained Flow Models},
          author={Kulikov, Vladimir and Kleiner, Matan and Huberman-Spiegelglas, Inbar
                  and Michaeli, Tomer},
          journal={arXiv:2412.08629}, year={2025}}
        ```

    **Arguments:**

    - `strength`: in $(0, 1]$, the fraction of the grid's steps that runs (the paper's
      $n_{\max}/T$; default 0.85).
    - `n_avg`: noises averaged per step (default 1).
    - `n_min`: final steps of plain target sampling (default 0).
    - `integrator`: the [`AbstractIntegrator`][diffuse_eqx.AbstractIntegrator] of those final steps
      (default [`Euler`][diffuse_eqx.Euler]).
    """

    strength: float = 0.85
    n_avg: int = 1
    n_min: int = 0
    integrator: AbstractIntegrator = eqx.field(default_factory=Euler)

    def __check_init__(self):
        check_interval("FlowEdit strength", self.strength, 0.0, 1.0, open_lo=True)
        check_int("FlowEdit n_avg", self.n_avg)
        check_int("FlowEdit n_min", self.n_min, minimum=0)
        if not isinstance(self.integrator, AbstractIntegrator):
            raise TypeError(f"FlowEdit integrator must be an AbstractIntegrator; got {self.integrator!r}.")

    def edit(
        self,
        key: Key,
        x: Float[Array, " n_particles *shape"],
        source: AbstractPredictor,
        target: AbstractPredictor,
        timer: AbstractTimer | Grid,
    ) -> EditOutput:
        """Edits the particles `x` (data, shape `(n_particles, *x0_shape)`) from `source` to `target`.

        **Arguments:**

        - `key`: a PRNG key: particle $i$'s noises come from `fold_in(key, i)`.
        - `x`: the inputs.
        - `source`, `target`: the [`AbstractPredictor`][diffuse_eqx.AbstractPredictor]s of the source
          and target conditions.
        - `timer`: the generation grid (from $t_{\\max}$ to 0); the edit runs its end.

        **Returns:** an [`EditOutput`][diffuse_eqx.EditOutput].
        """
        x = check_batch("FlowEdit", x)
        ts = checked_grid(target.path, timer, "FlowEdit")
        k = start_index("FlowEdit", self.strength, ts)
        n_steps = ts.shape[0] - 1
        if self.n_min > n_steps - k:
            raise ValueError(
                f"FlowEdit: n_min={self.n_min} exceeds the {n_steps - k} steps the edit runs "
                f"(strength={self.strength} of {n_steps})."
            )
        samples, nfe = _flowedit(self, source, target, ts[k:], x, particle_keys(key, x.shape[0]))
        return EditOutput(samples, nfe, ts[k])


@eqx.filter_jit
def _flowedit(method: FlowEdit, source, target, ts, x, keys):
    path = target.path
    n_edit = ts.shape[0] - 1 - method.n_min

    def one(x_src, key):
        def velocity(predictor, z, t):
            pred, _, nfe = predictor.evaluate(z, t, predictor.init(z))
            return pred.velocity(path, t), nfe

        def noisy(i, key):
            eps = jr.normal(key, (method.n_avg, *x_src.shape), x_src.dtype)
            return path.alpha(ts[i]) * x_src + path.sigma(ts[i]) * eps

        def body(carry, i):
            z, nfe = carry
            x_src_t = noisy(i, jr.fold_in(key, i))

            def difference(x_s):
                x_t = x_s + (z - x_src)  # exactly x_s while z = x_src
                v_t, n_t = velocity(target, x_t, ts[i])
                v_s, n_s = velocity(source, x_s, ts[i])
                return v_t - v_s, n_t + n_s

            dv, n = jax.vmap(difference)(x_src_t)
            z = (z + (ts[i + 1] - ts[i]) * jnp.mean(dv, 0)).astype(z.dtype)
            return (z, nfe + jnp.sum(n).astype(jnp.int32)), None

        (z, nfe), _ = lax.scan(body, (x_src, jnp.asarray(0, jnp.int32)), jnp.arange(n_edit))
        if method.n_min:
            x_s = noisy(n_edit, jr.fold_in(key, n_edit))[0]
            z, more, _ = integrate(
                method.integrator, target, ts[n_edit:], x_s + (z - x_src), jr.fold_in(key, n_edit + 1)
            )
            nfe = nfe + more.astype(jnp.int32)
        return z, nfe

    samples, nfe = jax.vmap(one)(x, keys)
    return samples, jnp.max(nfe)
