import block_timeline as bt


def test_cold_is_off_unless_asked_and_shapes_parse():
    args = bt.parse_args(["--out", "x", "--shapes", "16x1K,1x4K"])
    assert not args.cold and args.shape_list == [(16, 1024), (1, 4096)]
    assert bt.parse_args(["--out", "x", "--cold", "--no-pdl"]).cold
