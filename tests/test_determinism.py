"""Sample i does not depend on how many particles are drawn, how they are chunked or over how many
devices they are sharded: every public integrator and predictor wrapper (guidance, posterior
samplers; SMC samplers without resampling) in float64 and float32.

All cases run in one child process with 4 virtual CPU devices (XLA_FLAGS must be set before JAX
starts); it writes the largest difference per case to a JSON file and the parametrized test below
asserts each. Per case: 8 particles on one device, against the first 8 of 16 sharded over the 4
devices (4 per device) in chunks of `batch_size=3` (so one chunk of 3 and one of 1 per device): the
particle count, the chunking, the chunk remainder and the sharding all change at once. The SMC
samplers, which have neither option, draw 8 against the first 8 of 16.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import diffuse_eqx as dx


PATH = dx.Flow()


N_DEVICES = 4
N_STEPS = 4
# float64: particle i runs the same per-particle program whatever the batch; what XLA may still
# change with the batch size is how it vectorises loops and picks dot kernels, a rounding of the
# last bit (measured: bitwise for 20 of the 29 cases; at most 4e-14 on samples of size 7, and 2e-13
# on MCGdiff's log weights of size 8e3, i.e. a few ulps); 1e-12 leaves that room and nothing else.
TOL_F64 = 1e-12
# float32: a few ulps of the sample's size (measured: at most 3.0, DPS-gaussian; 1.7 for TDS).
ULPS_F32 = 4


def circle(scale=1.0):
    import diffuse_eqx as dx

    means = 4.0 * scale * np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    return dx.GaussianMixture(np.full(4, 0.25), means, np.broadcast_to(0.3 * np.eye(2), (4, 2, 2)))


def cases():
    """name -> builder of a Denoiser or an SMC sampler, built in the current precision."""
    import diffrax as dfx
    import optax

    import diffuse_eqx as dx

    path, prior = dx.Flow(), circle()
    weak = circle(0.8)
    pred = dx.Predictor(prior.network(path), path)
    cond = dx.ConditionalNetwork(lambda x, t, g: g.velocity(path, x, t), path, cond=prior, null=weak)
    timer = dx.UniformTimer(N_STEPS)
    A, y = np.array([[1.0, 0.5]]), np.array([2.0])
    op = dx.Matrix(A, 0.3)
    # DPS's Gaussian likelihood with sigma_y = 0.3 throws the particles out to |x| = 170 at t = 0.5
    # (scale / sigma_y^2 = 11 times J^T J_A^T r), which turns a last-bit rounding into 5e-11: a
    # well-posed measurement for the test, the amplification is not what it is about
    op_1 = dx.Matrix(A, 1.0)
    mask = np.array([True, False])
    inpaint, y_inpaint = dx.Inpainting(mask), np.array([2.0, 0.0])

    def den(integrator, predictor=pred):
        return dx.Denoiser(predictor, integrator, timer, (2,))

    return {
        "Euler": lambda: den(dx.Euler()),
        "Heun": lambda: den(dx.Heun()),
        "DDIM": lambda: den(dx.DDIM(eta=0.5)),
        "DPMpp2M": lambda: den(dx.DPMpp2M()),
        "DPMpp2S": lambda: den(dx.DPMpp2S()),
        "DPMpp2MSDE": lambda: den(dx.DPMpp2MSDE()),
        "DPMpp3M": lambda: den(dx.DPMpp3M()),
        "DPMpp3MSDE": lambda: den(dx.DPMpp3MSDE()),
        "IPNDM": lambda: den(dx.IPNDM()),
        "UniPC": lambda: den(dx.UniPC(order=3, variant="bh1")),
        "DEIS": lambda: den(dx.DEIS(order=3)),
        "EulerAncestral": lambda: den(dx.EulerAncestral()),
        "EulerAncestralRF": lambda: den(dx.EulerAncestralRF()),
        "EulerMaruyama": lambda: den(dx.EulerMaruyama()),
        "Churn": lambda: den(dx.Churn(dx.Heun(), s_churn=2.0)),
        "DiffraxIntegrator": lambda: den(dx.DiffraxIntegrator(dfx.Midpoint())),
        "DiffraxAdaptive": lambda: den(dx.DiffraxAdaptive(rtol=1e-4, atol=1e-4)),
        "DiffraxSDE": lambda: den(dx.DiffraxSDE(dfx.Euler())),
        "CFG": lambda: den(dx.Euler(), dx.CFG(cond, 2.0)),
        "CFGPlusPlus": lambda: den(dx.DDIM(), dx.CFGPlusPlus(cond, 0.5)),
        "APG": lambda: den(dx.Euler(), dx.APG(cond, 2.0, eta=0.3, norm_threshold=1.0, momentum=-0.5)),
        "GuidanceInterval": lambda: den(dx.Churn(dx.Euler(), 2.0), dx.GuidanceInterval(cond, 2.0, 0.2, 0.7)),
        "AutoGuidance": lambda: den(
            dx.Euler(), dx.AutoGuidance(pred, dx.Predictor(weak.network(path), path), 2.0)
        ),
        "DPS-norm": lambda: den(dx.DDIM(eta=1.0), dx.DPS(pred, op, y)),
        "DPS-gaussian": lambda: den(dx.DDIM(eta=1.0), dx.DPS(pred, op_1, y, likelihood="gaussian")),
        "PiGDM": lambda: den(dx.DDIM(), dx.PiGDM(pred, op, y)),
        "TMPD": lambda: den(dx.Euler(), dx.TMPD(pred, op, y)),
        "DDNM": lambda: den(dx.DDIM(eta=1.0), dx.DDNM(pred, inpaint, y_inpaint)),
        "ExactPosteriorGuidance": lambda: den(dx.Euler(), dx.ExactPosteriorGuidance(pred, prior, op, y)),
        "DAPS": lambda: den(dx.DAPS(op, y, n_langevin=3)),
        "RedDiff": lambda: den(dx.RedDiff(op, y, optimizer=optax.adam(0.1))),
        "RePaint": lambda: den(dx.RePaint(dx.DDIM(eta=1.0), inpaint, y_inpaint, jump_length=2, n_resample=2)),
        # finite differences over mu amplify a last-bit difference by ~1/mu (mu = 1e-3: 19 float32
        # ulps of the sample; 0.1: 1.1): a smoothing radius of the data's scale keeps rounding small
        "DPSGSG": lambda: den(dx.DDIM(eta=1.0), dx.DPSGSG(pred, op, y, num_queries=8, mu=0.1)),
        "Anchored": lambda: den(dx.Heun(), dx.Anchored(pred, np.array([1.0, -1.0]), 0.5, "data", (0.3, 1.0))),
        "Blended": lambda: den(dx.Blended(dx.DDIM(eta=1.0), np.array([2.0, 0.0]), np.array([0.0, 1.0]))),
        "TDS": lambda: dx.TDS(pred, op, y, timer, resample_threshold=0.0),
        "MCGdiff": lambda: dx.MCGdiff(pred, dx.Matrix(A), y, timer, resample_threshold=0.0),
    }


def measure(out_file: str, part: int = 0, n_parts: int = 1) -> None:
    """A child: every `n_parts`-th case from `part` on, in float64 then float32; writes
    {case: {dtype: [max |diff|, max |x|]}}."""
    import jax
    import jax.random as jr
    from jax.sharding import Mesh

    import diffuse_eqx as dx

    assert jax.device_count() == N_DEVICES, jax.device_count()
    mesh = Mesh(np.array(jax.devices()), ("particles",))
    key, results = jr.key(3), {}
    for x64 in (True, False):
        jax.config.update("jax_enable_x64", x64)
        dtype = "float64" if x64 else "float32"
        for name, build in list(cases().items())[part::n_parts]:
            sampler = build()
            if isinstance(sampler, dx.AbstractSMCSampler):  # no resampling: the particles are independent
                few, many = sampler.generate(key, 8), sampler.generate(key, 16)
                # the weights are normalised over the ensemble: compare them relative to particle 0's
                a, b = (
                    np.concatenate(
                        [np.asarray(o.particles)[:8], np.asarray(o.log_weights - o.log_weights[0])[:8, None]],
                        1,
                    )
                    for o in (few, many)
                )
            else:
                a = np.asarray(sampler.generate(key, 8).samples)
                b = np.asarray(sampler.generate(key, 16, sharding=mesh, batch_size=3).samples)[:8]
            assert a.dtype == np.dtype(dtype), (name, a.dtype)
            results.setdefault(name, {})[dtype] = [float(np.abs(a - b).max()), float(np.abs(a).max())]
    Path(out_file).write_text(json.dumps(results))


#: Child processes, each with its own share of the cases: most of a case's time is XLA compiling
#: on one core, so two children on two cores take about half the time of one.
N_CHILDREN = 2


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    folder = tmp_path_factory.mktemp("determinism")
    flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_DEVICES}"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    files = [folder / f"diffs_{i}.json" for i in range(N_CHILDREN)]
    children = [
        subprocess.Popen(
            [sys.executable, __file__, str(file), str(i), str(N_CHILDREN)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=Path(__file__).parent,
        )
        for i, file in enumerate(files)
    ]
    results = {}
    try:
        for child, file in zip(children, files):
            output, _ = child.communicate(timeout=900)
            assert child.returncode == 0, output
            results.update(json.loads(file.read_text()))
    finally:
        for child in children:
            child.kill()
    return results


CASE_NAMES = [
    "Euler", "Heun", "DDIM", "DPMpp2M", "DPMpp2S", "DPMpp2MSDE", "DPMpp3M", "DPMpp3MSDE", "IPNDM", "UniPC",
    "DEIS", "EulerAncestral", "EulerAncestralRF",
    "EulerMaruyama", "Churn", "DiffraxIntegrator", "DiffraxAdaptive", "DiffraxSDE", "CFG", "CFGPlusPlus",
    "APG", "GuidanceInterval", "AutoGuidance", "DPS-norm", "DPS-gaussian", "PiGDM", "TMPD", "DDNM",
    "ExactPosteriorGuidance", "DAPS", "RedDiff", "RePaint", "DPSGSG", "Anchored", "Blended", "TDS", "MCGdiff",
]  # fmt: skip


def test_every_public_sampler_is_a_case():
    import diffuse_eqx as dx

    assert sorted(CASE_NAMES) == sorted(cases())
    covered = {name.split("-")[0] for name in CASE_NAMES}
    bases = (dx.AbstractIntegrator, dx.AbstractPredictor, dx.AbstractSMCSampler)
    public = {
        name for name, obj in vars(dx).items()
        if isinstance(obj, type) and issubclass(obj, bases) and not name.startswith("Abstract")
    }  # fmt: skip
    assert public - covered == {"Predictor"}  # the plain predictor is in every case


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASE_NAMES)
def test_sample_i_is_independent_of_n_particles_batch_size_and_sharding(measured, case, dtype):
    diff, size = measured[case][dtype]
    assert np.isfinite(size) and size > 0.1, (case, dtype, size)  # real samples, not zeros
    if dtype == "float64":
        assert diff <= TOL_F64, (case, diff)
    else:
        ulps = diff / (float(np.finfo(np.float32).eps) * size)
        assert ulps <= ULPS_F32, (case, diff, f"{ulps:.1f} float32 ulps of the sample's size")


if __name__ == "__main__":
    measure(sys.argv[1], *map(int, sys.argv[2:]))
