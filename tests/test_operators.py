"""Measurement operators: exact adjoints and pseudo-inverses (against dense matrices), the noise model,
the likelihood and its gradient, and the errors on bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.ndimage

import diffuse_eqx as dx


EPS = np.finfo(np.float64).eps
_rng = np.random.default_rng(0)
CASES = {  # name: (operator, signal shape); small, so that dense matrices are cheap
    "inpaint_broadcast": (dx.Inpainting(dx.random_mask(jr.key(1), (6, 8), 0.5), 0.1), (2, 6, 8)),
    "inpaint_box": (dx.Inpainting(dx.box_mask((2, 6, 8), 1, 2, 3, 4)), (2, 6, 8)),
    "downsample": (dx.Downsampling(2, 0.1), (2, 6, 8)),
    "blur_gauss": (dx.Blur(dx.gaussian_kernel(3, 0.8), 0.1), (2, 6, 8)),
    "blur_motion": (dx.Blur(dx.motion_kernel(jr.key(2), 5, 0.5)), (6, 8)),
    "mri_lines": (dx.MRI(dx.kspace_line_mask(jr.key(3), (6, 8), 3, 1), 0.1), (2, 6, 8)),
    "mri_random": (dx.MRI(dx.random_mask(jr.key(4), (6, 8), 0.5), 0.2), (6, 8)),  # asymmetric k-space
    "matrix_wide": (dx.Matrix(_rng.normal(size=(5, 7)), 0.1), (7,)),
    "matrix_tall": (dx.Matrix(_rng.normal(size=(7, 5))), (5,)),
}
NOISY = [name for name, (op, _) in CASES.items() if op.sigma_y > 0]


def random_pair(op, x_shape, seed):
    """A random signal, and a random measurement of the operator's output shape and dtype."""
    kx, ky, ki = jr.split(jr.key(seed), 3)
    x = jr.normal(kx, x_shape)
    y_shape = op.y_shape(x_shape)
    y = jr.normal(ky, y_shape)
    if jnp.iscomplexobj(op.apply(x)):
        y = y + 1j * jr.normal(ki, y_shape)
    return x, y


def real_inner(a, b):
    return jnp.sum(jnp.real(jnp.conj(a) * b))


def realify(y):
    """C^n as R^2n (real parts, then imaginary parts); identity on real arrays."""
    y = y.ravel()
    return jnp.concatenate([y.real, y.imag]) if jnp.iscomplexobj(y) else y


def dense(fn, in_shape, complex_in=False):
    """The real matrix of a real-linear map, from its action on the basis (e_k, then i e_k if complex)."""
    basis = jnp.eye(int(np.prod(in_shape))).reshape(-1, *in_shape)
    if complex_in:
        basis = jnp.concatenate([basis, 1j * basis])
    return np.asarray(jax.vmap(lambda e: realify(fn(e)))(basis)).T


@pytest.mark.parametrize("name", CASES)
def test_dot_product_adjoint(name):
    op, x_shape = CASES[name]
    for seed in range(3):
        x, y = random_pair(op, x_shape, seed)
        ax, aty = op.apply(x), op.adjoint(y)
        assert ax.shape == y.shape and aty.shape == x.shape
        lhs, rhs = real_inner(ax, y), real_inner(x, aty)
        # float64 rounding: a few hundred operations, each of relative size eps, on terms of this scale.
        scale = float(jnp.linalg.norm(ax) * jnp.linalg.norm(y) + jnp.linalg.norm(x) * jnp.linalg.norm(aty))
        assert abs(lhs - rhs) <= 1e3 * EPS * scale


