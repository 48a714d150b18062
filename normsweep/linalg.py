"""Matrix norms recorded during training.

Frobenius norms are exact. The spectral norm ‖W‖₂ (largest singular value)
of a matrix whose smaller side has at most `EXACT_MAX` entries is the square
root of the top eigenvalue of its small Gram matrix (exact, cheap: the input
layer d×m and the readout m×k of the reference setting). Larger matrices use
Lanczos on WᵀW, started from the top Ritz vector of the previous record, so
a few steps per record suffice; the first record's vector comes from a cold
start with more steps. No full SVD is ever taken.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

EXACT_MAX = 64
SQUARINGS = 24
UNROLL = 8          # loop bodies per trip of the small spectral loops (see _unroll)
HIGHEST = jax.lax.Precision.HIGHEST


def inner(a: jax.Array, b: jax.Array) -> jax.Array:
    """⟨a, b⟩ over all entries."""
    return jnp.vdot(a, b, precision=HIGHEST)


def sum_squares(w: jax.Array) -> jax.Array:
    return jnp.sum(jnp.square(w))


def frobenius(w: jax.Array) -> jax.Array:
    return jnp.sqrt(sum_squares(w))


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b in full float32 (matrices or a matrix and a vector)."""
    return jnp.matmul(a, b, precision=HIGHEST)


def uses_lanczos(shape: tuple[int, int]) -> bool:
    return min(shape) > EXACT_MAX


def _unroll(trips: int) -> int:
    """Bodies per trip of the small spectral loops (Lanczos' steps, the
    squarings): UNROLL on an accelerator, where each trip of a rolled loop
    costs a host round trip; none on a CPU, where unrolling only lengthened
    the compilation (BENCHMARKS.md). Fewer than 2·UNROLL trips are unrolled
    whole: UNROLL bodies and the remainder would be as many copies, plus a loop."""
    if jax.default_backend() == "cpu":
        return 1
    return accelerator_unroll(trips)


def accelerator_unroll(trips: int) -> int:
    """`_unroll` on an accelerator (the benchmark counts a GPU's kernels
    with it on a CPU)."""
    return trips if trips < 2 * UNROLL else UNROLL


def top_eigenvalue_psd(gram: jax.Array, squarings: int = SQUARINGS, rolled: bool = False
                       ) -> jax.Array:
    """The largest eigenvalue of a symmetric positive semi-definite matrix.

    G^(2^s), renormalised as it is squared, is (to rounding) the projector
    on the top eigenvectors of G whenever λ₂/λ₁ < 1 − 2^-s; its largest column
    is then a top eigenvector v, and λ₁ = vᵀGv (a Rayleigh quotient, whose
    error is quadratic in the error of v; for a near-tie λ₁ ≈ λ₂ any mix of
    the two gives λ₁ to within the tie). Pure XLA: LAPACK's eigvalsh, called
    from inside the training loop, can deadlock the CPU runtime. The loop is
    unrolled on an accelerator (`_unroll`); `rolled` keeps it rolled on every
    backend, for what runs rarely (a cold start, a probe), where unrolled
    copies would only lengthen the compilation.
    """
    return top_eigenpair_psd(gram, squarings, rolled)[0]


