"""The plugin entry point that SGLang's load_plugins() discovers."""

from importlib.metadata import entry_points


def test_entry_point_is_declared_and_points_at_apply():
    eps = [ep for ep in entry_points(group="sglang.srt.plugins") if ep.name == "kvprefetch"]
    assert len(eps) == 1, f"expected one 'kvprefetch' entry point, got {eps}"
    ep = eps[0]
    assert ep.value == "kvprefetch.patches:apply"
    assert ep.dist is not None and ep.dist.name == "kvprefetch"

    import kvprefetch.patches

    assert ep.load() is kvprefetch.patches.apply
