"""Text charts (benchmarks.charts): block heights worked out by hand."""

from benchmarks.charts import BLOCKS, sparkline, text_chart


def test_sparkline_maps_the_smallest_to_the_lowest_block_and_the_largest_to_the_highest():
    assert sparkline([2, 10, 6, 2]) == BLOCKS[0] + BLOCKS[7] + BLOCKS[4] + BLOCKS[0]
    assert sparkline([1, None, 1]) == BLOCKS[0] + " " + BLOCKS[0]  # flat: all lowest
    assert sparkline([None, None]) == "  "


def test_text_chart_has_an_axis_line_and_one_line_per_series_with_its_range():
    rows = [
        {"t": 0, "w": 1, "lag": 0.0},
        {"t": 10, "w": 2, "lag": 7.5},
        {"t": 20, "w": 1, "lag": None},
    ]
    chart = text_chart(rows, [("w", "workers"), ("lag", "lag")], x_key="t", x_label="elapsed s")
    axis, workers, lag = chart.splitlines()
    assert axis.split() == ["elapsed", "s", "0", "..", "20"]
    assert workers.split() == ["workers", BLOCKS[0] + BLOCKS[7] + BLOCKS[0], "1", "..", "2"]
    assert lag.endswith(BLOCKS[0] + BLOCKS[7] + "    0 .. 7.5")
