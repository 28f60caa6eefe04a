import json

import pytest

import results_io as rio


@pytest.mark.parametrize("name,slug", [
    ("NVIDIA H100 80GB HBM3", "h100"),
    ("NVIDIA H100 PCIe", "h100"),
    ("NVIDIA H200", "h200"),
    ("NVIDIA H200 NVL", "h200"),
    ("NVIDIA A100-SXM4-80GB", "a100"),
    ("NVIDIA GeForce RTX 4090", "rtx4090"),
    ("NVIDIA L40S", "l40s"),
    ("Weird Device", "weird-device"),
    ("", "unknown"),
])
def test_device_slug(name, slug):
    assert rio.device_slug(name) == slug


def test_git_stamp_from_env_wins():
    assert rio.git_stamp(env={"KVPREFETCH_COMMIT": "abc123", "KVPREFETCH_DIRTY": "1"}) == ("abc123", True)
    assert rio.git_stamp(env={"KVPREFETCH_COMMIT": "abc123", "KVPREFETCH_DIRTY": "false"}) == ("abc123", False)


def test_git_stamp_without_git(tmp_path):
    commit, dirty = rio.git_stamp(repo_root=tmp_path, env={})
    assert commit == "unknown" and dirty is None


def test_git_stamp_commit_env_only_keeps_git_dirty(tmp_path):
    commit, dirty = rio.git_stamp(repo_root=tmp_path, env={"KVPREFETCH_COMMIT": "deadbeef"})
    assert commit == "deadbeef" and dirty is None


def test_write_json_atomic_and_load(tmp_path):
    p = tmp_path / "sub" / "x.json"
    assert rio.load_json(p) is None
    rio.write_json(p, {"a": 1, "t": (1, 2)})
    assert rio.load_json(p) == {"a": 1, "t": [1, 2]}
    assert not list(tmp_path.glob("sub/*.tmp"))
    rio.write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}


def test_merge_rows_replaces_by_key_and_keeps_order():
    key = lambda r: (r["k"],)  # noqa: E731
    old = [{"k": 1, "v": "old1"}, {"k": 2, "v": "old2"}, {"k": 3, "v": "old3"}]
    new = [{"k": 2, "v": "new2"}, {"k": 4, "v": "new4"}]
    merged = rio.merge_rows(old, new, key)
    assert [(r["k"], r["v"]) for r in merged] == [(1, "old1"), (2, "new2"), (3, "old3"), (4, "new4")]
    assert rio.merge_rows([], new, key) == new
    assert rio.merge_rows(old, [], key) == old


def test_md_table_escapes_and_aligns():
    t = rio.md_table(["a", "b"], [["x|y", 1], [None, "2\n3"]])
    lines = t.strip().splitlines()
    assert lines[0] == "| a | b |"
    assert lines[1] == "| :--- | ---: |"
    assert lines[2] == "| x\\|y | 1 |"
    assert lines[3] == "|  | 2 3 |"


def test_formatting():
    assert rio.fmt_tokens(1024) == "1K" and rio.fmt_tokens(131072) == "128K" and rio.fmt_tokens(512) == "512"
    assert rio.fmt_num(None) == "—" and rio.fmt_num(3.14159, 2) == "3.14" and rio.fmt_num(12345.6) == "12,346"


def test_stamp_has_versions():
    s = rio.stamp({"cuda": "13.0"})
    assert set(s) == {"commit", "dirty", "versions"}
    assert s["versions"]["cuda"] == "13.0" and "torch" in s["versions"] and "flashinfer" in s["versions"]


def test_write_report_writes_both_files(tmp_path, capsys):
    rio.write_report(tmp_path / "r", "x-h200", {"rows": [1]}, "# table\n")
    assert json.loads((tmp_path / "r" / "x-h200.json").read_text()) == {"rows": [1]}
    assert (tmp_path / "r" / "x-h200.md").read_text() == "# table\n"
    assert "x-h200.json and .md" in capsys.readouterr().out