@pytest.mark.parametrize("name", CASES)
def test_adjoint_vjp_and_pinv_are_exact_matrices(name):
    op, x_shape = CASES[name]
    x, y = random_pair(op, x_shape, 0)
    complex_y = jnp.iscomplexobj(y)
    A = dense(op.apply, x_shape)
    # The adjoint and the vjp are the transpose of A (for the real inner product on C^n = R^2n).
    np.testing.assert_allclose(dense(op.adjoint, y.shape, complex_y), A.T, atol=1e3 * EPS)
    np.testing.assert_allclose(dense(lambda v: op.vjp(x, v), y.shape, complex_y), A.T, atol=1e3 * EPS)
    # pinv is the Moore-Penrose pseudo-inverse (Blur: with its default truncation rcond = 1e-6).
    P = dense(op.pinv, y.shape, complex_y)
    np.testing.assert_allclose(P, np.linalg.pinv(A, rcond=1e-6), atol=1e-10)
    np.testing.assert_allclose(op.apply(op.pinv(op.apply(x))), op.apply(x), atol=1e-10)


@pytest.mark.parametrize("name", ["matrix_wide", "matrix_tall"])
def test_matrix_svd(name):
    op, _ = CASES[name]
    U, S, Vt = op.svd()
    r = min(op.A.shape)
    assert U.shape == (op.A.shape[0], r) and S.shape == (r,) and Vt.shape == (r, op.A.shape[1])
    np.testing.assert_allclose(U * S @ Vt, op.A, atol=1e3 * EPS)
    np.testing.assert_allclose(U.T @ U, np.eye(r), atol=1e3 * EPS)
    np.testing.assert_allclose(Vt @ Vt.T, np.eye(r), atol=1e3 * EPS)


@pytest.mark.parametrize("kernel_shape", [(3, 3), (5, 3), (4, 2)])
def test_blur_is_scipy_wrap_convolution(kernel_shape):
    kernel = _rng.uniform(size=kernel_shape)  # asymmetric: a flip or a shift would show
    x = _rng.normal(size=(6, 8))
    expected = scipy.ndimage.convolve(x, kernel, mode="wrap")
    np.testing.assert_allclose(dx.Blur(kernel).apply(jnp.asarray(x)), expected, atol=1e-12)


