"""A cohort sharded across several (forced CPU) devices equals a one-device run
to rounding."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CODE = """
import numpy as np, jax, jax.numpy as jnp
assert len(jax.devices()) == 2, jax.devices()
from normsweep import train, plan
from normsweep.data import member_keys, sphere_data
from tests import equal
x, y = sphere_data(jax.random.key(1), 40, 6, 3, jnp.float32)
lrs = np.array([0.02, 0.05, 1e3])            # odd count: padded; one member diverges
ik, pk = member_keys(np.array([0, 1, 2]))
steps = plan.record_steps(25, "log")
mesh = train.member_mesh(2)
assert mesh is not None and mesh.devices.size == 2
prog = train.Program(dims=(6, 16, 16, 3), output="linear")
one = train.train_members(prog, x, y, lrs, ik, pk, steps, True, devices=1)
two = train.train_members(prog, x, y, lrs, ik, pk, steps, True, devices=2)
for k in one.records:
    equal.assert_record_close(two.records[k], one.records[k], k)
np.testing.assert_array_equal(one.diverged_at, two.diverged_at)
assert one.diverged_at[2] >= 0 and one.diverged_at[0] == -1
for a, b in zip(one.final, two.final):
    equal.assert_record_close(b, a, "final weights")
print("ok")
"""


def test_sharded_equals_unsharded():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         timeout=600, env=env, cwd=ROOT)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
