"""Matrix norms recorded during training.

Frobenius norms are exact. The spectral norm ‖W‖₂ (largest singular value)
of a matrix whose smaller side has at most `EXACT_MAX` entries is the square
root of the top eigenvalue of its small Gram matrix (exact, cheap: the input
layer d×m and the readout m×k of the reference setting). Larger matrices use
power iteration on WᵀW, warm-started from the vector the previous record
converged to, so a few iterations per record suffice; the first record is a
cold start with more iterations. No full SVD is ever taken.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

EXACT_MAX = 64
SQUARINGS = 24
UNROLL = 8          # loop bodies per trip of the small spectral loops (see top_eigenvalue_psd)
HIGHEST = jax.lax.Precision.HIGHEST


# -- sums in a fixed order ------------------------------------------------------
# A reduction's order, and whether LLVM fuses a product into the add that
# consumes it (an FMA, which skips the product's rounding), depend on how XLA
# fused and vectorised the loop, and so on the batch size: the last bits of a
# vmapped Σ x could depend on how many members a cohort has, and so on the
# chunking. A pairwise tree of elementwise adds over `rounded` products has
# one result whatever the batch. Every sum in a record is such a tree, so with
# per-member matmuls of fixed shape (train.per_member) every record is
# bit-identical across member counts (tested).

def tree_sum(x: jax.Array) -> jax.Array:
    """Σ over the last axis, as a pairwise tree of elementwise adds (zero-padded
    to a power of two)."""
    n = x.shape[-1]
    size = 1 << max(0, (n - 1).bit_length())
    if size != n:
        x = jnp.concatenate([x, jnp.zeros(x.shape[:-1] + (size - n,), x.dtype)], -1)
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


def rounded(x: jax.Array) -> jax.Array:
    """x, with each element rounded where the compiler can see it.

    LLVM fuses a product into the add that consumes it (an FMA, which skips
    the product's rounding), and whether it does depends on how XLA fused and
    vectorised the loop, which depends on the batch size. XLA drops an
    `optimization_barrier` before fusion, so the barrier cannot stop this.
    Instead x's bits pass through an integer OR with `x != x`: 0 for every
    number (so the value is unchanged) and 1 for a NaN (which stays a NaN),
    and no compiler can prove it 0, so no add can absorb the multiply.
    """
    ints = jnp.int32 if x.dtype.itemsize == 4 else jnp.int64
    bits = jax.lax.bitcast_convert_type(x, ints) | (x != x).astype(ints)
    return jax.lax.bitcast_convert_type(bits, x.dtype)


def inner(a: jax.Array, b: jax.Array) -> jax.Array:
    """⟨a, b⟩ over all entries, in a fixed order, each product rounded."""
    return tree_sum(rounded(a.reshape(-1) * b.reshape(-1)))


def sum_squares(w: jax.Array) -> jax.Array:
    return inner(w, w)


def frobenius(w: jax.Array) -> jax.Array:
    return jnp.sqrt(sum_squares(w))


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b in full float32 (matrices or a matrix and a vector), in XLA's own
    order: the same for a member's matrices whatever the batch around them
    (measured in context, tested through the records)."""
    return jnp.matmul(a, b, precision=HIGHEST)


def uses_power_iteration(shape: tuple[int, int]) -> bool:
    return min(shape) > EXACT_MAX


def top_eigenvalue_psd(gram: jax.Array, squarings: int = SQUARINGS) -> jax.Array:
    """The largest eigenvalue of a symmetric positive semi-definite matrix.

    G^(2^s), renormalised after each squaring, is (to rounding) the projector
    on the top eigenvectors of G whenever λ₂/λ₁ < 1 − 2^-s; its largest column
    is then a top eigenvector v, and λ₁ = vᵀGv (a Rayleigh quotient, whose
    error is quadratic in the error of v; for a near-tie λ₁ ≈ λ₂ any mix of
    the two gives λ₁ to within the tie). Pure XLA: LAPACK's eigvalsh, called
    from inside the training loop, can deadlock the CPU runtime. The loop is
    unrolled by UNROLL: on a GPU each trip of a rolled loop costs a host round
    trip (on an H100 a rolled loop made a record 3–4× dearer), and unrolling
    by 8 runs as fast as unrolling fully.
    """
    def square(_, a):
        return _rescale(matmul(a, a))

    a = jax.lax.fori_loop(0, squarings, square, _rescale(gram), unroll=min(UNROLL, squarings))
    v = a[:, jnp.argmax(tree_sum(rounded(jnp.square(a.T))))]
    norm = sum_squares(v)
    return inner(v, matmul(gram, v)) / jnp.where(norm > 0, norm, 1)


def _rescale(a: jax.Array) -> jax.Array:
    """a times the power of two that brings max|a| into [0.5, 1): exact, so no
    rewrite of a division can change its bits."""
    _, exponent = jnp.frexp(jnp.max(jnp.abs(a)))
    return a * jnp.ldexp(jnp.ones((), a.dtype), -exponent)


def extreme_eigenvalues_psd(gram: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(λ_max, λ_min) of a symmetric PSD matrix: λ_min = λ_max − λ_max(λ_max·I − G).
    λ_min carries an absolute error of a few ulp of λ_max."""
    top = top_eigenvalue_psd(gram)
    shifted = top * jnp.eye(gram.shape[0], dtype=gram.dtype) - gram
    return top, jnp.maximum(top - top_eigenvalue_psd(shifted), 0.0)


def spectral_exact(w: jax.Array, squarings: int = SQUARINGS) -> jax.Array:
    """‖W‖₂ = √λ_max of the Gram matrix of the smaller side of W."""
    p, q = w.shape
    gram = matmul(w, w.T) if p <= q else matmul(w.T, w)
    return jnp.sqrt(jnp.maximum(top_eigenvalue_psd(gram, squarings), 0.0))


def power_iteration(w: jax.Array, v: jax.Array, iters: int) -> tuple[jax.Array, jax.Array]:
    """`iters` steps of v ← WᵀWv/‖WᵀWv‖ from `v` (unit, length fan_out).

    Returns (‖Wv‖, v): a lower bound on ‖W‖₂ whose error falls with the square
    of the angle between v and the top right singular vector. For W = 0 it
    returns (0, v) unchanged.
    """
    def body(_, v):
        u = matmul(w.T, matmul(w, v))
        n = frobenius(u)
        return jnp.where(n > 0, u / jnp.where(n > 0, n, 1), v)

    v = jax.lax.fori_loop(0, iters, body, v, unroll=min(UNROLL, iters))
    return frobenius(matmul(w, v)), v


def spectral(w: jax.Array, v: jax.Array, iters: int) -> tuple[jax.Array, jax.Array]:
    """‖W‖₂ and the warm-start vector for the next call (see module doc)."""
    if uses_power_iteration(w.shape):
        return power_iteration(w, v, iters)
    return spectral_exact(w), v


def unit_vector(key: jax.Array, size: int, dtype) -> jax.Array:
    v = jax.random.normal(key, (size,), dtype)
    return v / jnp.linalg.norm(v)
