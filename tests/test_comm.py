"""Collectives on the two-level network."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from moesim.cost import comm
from moesim.spec.hardware import load_hardware

NET = comm.Network.from_hardware(load_hardware("h100-sxm"))


def test_allreduce_zero_for_one_gpu():
    assert comm.allreduce_time_s(1e9, 1, NET) == 0.0


@given(st.lists(st.floats(1.0, 1e10), min_size=2, max_size=10), st.sampled_from([2, 4, 8, 16, 64]))
def test_allreduce_monotone_in_bytes(sizes, group):
    t = comm.allreduce_time_s(np.sort(sizes), group, NET)
    assert np.all(np.diff(t) >= 0)


def test_multi_domain_slower_than_single_domain():
    size = 64e6
    one = comm.allreduce_time_s(size, 8, NET)
    two = comm.allreduce_time_s(size, 8, replace(NET, domain_size=4))
    assert two > one
    intra, inter = comm.alltoall_bytes(1024, 3.0, 7168, 16, 8)
    assert comm.alltoall_time_s(intra + inter, 0.0, NET) < comm.alltoall_time_s(intra, inter, NET)


def test_in_switch_reduction_is_faster():
    plain = replace(NET, in_switch_reduction=False, in_switch_speedup=1.0)
    sharp = replace(NET, in_switch_reduction=True, in_switch_speedup=1.7)
    assert comm.allreduce_time_s(256e6, 8, sharp) < comm.allreduce_time_s(256e6, 8, plain)


def test_alltoall_bytes_grow_with_remote_fraction():
    intra0, inter0 = comm.alltoall_bytes(1000, 0.0, 7168, 32, 8)
    assert intra0 == 0 and inter0 == 0
    groups = np.array([2, 8, 16, 32, 64])
    intra, inter = comm.alltoall_bytes(1000, 4.0, 7168, groups, 8)
    share = inter / (intra + inter)
    assert np.allclose(intra + inter, 1000 * 4 * 7168)
    assert np.all(np.diff(share) >= 0) and share[0] == 0 and share[-1] > 0.8
    assert np.allclose(share, comm.remote_domain_fraction(groups, 8))
