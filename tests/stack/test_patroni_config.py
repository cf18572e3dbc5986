"""The Patroni node configs one renderer writes for both layouts (fieldhub/stack/patroni.py):
on loopback, and one node per lab host with its own address and etcd member. Pure rendering,
no process started; but for the last test, which asks a real etcd when it is ready."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # no stubs installed; only safe_load is used

from fieldhub.stack.patroni import PatroniCluster
from tests.support import wait_for

ADDRESSES = ("198.18.0.10", "198.18.0.11", "198.18.0.12")


def _config(cluster: PatroniCluster, index: int) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(cluster.nodes[index].config.read_text())
    return loaded


def test_each_node_on_a_host_listens_on_its_address_and_knows_every_etcd_member(
    tmp_path: Path,
) -> None:
    cluster = PatroniCluster(tmp_path, addresses=ADDRESSES, network="198.18.0.0/24")
    cluster.write_configs()
    for index, address in enumerate(ADDRESSES):
        config = _config(cluster, index)
        assert config["postgresql"]["listen"] == f"{address}:5432"
        assert config["postgresql"]["connect_address"] == f"{address}:5432"
        assert config["restapi"]["connect_address"] == f"{address}:8008"
        assert config["etcd3"]["hosts"] == ",".join(f"{a}:2379" for a in ADDRESSES)
        # Hosts share one port, so each needs a socket directory of its own.
        sockets = config["postgresql"]["parameters"]["unix_socket_directories"]
        assert sockets == f"{tmp_path}/sock-pg{index + 1}"
        assert "host all all 198.18.0.0/24 trust" in config["bootstrap"]["pg_hba"]
        dcs = config["bootstrap"]["dcs"]
        assert (dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"]) == (10, 2, 4)
        assert dcs["synchronous_mode"] is True
        assert dcs["synchronous_mode_strict"] is True
        assert dcs["postgresql"]["use_pg_rewind"] is True
        # A failed rewind clones the node instead of leaving it stopped.
        assert dcs["postgresql"]["remove_data_directory_on_rewind_failure"] is True
        assert dcs["postgresql"]["remove_data_directory_on_diverged_timelines"] is True
    argv = cluster.etcd_argv(cluster.nodes[1])
    assert argv[argv.index("--listen-client-urls") + 1] == "http://198.18.0.11:2379"
    assert argv[argv.index("--initial-cluster") + 1] == ",".join(
        f"epg{n}=http://{a}:2380" for n, a in enumerate(ADDRESSES, start=1)
    )
    assert cluster.url("fieldhub") == (
        "postgresql://postgres:pg@198.18.0.10:5432,198.18.0.11:5432,198.18.0.12:5432/fieldhub"
    )


def test_the_loopback_cluster_keeps_one_etcd_and_trusts_only_loopback(tmp_path: Path) -> None:
    cluster = PatroniCluster(tmp_path)
    cluster.write_configs()
    config = _config(cluster, 0)
    assert config["etcd3"]["hosts"] == f"127.0.0.1:{cluster.etcd_port}"
    assert config["postgresql"]["listen"] == f"127.0.0.1:{cluster.nodes[0].pg_port}"
    assert "host all all 127.0.0.1/32 trust" in config["bootstrap"]["pg_hba"]
    argv = cluster.etcd_argv()
    assert (
        argv[argv.index("--initial-cluster") + 1] == f"e1=http://127.0.0.1:{cluster.etcd_peer_port}"
    )
    # Started where it runs: a hosted cluster refuses to start its nodes here.
    hosted = PatroniCluster(tmp_path / "hosted", addresses=ADDRESSES)
    with pytest.raises(RuntimeError, match="runs on its host"):
        hosted.start_node(hosted.nodes[0])


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed (etcd-server)")
def test_etcd_counts_as_ready_once_it_answers_a_quorum_read(tmp_path: Path) -> None:
    cluster = PatroniCluster(tmp_path)
    node = cluster.nodes[0]
    assert not cluster.etcd_ready(node)  # nothing listens yet
    with (tmp_path / "etcd.log").open("wb") as log:
        etcd = subprocess.Popen(cluster.etcd_argv(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: cluster.etcd_ready(node), timeout=30, what="etcd's /health")
    finally:
        etcd.kill()
        etcd.wait()
    assert not cluster.etcd_ready(node)
