"""Traced programs kept on disk (``jaxlasp.compile_cache.program``): the same results as
``jax.jit``, loaded without tracing by a later run, rebuilt when their file is damaged."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlasp import compile_cache
from jaxlasp.compile_cache import program

traces = []


def scaled_sum(x, scale, power: int = 1):
    traces.append(x.shape)  # runs only while JAX traces
    return {"total": jnp.sum(x**power) * scale, "shape": jnp.asarray(x.shape)}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setattr(compile_cache, "_programs_folder", tmp_path / "programs")
    traces.clear()
    return tmp_path / "programs"


def test_same_results_as_jit_and_kept_per_shape_and_static_argument(folder):
    x = jnp.arange(6.0)
    kept = program(scaled_sum, static_argnames="power")
    out = kept(x, 2.0, power=2)
    expected = jax.jit(scaled_sum, static_argnames="power")(x, 2.0, power=2)
    assert float(out["total"]) == float(expected["total"]) == 110.0
    np.testing.assert_array_equal(out["shape"], [6])
    kept(x, 3.0, power=2)              # another value: the same program
    kept(x[:4], 2.0, power=2)          # another shape
    kept(x, 2.0, 3)                    # another static argument, given by position
    assert len(list(folder.glob("scaled_sum-*.jaxprog"))) == 3


def test_a_later_run_loads_the_program_without_tracing(folder):
    x = jnp.linspace(0.0, 1.0, 5)
    first = program(scaled_sum)(x, 2.0)
    traced = len(traces)
    again = program(scaled_sum)(x, 2.0)  # a new process would start from the file the same way
    assert len(traces) == traced
    assert float(again["total"]) == float(first["total"])


def test_a_damaged_program_file_is_exported_again(folder):
    x = jnp.ones(3)
    program(scaled_sum)(x, 1.0)
    (path,) = folder.glob("scaled_sum-*.jaxprog")
    path.write_bytes(b"not a program")
    assert float(program(scaled_sum)(x, 1.0)["total"]) == 3.0
    assert path.read_bytes() != b"not a program"


def test_inside_another_jitted_function_it_is_plain_jit(folder):
    kept = program(scaled_sum)
    total = jax.jit(lambda x: kept(x, 2.0)["total"])(jnp.ones(4))
    assert float(total) == 8.0
    assert not folder.exists()


def test_with_the_cache_off_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(compile_cache, "_programs_folder", None)
    assert float(program(scaled_sum)(jnp.ones(2), 1.0)["total"]) == 2.0
    assert not any(tmp_path.iterdir())
