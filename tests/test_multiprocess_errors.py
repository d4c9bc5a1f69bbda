"""Starting the multi-process runtime (issue 9 item 1), and the agreed stop's logic, without
training: the settings' resolution, one sentence for each start-up fault through every CLI
that loads a checkpoint, and the all-reduced stop flag on the 8 in-process devices."""

import json
import os
import signal
import socket

import pytest

from barlow_jax import distributed, stopping
from tests.cli_helpers import run_cli


def test_settings_come_from_flags_then_environment():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
           "JAX_PROCESS_ID": "3"}
    assert distributed.resolve(environ=env) == ("10.0.0.1:1234", 4, 3, False)
    assert distributed.resolve("h:1", 2, 0, environ=env) == ("h:1", 2, 0, False)
    assert distributed.resolve(environ={}) == (None, None, None, False)  # one process
    assert distributed.resolve(environ={"BARLOW_JAX_DISTRIBUTED": "1"}) == (None, None, None,
                                                                           True)
    assert distributed.resolve("[::1]:99", 1, 0, environ={})[0] == "[::1]:99"


@pytest.mark.parametrize("args,env,expect", [
    (("h:1", None, 0), {}, "--num_processes is missing"),
    (("nohostport", 2, 0), {}, "is not HOST:PORT"),
    (("h:1", 2, 2), {}, "--process_id=2 must be in 0..1"),
    (("h:1", 0, 0), {}, "--num_processes=0 must be at least 1"),
    ((None, None, None), {"JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0",
                          "JAX_COORDINATOR_ADDRESS": "h:1"}, "JAX_NUM_PROCESSES='two'"),
])
def test_incomplete_or_wrong_settings_are_one_sentence(args, env, expect):
    with pytest.raises(distributed.DistributedInitError, match=expect) as e:
        distributed.resolve(*args, environ=env)
    assert "\n" not in str(e.value)


def _only_error_line(r, expect):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert expect in lines[0], lines[0]
    assert "Traceback" not in r.stderr


def test_start_up_faults_through_the_clis(tmp_path):
    work = tmp_path / "run"
    work.mkdir()   # what eval/report/export read first: a config.json (nothing else is needed)
    from barlow_jax import checkpointing
    from configs import smoke
    (work / "config.json").write_text(json.dumps(checkpointing.config_to_dict(smoke.get_config())))
    train = ["--config=configs/smoke.py", f"--workdir={tmp_path / 'w'}"]
    env = {"BARLOW_JAX_INIT_TIMEOUT": "2"}
    with socket.socket() as dead:   # a port nobody listens on
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
    _only_error_line(run_cli(train + [f"--coordinator_address=127.0.0.1:{port}",
                                      "--num_processes=2", "--process_id=1"], env=env),
                     f"could not reach the coordinator at 127.0.0.1:{port} within 2s")
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        _only_error_line(run_cli(train + [f"--coordinator_address=127.0.0.1:{port}",
                                          "--num_processes=2", "--process_id=0"]),
                         f"port {port}, but that port is already in use")
    _only_error_line(run_cli(train + ["--coordinator_address=no-such-host.invalid:1234",
                                      "--num_processes=2", "--process_id=1"]),
                     "does not resolve")
    _only_error_line(run_cli(train, env={"BARLOW_JAX_DISTRIBUTED": "1"}),
                     "JAX detected no cluster")
    # Every CLI that loads a checkpoint takes the same flags (and the JAX_* variables).
    bad = ["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=5"]
    for module, extra in (("barlow_jax.eval.linear", []), ("barlow_jax.eval.semisup",
                                                           ["--fraction=0.1"]),
                          ("barlow_jax.report", []),
                          ("barlow_jax.export", [f"--out={tmp_path / 'x.pth'}"])):
        r = run_cli([f"--workdir={work}", *extra, *bad], module=module)
        _only_error_line(r, "--process_id=5 must be in 0..1")
    r = run_cli([f"--workdir={work}", f"--out={tmp_path / 'x.pth'}"], module="barlow_jax.export",
                env={"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "2"})
    _only_error_line(r, "--process_id is missing")
    assert not (tmp_path / "w").exists()  # nothing was written


def test_the_stop_flag_is_reduced_every_step_and_read_two_steps_later():
    import jax
    from barlow_jax import parallel
    mesh = parallel.make_mesh()
    with stopping.StopAgreement(mesh) as stop:
        stop._multi = True          # as with several processes: the flag goes through the mesh
        stop._setup_reduce()
        assert [stop.check(s) for s in (1, 2)] == [None, None]
        os.kill(os.getpid(), signal.SIGINT)   # arrives while step 3 runs
        decisions = {s: stop.check(s) for s in (3, 4, 5, 6)}
    assert stop.received == "SIGINT" and stop.received_at is not None
    assert decisions == {3: None, 4: None, 5: "SIGINT", 6: "SIGINT"}
    assert len(jax.devices()) == 8
    with stopping.StopAgreement(mesh) as stop:   # one process: the local flag, at once
        assert stop.check(1) is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.check(2) == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(
        signal.getsignal(signal.SIGTERM))   # the previous handlers are back


def test_a_lost_peer_is_named_in_one_sentence(monkeypatch):
    import jax
    gloo = RuntimeError("UNKNOWN: Gloo all-reduce failed: [external/gloo/gloo/transport/tcp/"
                        "pair.cc:538] Read error [127.0.0.1]:5815: Connection reset by peer")
    assert distributed.peer_failure_message(gloo) is None   # one process: not a lost peer
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    text = distributed.peer_failure_message(gloo)
    assert text.startswith("process 0 of 2 stopped because another process of the job died")
    assert "Connection reset by peer" in text and "pair.cc" not in text and "\n" not in text
    assert distributed.peer_failure_message(ValueError("shapes do not match")) is None
