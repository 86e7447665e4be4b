"""The retained heap: inside it, a batch's large blocks come back without page faults; when it ends, the memory goes back."""

from __future__ import annotations

import os
import resource

import pytest
import torch

from core import memory
from core.memory import retained_heap

pytestmark = pytest.mark.skipif(memory._LIBC is None, reason="the retained heap acts on glibc only")

_BLOCK = 64 * 2**20  # above glibc's largest mmap threshold (32 MiB), like a CNN's activations on a batch
_PAGES = _BLOCK // resource.getpagesize()


def faults_of_a_later_block() -> int:
    """Page faults of writing a large block after equal blocks were written and freed (a scan's later batches).

    The fewest of a few: glibc reaches its steady state for aligned blocks after a few rounds.
    """
    counts = []
    for round_number in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(_BLOCK // 4)
        if round_number >= 3:
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return min(counts)


def resident_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def test_freed_blocks_are_reused_inside_and_returned_when_it_ends():
    with retained_heap():
        assert faults_of_a_later_block() < _PAGES // 20
        holding = resident_bytes()
    assert holding - resident_bytes() > _BLOCK // 2


def test_nested_uses_keep_the_heap_until_the_outermost_ends():
    with retained_heap():
        with retained_heap():
            faults_of_a_later_block()
        assert faults_of_a_later_block() < _PAGES // 20
        holding = resident_bytes()
    assert holding - resident_bytes() > _BLOCK // 2
