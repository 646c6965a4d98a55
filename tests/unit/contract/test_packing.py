"""Zstandard packing (contract.packing): many items packed in one call are the frames packed one by one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from contract.packing import pack, pack_many, unpack


@given(items=st.lists(st.binary(max_size=3000) | st.text(max_size=500).map(str.encode), max_size=20))
def test_packing_many_items_at_once_gives_each_its_own_frame_as_packing_it_alone_does(items):
    """The inference log packs a batch of requests in one call (one release of the GIL, not two a request); the
    store, and every reader of it, must not see a difference."""
    packed = pack_many(items)
    assert packed == [pack(item) for item in items]
    assert [unpack(frame) for frame in packed] == items
