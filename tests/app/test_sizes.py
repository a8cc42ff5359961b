"""app/sizes.py: every size the app prints, in the unit that fits (decimal units)."""

import pytest

from app.sizes import human_bytes, unit_for


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (1, "1 B"), (999, "999 B"), (1000, "1.00 KB"), (1234, "1.23 KB"), (12_345, "12.3 KB"),
    (123_456, "123 KB"), (999_499, "999 KB"), (999_700, "1.00 MB"), (9_996_000, "10.0 MB"), (1_500_000, "1.50 MB"),
    (12_000_000_000, "12.0 GB"), (3.2e12, "3.20 TB"), (5e15, "5000 TB"),
])
def test_human_bytes_picks_the_unit_that_fits(n, text):
    assert human_bytes(n) == text


def test_a_small_size_is_never_zero_gigabytes():
    for n in (1, 10_000, 4_000_000):
        assert not human_bytes(n).startswith("0.0")


def test_unit_for_is_decimal():
    assert unit_for(2 ** 30) == (1e9, "GB")  # a GiB is 1.07 GB
    assert human_bytes(2 ** 30) == "1.07 GB"