def test_apply_references():
    x = _rng.normal(size=(2, 6, 8))
    mask = np.asarray(dx.random_mask(jr.key(5), (6, 8), 0.5))
    np.testing.assert_array_equal(dx.Inpainting(mask).apply(jnp.asarray(x)), mask * x)
    blocks = x.reshape(2, 3, 2, 4, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(dx.Downsampling(2).apply(jnp.asarray(x)), blocks, atol=1e-14)
    np.testing.assert_allclose(dx.Downsampling(2).pinv(jnp.asarray(blocks))[:, ::2, 1::2], blocks, atol=0)
    kspace = np.fft.fft2(x, norm="ortho") * mask
    np.testing.assert_allclose(dx.MRI(mask).apply(jnp.asarray(x)), kspace, atol=1e-13)


@pytest.mark.parametrize("name", ["downsample", "mri_random"])
def test_measurement_noise_std(name):
    """measure - apply is N(0, sigma_y^2) per real coordinate (real and imaginary parts independent)."""
    op, x_shape = CASES[name]
    x = jr.normal(jr.key(0), x_shape)
    keys = jr.split(jr.key(1), 400)
    noise = jax.vmap(op.measure, (0, None))(keys, x) - op.apply(x)
    parts = [noise.real, noise.imag] if jnp.iscomplexobj(noise) else [noise]
    for part in parts:
        z = np.asarray(part).ravel() / op.sigma_y
        n = z.size
        # 5 standard errors: mean (1/sqrt n), variance (sqrt(2/n)) of n iid N(0, 1) values.
        assert abs(z.mean()) < 5 / np.sqrt(n)
        assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    if len(parts) == 2:
        corr = np.mean(np.asarray(parts[0]) * np.asarray(parts[1])) / op.sigma_y**2
        assert abs(corr) < 5 / np.sqrt(parts[0].size)
    np.testing.assert_array_equal(op.measure(keys[0], x), op.measure(keys[0], x))
    assert not np.allclose(op.measure(keys[0], x), op.measure(keys[1], x))


@pytest.mark.parametrize("name", NOISY)
def test_log_likelihood_and_its_gradient(name):
    op, x_shape = CASES[name]
    x, _ = random_pair(op, x_shape, 0)
    y = op.measure(jr.key(9), jr.normal(jr.key(8), x_shape))
    r = y - op.apply(x)
    expected = -np.sum(np.abs(np.asarray(r)) ** 2) / (2 * op.sigma_y**2)
    np.testing.assert_allclose(op.log_likelihood(x, y), expected, rtol=1e-12)
    np.testing.assert_allclose(op.residual(x, y), r, atol=0)
    grad = jax.grad(op.log_likelihood)(x, y)
    np.testing.assert_allclose(grad, op.adjoint(r) / op.sigma_y**2, rtol=1e-10, atol=1e-10)


def test_latent_operator():
    mri, _ = CASES["mri_random"]
    W = jnp.asarray(_rng.normal(size=(48, 3)))

    def decoder(z):
        return jnp.tanh(W @ z).reshape(6, 8)

    op = dx.LatentOperator(mri, decoder)
    assert op.sigma_y == mri.sigma_y and dx.LatentOperator(mri, decoder, 0.5).sigma_y == 0.5
    assert op.y_shape((3,)) == (6, 8)
    z = jnp.asarray(_rng.normal(size=3))
    np.testing.assert_array_equal(op.apply(z), mri.apply(decoder(z)))
    v = jnp.asarray(_rng.normal(size=(6, 8)) + 1j * _rng.normal(size=(6, 8)))
    # J_D(z)^T A^T v with J_D = diag(1 - tanh^2(W z)) W.
    expected = W.T @ ((1 - jnp.tanh(W @ z) ** 2) * mri.adjoint(v).ravel())
    np.testing.assert_allclose(op.vjp(z, v), expected, rtol=1e-12, atol=1e-14)
    y = op.measure(jr.key(0), jnp.zeros(3))
    grad = jax.grad(op.log_likelihood)(z, y)
    np.testing.assert_allclose(grad, op.vjp(z, y - op.apply(z)) / op.sigma_y**2, rtol=1e-10)
    assert not hasattr(op, "adjoint")  # nonlinear: vjp only


def test_helpers():
    box = dx.box_mask((2, 6, 8), 1, 2, 3, 4)
    assert box.dtype == bool and int((~box).sum()) == 2 * 3 * 4 and not box[:, 1:4, 2:6].any()
    n = 100_000
    keep = float(dx.random_mask(jr.key(0), (n,), 0.3).mean())
    assert abs(keep - 0.3) < 5 * np.sqrt(0.3 * 0.7 / n)
    lines = dx.kspace_line_mask(jr.key(0), (10, 7), 5, 3)
    rows = np.asarray(lines[:, 0])
    assert lines.shape == (10, 7) and (lines == rows[:, None]).all() and rows.sum() == 5
    assert rows[[9, 0, 1]].all()  # the 3 lowest frequencies: -1, 0, +1
    others = {tuple(np.asarray(dx.kspace_line_mask(jr.key(k), 10, 5, 3)[:, 0])) for k in range(8)}
    assert len(others) > 1
    g = np.asarray(dx.gaussian_kernel(21, 2.0))
    r = np.arange(21) - 10
    assert abs(g.sum() - 1) < 1e-12 and np.allclose(g, g.T) and np.allclose(g, g[::-1])
    np.testing.assert_allclose((g.sum(1) * r**2).sum(), 4.0, rtol=1e-5)  # variance std^2 (tail < 1e-6)
    for intensity in (0.0, 0.5, 1.0):
        k = np.asarray(dx.motion_kernel(jr.key(3), 15, intensity))
        assert k.shape == (15, 15) and (k >= 0).all() and abs(k.sum() - 1) < 1e-12
    # intensity 0: a straight segment; bilinear splatting spreads at most 1/4 variance across it.
    k = np.asarray(dx.motion_kernel(jr.key(3), 15, 0.0))
    ij = np.stack(np.meshgrid(np.arange(15), np.arange(15), indexing="ij"), -1).reshape(-1, 2)
    mean = k.ravel() @ ij
    cov = (k.ravel()[:, None] * (ij - mean)).T @ (ij - mean)
    assert np.linalg.eigvalsh(cov)[0] <= 0.25 + 1e-12 and np.linalg.eigvalsh(cov)[1] > 10


def test_bad_inputs():
    x = jnp.zeros((2, 6, 8))
    with pytest.raises(
        ValueError, match=r"mask of shape \(6, 8\) does not fit a signal of shape \(2, 8, 6\)"
    ):
        dx.Inpainting(np.ones((6, 8))).apply(jnp.zeros((2, 8, 6)))
    with pytest.raises(ValueError, match="Inpainting mask must be boolean or hold only 0 and 1"):
        dx.Inpainting(np.full((6, 8), 0.5))
    with pytest.raises(ValueError, match=r"MRI mask of shape \(6, 8\) does not fit"):
        dx.MRI(np.ones((6, 8))).apply(jnp.zeros((8, 8)))
    with pytest.raises(ValueError, match="MRI mask needs at least the two k-space axes"):
        dx.MRI(np.ones(8))
    with pytest.raises(ValueError, match=r"Blur kernel of shape \(7, 3\) is larger than the image"):
        dx.Blur(np.ones((7, 3))).apply(x)
    with pytest.raises(ValueError, match="Downsampling factor 4 must divide the last two axes"):
        dx.Downsampling(4).apply(x)
    with pytest.raises(ValueError, match="Downsampling factor must be a positive integer"):
        dx.Downsampling(0)
    A = dx.Matrix(np.ones((3, 5)))
    with pytest.raises(ValueError, match=r"needs x of shape \(5,\); got \(4,\)"):
        A.apply(jnp.zeros(4))
    with pytest.raises(ValueError, match=r"needs y of shape \(3,\); got \(5,\)"):
        A.adjoint(jnp.zeros(5))
    op = dx.Downsampling(2, 0.1)
    with pytest.raises(ValueError, match=r"y has shape \(2, 6, 8\) but the operator maps x of shape"):
        op.log_likelihood(x, x)
    with pytest.raises(ValueError, match="log_likelihood needs sigma_y > 0"):
        dx.Downsampling(2).log_likelihood(x, jnp.zeros((2, 3, 4)))
    with pytest.raises(Exception, match="log_likelihood needs sigma_y > 0"):  # traced sigma_y: eqx.error_if
        eqx.filter_jit(lambda op: op.log_likelihood(x, jnp.zeros((2, 3, 4))))(
            dx.Downsampling(2, 0.0 * x[0, 0, 0])
        )
    for make in (
        lambda s: dx.Inpainting(np.ones((6, 8)), s),
        lambda s: dx.Downsampling(2, s),
        lambda s: dx.Blur(np.ones((3, 3)), s),
        lambda s: dx.MRI(np.ones((6, 8)), s),
        lambda s: dx.Matrix(np.ones((3, 5)), s),
        lambda s: dx.LatentOperator(dx.Downsampling(2), lambda z: z, s),
    ):
        with pytest.raises(ValueError, match=r"sigma_y must be >= 0 \(0 means noiseless\); got sigma_y=-0.1"):
            make(-0.1)
    # A non-scalar sigma_y: the runtime type check (tests) or __check_init__ (without it) refuses it.
    with pytest.raises((TypeError, ValueError), match="sigma_y"):
        dx.Downsampling(2, jnp.ones(3))
    with pytest.raises(ValueError, match="box_mask: the box"):
        dx.box_mask((6, 8), 4, 0, 3, 2)
    with pytest.raises(ValueError, match="keep_fraction must be in"):
        dx.random_mask(jr.key(0), (6, 8), 1.5)
    with pytest.raises(ValueError, match="center_lines <= n_lines <= H"):
        dx.kspace_line_mask(jr.key(0), 8, 9, 2)
    with pytest.raises(ValueError, match="gaussian_kernel needs size >= 1 and std > 0"):
        dx.gaussian_kernel(5, 0.0)
    with pytest.raises(ValueError, match=r"motion_kernel needs size >= 2 and intensity in \[0, 1\]"):
        dx.motion_kernel(jr.key(0), 9, 2.0)
