"""Routing tables: the disk cache (round trip, corruption, concurrent writers, off switch) and the
windowed pgf product against plain polynomial multiplication."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from moesim.cost.routing import cache as disk_cache
from moesim.cost.routing import routing_stats, stats, zipf
from moesim.cost.routing.loads import _coef_product

SHAPE = dict(top_k=2, num_experts=16, ep=4, block_m=8)
TOKENS = np.array([1.0, 7.0, 40.0, 300.0])


def _fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("MOESIM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(stats, "_TABLES", {})
    monkeypatch.setattr(stats, "_MODELS", {})


def _run(dist):
    return routing_stats(TOKENS, dist=dist, **SHAPE).as_dict()


def test_tables_round_trip_through_disk(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    first = _run(zipf(1.2))
    files = sorted((tmp_path / "routing").glob("*.npz"))
    assert len(files) == 2  # the load table and its padding/drop columns
    _fresh(monkeypatch, tmp_path)

    def no_build(*args, **kwargs):
        raise AssertionError("table rebuilt although it was on disk")

    monkeypatch.setattr(stats, "build_table", no_build)
    second = _run(zipf(1.2))
    for name, value in first.items():
        np.testing.assert_array_equal(second[name], value, err_msg=name)


def test_corrupt_or_foreign_files_are_rebuilt(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    good = _run(zipf(0.9))
    files = sorted((tmp_path / "routing").glob("*.npz"))
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated
    files[1].write_bytes(b"not an npz at all")
    _fresh(monkeypatch, tmp_path)
    again = _run(zipf(0.9))
    for name, value in good.items():
        np.testing.assert_allclose(again[name], value, rtol=0, atol=0, err_msg=name)
    for path in files:  # rewritten whole
        with np.load(path) as data:
            assert "_key" in data.files


def test_a_file_for_another_key_is_not_used(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    disk_cache.store(("a",), {"x": np.arange(3.0)})
    path_a = disk_cache._path(("a",))
    path_b = disk_cache._path(("b",))
    path_b.write_bytes(path_a.read_bytes())  # right format, wrong key
    assert disk_cache.load(("b",), ("x",)) is None
    assert disk_cache.load(("a",), ("y",)) is None  # wrong columns
    np.testing.assert_array_equal(disk_cache.load(("a",), ("x",))["x"], np.arange(3.0))


def test_concurrent_writers_leave_one_whole_file(monkeypatch, tmp_path):
    monkeypatch.setenv("MOESIM_CACHE_DIR", str(tmp_path))
    table = {"x": np.linspace(0, 1, 50_000), "y": np.ones(50_000)}
    errors = []

    def write():
        try:
            for _ in range(5):
                disk_cache.store(("shared",), table)
                got = disk_cache.load(("shared",), ("x", "y"))
                if got is not None:
                    np.testing.assert_array_equal(got["x"], table["x"])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [p.name for p in (tmp_path / "routing").iterdir()] == [
        disk_cache._path(("shared",)).name
    ]  # no temporary files left behind


def test_cache_off_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _fresh(monkeypatch, tmp_path)
    monkeypatch.setenv("MOESIM_CACHE_DIR", "off")
    assert disk_cache.cache_dir() is None
    _run(zipf(1.1))
    assert not list(tmp_path.rglob("*.npz"))


def test_default_folder_is_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("MOESIM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = disk_cache.cache_dir()
    assert folder.name == "routing" and "moesim" in folder.parts


def _naive_coef(pmf, m, N):
    """[z^N] Π_g Σ_{j<m} pmf_gj z^j by polynomial multiplication (no FFT, no windows)."""
    out = []
    for threshold in m:
        poly = np.array([1.0])
        for f in pmf:
            poly = np.convolve(poly, f[:threshold])
        out.append(poly[N] if N < poly.size else 0.0)
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_windowed_product_matches_polynomial_multiplication(seed):
    rng = np.random.default_rng(seed)
    G, N = 5, 60
    pmf = np.zeros((G, N + 1))
    for g in range(G):  # counts on narrow, different supports, as GPUs with unequal load have
        lo, width = rng.integers(0, 15), rng.integers(3, 30)
        pmf[g, lo : lo + width] = rng.random(width)
        pmf[g] /= pmf[g].sum()
    m = np.concatenate([np.arange(1, N + 1), [N + 1]])
    np.testing.assert_allclose(_coef_product(pmf, m, N), _naive_coef(pmf, m, N), atol=1e-13)
