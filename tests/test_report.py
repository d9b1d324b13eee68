import math

import pytest

from cnnlab.report import fmt, markdown_table


@pytest.mark.parametrize("value, text", [
    (488594, "488,594"),
    (488594.0, "488,594"),  # a count read back from a CSV file as a float
    (1.0, "1"),  # a margin
    (0.2, "0.2"),
    (0.72061, "0.7206"),
    (0.24100, "0.241"),
    (1234.5, "1,234.5"),
    (0.00001234, "1.234e-05"),  # never rounded to a bare 0
    (math.nan, "–"),
    (None, ""),
    (True, "True"),
    ("A (best)", "A (best)"),
])
def test_cells_print_counts_as_integers_and_numbers_without_padding_zeros(value, text):
    assert fmt(value) == text


def test_markdown_table_formats_every_cell():
    assert markdown_table(["run", "params", "margin"], [["a", 488594.0, 2.0]]).splitlines()[-1] == \
        "| a | 488,594 | 2 |"