def top_eigenpair_psd(gram: jax.Array, squarings: int = SQUARINGS, rolled: bool = False
                      ) -> tuple[jax.Array, jax.Array]:
    """(λ₁, v): `top_eigenvalue_psd` and its eigenvector v (not normalised;
    zero for G = 0)."""
    def square_twice(_, a):
        # a power-of-two rescale is exact: once per two squarings gives the
        # values of one per squaring, and the entries stay below size³ between
        square = matmul(a, a)
        return _rescale(matmul(square, square))

    a = _rescale(gram)
    if squarings % 2:
        a = _rescale(matmul(a, a))
    a = jax.lax.fori_loop(0, squarings // 2, square_twice, a,
                          unroll=1 if rolled else max(1, _unroll(squarings) // 2))
    v = a[:, jnp.argmax(jnp.sum(jnp.square(a), axis=0))]
    norm = sum_squares(v)
    return inner(v, matmul(gram, v)) / jnp.where(norm > 0, norm, 1), v


def _rescale(a: jax.Array) -> jax.Array:
    """a times the power of two that brings max|a| into [0.5, 1): exact, and
    safe from overflow over the squarings."""
    _, exponent = jnp.frexp(jnp.max(jnp.abs(a)))
    return a * jnp.ldexp(jnp.ones((), a.dtype), -exponent)


def extreme_eigenvalues_psd(gram: jax.Array, rolled: bool = False
                            ) -> tuple[jax.Array, jax.Array]:
    """(λ_max, λ_min) of a symmetric PSD matrix: λ_min = λ_max − λ_max(λ_max·I − G).
    λ_min carries an absolute error of a few ulp of λ_max."""
    top = top_eigenvalue_psd(gram, rolled=rolled)
    shifted = top * jnp.eye(gram.shape[0], dtype=gram.dtype) - gram
    return top, jnp.maximum(top - top_eigenvalue_psd(shifted, rolled=rolled), 0.0)


def spectral_exact(w: jax.Array, squarings: int = SQUARINGS, rolled: bool = False
                   ) -> jax.Array:
    """‖W‖₂ = √λ_max of the Gram matrix of the smaller side of W."""
    p, q = w.shape
    gram = matmul(w, w.T) if p <= q else matmul(w.T, w)
    return jnp.sqrt(jnp.maximum(top_eigenvalue_psd(gram, squarings, rolled), 0.0))


def krylov_dim(shape: tuple[int, int]) -> int:
    """The most Lanczos steps on WᵀW that can add a direction, for W of `shape`
    (p, q): the Krylov space of a q×q matrix of rank ≤ p has at most
    min(q, p + 1) dimensions (the +1: a start vector's part in WᵀW's null
    space). A step past it orthogonalises pure rounding noise against a
    complete basis and corrupts the tridiagonal matrix."""
    p, q = shape
    return min(q, p + 1)


def lanczos(w: jax.Array, v: jax.Array, steps: int, rolled: bool = False, trips=None
            ) -> tuple[jax.Array, jax.Array]:
    """Up to `steps` Lanczos steps on WᵀW from `v` (unit, length fan_out).

    Returns (‖Wu‖, u) with u the top Ritz vector of the Krylov space
    span{v, WᵀWv, …, (WᵀW)^(k−1) v}, k = min(steps, `krylov_dim`): a lower
    bound on ‖W‖₂, the best one in that space, which holds power
    iteration's own iterate for the same products. Where the top singular
    values are close (a random matrix's bulk edge, or a new direction growing
    out of it during training), power iteration's error falls like
    (σ₂/σ₁)^(2k) and Lanczos' like a Chebyshev polynomial's in √(gap). The
    basis is reorthogonalised in full (twice, classical Gram–Schmidt); a step
    whose new direction is lost in rounding (an invariant subspace: the
    space is exhausted) ends the recursion, and T's top eigenpair comes from
    `top_eigenpair_psd`. The value returned is ‖Wu‖ itself, a lower bound
    whatever the rounding in T. For W = 0 it returns (0, v).

    `rolled` keeps the loop rolled on every backend (a cold start runs once
    per cohort: unrolled copies would only lengthen the compilation).
    `trips` (traced, optional) runs only the first min(trips, k) steps of
    the same program: one compiled program checks every step count.
    """
    basis, tri = lanczos_basis(w, v, steps, rolled, trips)
    return ritz(w, v, basis, top_eigenpair_psd(tri, rolled=rolled)[1])


def lanczos_basis(w: jax.Array, v: jax.Array, steps: int, rolled: bool = False, trips=None
                  ) -> tuple[jax.Array, jax.Array]:
    """`lanczos`' recursion: (the basis (size, fan_out), the tridiagonal
    T (size, size)), size = min(steps, `krylov_dim`), the rows and columns
    past the steps taken zero."""
    n = v.shape[0]
    size = min(steps, krylov_dim(w.shape))
    tol = n * jnp.finfo(v.dtype).eps

    def body(j, carry):
        basis, coeffs, q = carry          # coeffs: T's diagonal α and off-diagonal β
        basis = basis.at[j].set(q)
        z = matmul(w.T, matmul(w, q))
        c = matmul(basis, z)                       # ⟨q_i, z⟩ for i ≤ j, 0 above
        z = z - matmul(basis.T, c)
        z = z - matmul(basis.T, matmul(basis, z))  # twice is enough
        b = frobenius(z)
        # breakdown: what is left of z is rounding, not a new direction (‖z‖
        # before the projections is √(‖c‖² + b²), the basis being orthonormal)
        b = jnp.where(b > tol * jnp.sqrt(sum_squares(c) + b * b), b, 0)
        q = jnp.where(b > 0, z / jnp.where(b > 0, b, 1), 0)
        return basis, coeffs.at[:, j].set(jnp.stack([c[j], b])), q

    init = (jnp.zeros((size, n), v.dtype), jnp.zeros((2, size), v.dtype), v)
    if trips is None:
        k = size
        carry = jax.lax.fori_loop(0, size, body, init, unroll=1 if rolled else _unroll(size))
    else:
        k = jnp.minimum(trips, size)
        carry = jax.lax.fori_loop(0, k, body, init)
    basis, (alpha, beta), _ = carry
    # T is k×k: the last step's β couples to no basis vector
    off = jnp.diag(jnp.where(jnp.arange(size - 1) < k - 1, beta[:-1], 0), 1)
    return basis, jnp.diag(alpha) + off + off.T


def ritz(w: jax.Array, v: jax.Array, basis: jax.Array, y: jax.Array
         ) -> tuple[jax.Array, jax.Array]:
    """(‖Wu‖, u) for the Ritz vector u = basisᵀy of T's top eigenvector y
    (`lanczos`); `v` where u vanishes."""
    u = matmul(basis.T, y)
    norm = frobenius(u)
    u = jnp.where(norm > 0, u / jnp.where(norm > 0, norm, 1), v)
    return frobenius(matmul(w, u)), u


def spectral(w: jax.Array, v: jax.Array, iters: int, rolled: bool = False
             ) -> tuple[jax.Array, jax.Array]:
    """‖W‖₂ and the warm-start vector for the next call (see module doc;
    `rolled`: see `lanczos`)."""
    if uses_lanczos(w.shape):
        return lanczos(w, v, iters, rolled)
    return spectral_exact(w), v


def spectral_norms(ws: list[jax.Array], vs: list[jax.Array], iters: int, rolled: bool = False,
                   present: list | None = None) -> tuple[list[jax.Array], list[jax.Array]]:
    """`spectral` of every (W, v) pair, solved together: the Lanczos
    recursions of the matrices of one shape in one loop over them (compiled
    once, whatever the depth), then every small eigenproblem (the Gram
    matrices of the exact matrices and Lanczos' tridiagonal T's, zero-padded
    within a factor 2 of one size, `size_buckets`) in one batched
    `top_eigenpair_psd` per bucket. A record's spectral norms then compile
    to a few sets of kernels instead of one set per matrix, which on an
    accelerator was most of a program's kernels (BENCHMARKS.md). Zero
    padding leaves a PSD matrix's top eigenpair as it is, so the values are
    `spectral`'s to rounding (tested). `rolled`: every loop stays rolled
    (see `lanczos`). `present`: per matrix None, or a traced flag: where
    it is false the matrix is zero (a layer the network lacks) and its
    Lanczos recursion is skipped, its norm 0 and its vector unchanged."""
    present = present or [None] * len(ws)
    shapes: dict[tuple[int, int], list[int]] = {}
    for i, w in enumerate(ws):
        shapes.setdefault(w.shape, []).append(i)
    small, finish = [], []          # the small PSD matrices; how to finish each group
    for shape, idx in shapes.items():
        if uses_lanczos(shape):
            # a loop over the matrices, compiled once for any depth (not
            # vmap: batched matrix-vector products were slower, BENCHMARKS.md)
            w, v = jnp.stack([ws[i] for i in idx]), jnp.stack([vs[i] for i in idx])
            if all(present[i] is None for i in idx):
                basis, tri = jax.lax.map(lambda a: lanczos_basis(*a, iters, rolled), (w, v))
            else:
                flags = jnp.stack([jnp.asarray(True) if present[i] is None else present[i]
                                   for i in idx])
                size = min(iters, krylov_dim(shape))

                def one(a, size=size):
                    w, v, on = a
                    return jax.lax.cond(on, lambda w, v: lanczos_basis(w, v, iters, rolled),
                                        lambda w, v: (jnp.zeros((size, v.shape[0]), v.dtype),
                                                      jnp.zeros((size, size), v.dtype)), w, v)

                basis, tri = jax.lax.map(one, (w, v, flags))
            small.append(tri)
            finish.append((idx, (w, v, basis)))
        else:
            p, q = shape
            small.append(jnp.stack([matmul(ws[i], ws[i].T) if p <= q else matmul(ws[i].T, ws[i])
                                    for i in idx]))
            finish.append((idx, None))
    solved = [None] * len(small)        # (λ, eigenvectors) of each group of `small`
    for bucket in size_buckets([a.shape[-1] for a in small]):
        size = small[bucket[0]].shape[-1]
        padded = jnp.concatenate([jnp.pad(small[g], ((0, 0), (0, size - small[g].shape[-1]),
                                                     (0, size - small[g].shape[-1])))
                                  for g in bucket])
        lam, vec = jax.vmap(lambda g: top_eigenpair_psd(g, rolled=rolled))(padded)
        start = 0
        for g in bucket:
            count = small[g].shape[0]
            solved[g] = lam[start:start + count], vec[start:start + count]
            start += count
    norms, vectors = [None] * len(ws), list(vs)
    for (idx, lanczos_group), a, (lam, vec) in zip(finish, small, solved):
        if lanczos_group is None:
            values = jnp.sqrt(jnp.maximum(lam, 0.0))
        else:
            values, us = jax.lax.map(lambda a: ritz(*a), (*lanczos_group, vec[:, :a.shape[-1]]))
        for j, i in enumerate(idx):
            norms[i] = values[j]
            if lanczos_group is not None:
                vectors[i] = us[j]
    return norms, vectors


def size_buckets(sizes: list[int]) -> list[list[int]]:
    """The indices of `sizes` grouped for one batched eigensolve each,
    largest first: a group takes every size down to half its largest, so
    zero padding costs at most 8× a problem's own matmuls (padded to a
    width-64 hidden layer's Gram, the input layer's 16×16 and the
    readout's 10×10 would cost 64 and 262 times theirs)."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    buckets: list[list[int]] = []
    for i in order:
        if buckets and 2 * sizes[i] >= sizes[buckets[-1][0]]:
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return buckets
