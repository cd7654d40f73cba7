from fedinv.viz import line_plot


def test_line_plot_legend_columns_fit_the_longest_name():
    curve = [(0, 0.5), (1, 0.6)]
    one = line_plot({"a": curve})
    short = line_plot({f"s{i}": curve for i in range(6)})
    long = line_plot({f"fedavg+ftg logit ensemble (FTG's teacher) {i}": curve for i in range(6)})
    assert short.width == long.width == one.width
    assert short.height == one.height, "six short names share one legend row"
    assert long.height >= one.height + 2 * 16, "names too long for six columns take more rows"
