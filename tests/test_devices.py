"""A group split over 4 (forced host) devices gives the results of 1 device."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxlasp.parallel.devices import device_mesh, pad_rows

N_SPECTRA = 10
"""Not a multiple of 4: the sharded run pads the group."""

SCRIPT = textwrap.dedent(f"""
    import sys
    import jax
    import numpy as np
    import jaxlasp
    from jaxlasp.api import DEMO_MODEL, fit_arrays, load_model
    from jaxlasp.mock import draw_parameters, simulate

    assert len(jax.devices()) == 4, jax.devices()
    emulator = load_model(DEMO_MODEL)
    truth = draw_parameters({N_SPECTRA}, seed=5, domain=emulator.domain)
    mock = simulate(emulator, truth, snr=30.0, seed=6, cosmic_rays=2)
    out = {{}}
    for name, start, clean in (("global", "global", False), ("fixed_clean", (5500, 4, 0), True)):
        for devices in (1, 4):
            table = fit_arrays(mock.flux, emulator, weights=mock.weights, start=start,
                               errors="laplace", clean=clean, devices=devices)
            for column in ("rv", "rv_err", "teff", "teff_err", "logg", "logg_err", "feh",
                           "feh_err", "flags", "converged", "n_clean"):
                out[f"{{name}}-{{devices}}-{{column}}"] = np.asarray(table[column])
    np.savez(sys.argv[1], **out)
""")


@pytest.fixture(scope="module")
def four_device_run(tmp_path_factory):
    result = tmp_path_factory.mktemp("devices") / "results.npz"
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    env = {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(result)], env=env,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(result) as data:
        return dict(data)


@pytest.mark.slow
@pytest.mark.parametrize("run", ["global", "fixed_clean"])
def test_four_devices_agree_with_one(four_device_run, run):
    one = {k.split("-")[-1]: v for k, v in four_device_run.items() if k.startswith(f"{run}-1-")}
    four = {k.split("-")[-1]: v for k, v in four_device_run.items() if k.startswith(f"{run}-4-")}
    assert len(one["teff"]) == len(four["teff"]) == N_SPECTRA
    for name in ("flags", "converged", "n_clean"):
        np.testing.assert_array_equal(four[name], one[name], err_msg=name)
    ok = one["converged"]  # failed fits (e.g. degenerate: errors meaningless) are only flagged
    assert np.mean(ok) >= 0.7  # no Clean on spectra with cosmic rays: a few fits fail (flagged)
    for name, box_width in (("rv", 2070.0), ("teff", 27000.0), ("logg", 5.9), ("feh", 3.5)):
        assert np.all(one[f"{name}_err"][ok] < box_width), f"converged with a huge {name} error"
    for name in ("rv", "teff", "logg", "feh"):
        error = one[f"{name}_err"][ok]
        assert np.all(np.abs(four[name][ok] - one[name][ok]) <= 1e-3 * error), name
        np.testing.assert_allclose(four[f"{name}_err"][ok], error, rtol=1e-4, err_msg=name)


def test_more_devices_than_exist_is_a_clear_error():
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        device_mesh(len(jax.local_devices()) + 1)
    with pytest.raises(ValueError):
        device_mesh(0)


@given(rows=st.integers(1, 20), multiple=st.integers(1, 8))
def test_pad_rows_repeats_the_first_row_to_a_multiple(rows, multiple):
    array = jnp.arange(rows * 3.0).reshape(rows, 3)
    padded = np.asarray(pad_rows(array, multiple))
    assert len(padded) % multiple == 0 and len(padded) - rows < multiple
    np.testing.assert_array_equal(padded[:rows], array)
    np.testing.assert_array_equal(padded[rows:], np.broadcast_to(array[0], padded[rows:].shape))
