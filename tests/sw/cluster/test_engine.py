"""``--ray`` addresses, and what happens without Ray installed."""

import sys

import pytest

from velcro.sw.cli import main
from velcro.sw.cluster.engine import connect, parse_address
from velcro.sw.errors import ClusterError


@pytest.mark.parametrize("spec, expected", [
    ("auto", ("auto", "auto")), ("local:3", ("local", 3)),
    ("10.0.0.5:6379", ("address", "10.0.0.5:6379")),
    ("ray://head:10001", ("address", "ray://head:10001"))])
def test_addresses(spec, expected):
    assert parse_address(spec) == expected


@pytest.mark.parametrize("spec", ["", "local", "local:0", "local:x", "a b"])
def test_bad_addresses_are_refused(spec):
    with pytest.raises(ClusterError, match="--ray"):
        parse_address(spec)


@pytest.mark.parametrize("argv", [
    ["profile", "--task", "footwear", "--ray", "local:2", "--out", "p.npz"],
    ["compress", "--task", "footwear", "--search", "--ray", "auto"],
    ["table1", "--networks", "reference", "--tasks", "footwear", "--ray", "auto"],
    ["run", "--package", "x.velcro", "--workers", "2"]])
def test_without_ray_the_commands_say_what_to_install(argv, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    monkeypatch.chdir(tmp_path)
    if argv[0] == "run":
        from velcro.sw.commands import deploy

        # Reach the point where Ray is needed without a package file.
        monkeypatch.setattr(deploy, "device_specs", lambda args: ["golden", "golden"])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "install velcro[ray]" in err, err
    assert not (tmp_path / "p.npz").exists()


def test_an_initialised_ray_is_used_and_left_running(ray_local):
    with connect("local:7") as cluster:
        assert cluster.cpus == 2 and not cluster.started
    assert ray_local.is_initialized()
