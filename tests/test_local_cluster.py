"""The local multi-node launcher's process bookkeeping, without starting Ray (tests/multinode starts clusters)."""

import os
import subprocess
import sys

import pytest

from cmd_ray.local_cluster import LocalCluster, is_ray_worker, process_tree, wait_until


def test_process_tree_holds_children_and_grandchildren():
    child = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', 'input()'])"],
        stdin=subprocess.PIPE,
    )
    try:
        tree = wait_until(lambda: len(process_tree(child.pid)) == 2 and process_tree(child.pid), "a grandchild", 30)
        assert tree[0] == child.pid
        assert os.getpid() not in tree
        assert child.pid in process_tree(os.getpid())
    finally:
        child.kill()
        child.wait()


def test_only_ray_task_and_actor_processes_count_as_workers():
    titles = {
        b"ray::SampleMaker.__call__\x00": True,
        b"ray::IDLE\x00": True,
        b"python\x00/x/ray/_private/workers/default_worker.py\x00--node-ip-address=1\x00": True,
        b"ray::DashboardAgent\x00": False,
        b"ray::RuntimeEnvAgent\x00": False,
        b"/x/ray/core/src/ray/raylet/raylet\x00--node_manager_port=1\x00": False,
        b"python\x00jobs/distill.py\x00": False,
    }
    assert {title: is_ray_worker(title) for title in titles} == titles


def test_wait_until_names_what_never_came():
    with pytest.raises(TimeoutError, match="the moon"):
        wait_until(lambda: False, "the moon", timeout_s=0.3)


def test_nodes_get_token_auth_and_this_pythons_tools(tmp_path):
    cluster = LocalCluster(tmp_path, env={"PATH": "/usr/bin"})
    try:
        assert cluster.env["RAY_AUTH_MODE"] == "token"
        assert cluster.token_path.read_text()
        assert cluster.env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
        with pytest.raises(ValueError, match="head"):
            from cmd_ray.local_cluster import LocalNode

            cluster.kill_node(LocalNode("head", 0, {}, None, tmp_path / "log", 0))  # type: ignore[arg-type]
    finally:
        cluster.stop()


def test_periodically_calls_its_action_while_the_block_runs_and_once_at_its_end():
    from cmd_ray.local_cluster import Periodically

    calls: list[int] = []
    with Periodically(0.01, lambda: calls.append(len(calls))) as ticking:
        wait_until(lambda: len(calls) >= 3, "three periodic calls", 30)
        during = len(calls)
    assert len(calls) > during, "the final call as the block ends"
    assert calls == list(range(len(calls)))
    assert not ticking._thread.is_alive(), "the sampling thread ended with the block"
