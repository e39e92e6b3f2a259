"""SharedInts: equal values come back as one object, and the table stays bounded."""

from cctmpfs.sharedints import SharedInts


def test_equal_values_are_one_object():
    s = SharedInts()
    a = s.share(int("1733000000000000000"))
    b = s.share(int("1733000000000000000"))
    assert a == b and a is b
    assert s.share(int("33188")) is s.share(int("33188"))
    assert len(s) == 2


def test_a_full_table_starts_again_and_stays_bounded():
    s = SharedInts(limit=8)
    for v in range(1000, 1100):
        assert s.share(v) == v
        assert len(s) <= 8
    again = int("1099")
    assert s.share(again) is not again        # 1099 is in the current table
    assert s.share(int("1000")) == 1000       # an evicted value is still correct
