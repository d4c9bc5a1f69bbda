"""launch/ recipes read against JAX's own cluster detection (issue 9 item 8).

No cluster is needed: fake ``srun``/``scontrol``/``mpirun``/``gcloud`` executables stand
in for the schedulers. The fake srun starts the recipe's tasks the way srun does (the
SLURM_* variables of each task, the variables the script exported) and asks JAX's cluster
detection what each task would get, as ``jax.distributed.initialize`` would.
"""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")

# What one task learns from JAX, in the task's environment (run inside the fake launchers).
DETECT = r'''
import json, os, sys
from jax._src import clusters
env_ids = os.environ.get("JAX_LOCAL_DEVICE_IDS")   # jax.distributed.initialize reads it first
local = [int(x) for x in env_ids.split(",")] if env_ids else None
address, count, pid, local = clusters.ClusterEnv.auto_detect_unset_distributed_params(
    None, None, None, local, os.environ.get("BARLOW_JAX_CLUSTER_DETECTION") or None, 300)
# None means "every device the task sees": the GPUs the scheduler gave the task.
visible = os.environ.get("CUDA_VISIBLE_DEVICES")
if local is None and visible:
    local = list(range(len(visible.split(","))))
rec = {"node": os.environ.get("FAKE_NODE"), "address": address, "count": count, "pid": pid,
       "local_device_ids": local, "argv": sys.argv[1:],
       "distributed": os.environ.get("BARLOW_JAX_DISTRIBUTED"),
       "cpus": os.environ.get("SLURM_CPUS_PER_TASK")}
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(rec) + "\n")
'''

FAKE_SRUN = r'''#!{python}
"""srun: starts SLURM_NTASKS_PER_NODE tasks on each of SLURM_JOB_NUM_NODES nodes."""
import os, signal, subprocess, sys, time
args = sys.argv[1:]
opts = {}
while args and args[0].startswith("-"):
    key, _, value = args.pop(0).partition("=")
    opts[key] = value
nodes = int(os.environ["SLURM_JOB_NUM_NODES"])
per = int(opts.get("--ntasks-per-node") or os.environ.get("SLURM_NTASKS_PER_NODE", "1"))
gpus = int(os.environ.get("SLURM_GPUS_PER_NODE", "0"))
for n in range(nodes):
    for local in range(per):
        env = dict(os.environ, SLURM_STEP_NODELIST=f"gpu[001-{nodes:03d}]",
                   SLURM_NTASKS=str(nodes * per), SLURM_PROCID=str(n * per + local),
                   SLURM_LOCALID=str(local), SLURM_NODEID=str(n),
                   SLURM_STEP_NUM_NODES=str(nodes), FAKE_NODE=str(n),
                   SLURM_CPUS_PER_TASK=opts.get("--cpus-per-task", ""),
                   # one task per node gets the node's GPUs (gres binding)
                   CUDA_VISIBLE_DEVICES=",".join(map(str, range(gpus))) if per == 1 else str(local))
        subprocess.run([sys.executable, "-c", os.environ["FAKE_DETECT"], *args], env=env,
                       check=True)
if os.environ.get("FAKE_SRUN_BLOCK"):
    # the job step runs until a signal: SIGTERM (forwarded to the tasks) = they save and exit 0
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    open(os.environ["FAKE_SRUN_BLOCK"], "w").write("running")
    time.sleep(120)
    sys.exit(3)
'''

FAKE_RECORD = r'''#!{python}
import json, os, sys
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\n")
'''


def _executable(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


def _sbatch_env(script):
    """The job environment sbatch derives from the script's #SBATCH lines."""
    env = {}
    for line in open(script):
        if not line.startswith("#SBATCH --"):
            continue
        key, _, value = line[len("#SBATCH --"):].split()[0].partition("=")
        if key == "nodes":
            env["SLURM_JOB_NUM_NODES"] = env["SLURM_NNODES"] = value
        elif key == "ntasks-per-node":
            env["SLURM_NTASKS_PER_NODE"] = value
        elif key == "gpus-per-node":
            env["SLURM_GPUS_PER_NODE"] = value
        elif key == "cpus-per-task":
            env["SLURM_CPUS_PER_TASK"] = value
    return env


def _fake_bin(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "srun", FAKE_SRUN.replace("{python}", sys.executable))
    for name in ("scontrol", "mpirun", "gcloud"):
        _executable(bin_dir / name, FAKE_RECORD.replace("{python}", sys.executable))
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_DETECT=DETECT,
               FAKE_LOG=str(tmp_path / "tasks.jsonl"), FAKE_CALLS=str(tmp_path / "calls.jsonl"))
    for k in [k for k in env if k.startswith(("SLURM_", "OMPI_", "JAX_"))]:
        del env[k]
    return env


def _lines(path):
    return [json.loads(x) for x in open(path)] if os.path.exists(path) else []


def test_slurm_recipe_gives_every_gpu_of_every_node_and_requeues_on_the_time_limit(tmp_path):
    script = os.path.join(LAUNCH, "slurm_gpu.sbatch")
    text = open(script).read()
    assert "#SBATCH --cpus-per-task=" in text and "#SBATCH --requeue" in text
    # barlow_jax's cuda12 extra is jax[cuda12] (setup.py; tests/test_onboarding.py)
    assert "EXTRAS=${EXTRAS:-cuda12,data}" in text and '-e "$REPO[$EXTRAS]"' in text
    env = _fake_bin(tmp_path)
    env.update(_sbatch_env(script), SLURM_JOB_ID="4242", SLURM_SUBMIT_DIR=ROOT, INSTALL="0",
               FAKE_SRUN_BLOCK=str(tmp_path / "running"))
    proc = subprocess.Popen(["bash", script, "configs/smoke.py", str(tmp_path / "run"),
                             "--config.seed=3"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not os.path.exists(tmp_path / "running") and time.time() < deadline:
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.1)
        # SLURM's --signal=B:USR1@300: the batch shell is told the time limit is near.
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    tasks = _lines(tmp_path / "tasks.jsonl")
    nodes = int(env["SLURM_JOB_NUM_NODES"])
    assert nodes >= 2 and len(tasks) == nodes * int(env["SLURM_NTASKS_PER_NODE"])
    # JAX's detection: one coordinator for all, dense process ids, the right count...
    assert len({t["address"] for t in tasks}) == 1 and tasks[0]["address"].startswith("gpu001:")
    assert sorted(t["pid"] for t in tasks) == list(range(len(tasks)))
    assert {t["count"] for t in tasks} == {len(tasks)}
    # ... and 8 distinct local GPUs on every node (not 1 of 8).
    for n in range(nodes):
        ids = [i for t in tasks if t["node"] == str(n) for i in t["local_device_ids"]]
        assert sorted(ids) == list(range(8)), (n, ids)
    assert all(t["distributed"] == "1" and "barlow_jax.main" in t["argv"] for t in tasks)
    assert all("--config.seed=3" in t["argv"] and int(t["cpus"]) > 1 for t in tasks)
    calls = _lines(tmp_path / "calls.jsonl")
    assert ["scontrol", "requeue", "4242"] in calls, (calls, out)


def test_slurm_without_the_recipe_variable_would_use_one_gpu_per_node(tmp_path):
    """The trap the recipe avoids, shown with the same detection: one task per node and no
    JAX_LOCAL_DEVICE_IDS gives each node's process only GPU $SLURM_LOCALID."""
    env = _fake_bin(tmp_path)
    env.update(SLURM_JOB_NUM_NODES="2", SLURM_NTASKS_PER_NODE="1", SLURM_GPUS_PER_NODE="8",
               SLURM_JOB_ID="7")
    subprocess.run(["srun", "python", "-m", "barlow_jax.main"], env=env, check=True,
                   timeout=120)
    assert [t["local_device_ids"] for t in _lines(tmp_path / "tasks.jsonl")] == [[0], [0]]


def test_mpirun_recipe_runs_one_process_per_gpu_as_jax_detects_it(tmp_path):
    env = _fake_bin(tmp_path)
    env["HOSTS"] = "nodeA:8,nodeB:8"
    r = subprocess.run(["bash", os.path.join(LAUNCH, "mpirun.sh"), "configs/smoke.py",
                        str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    call = _lines(tmp_path / "calls.jsonl")[0]
    assert call[:5] == ["mpirun", "-np", "16", "-H", "nodeA:8,nodeB:8"]
    assert "BARLOW_JAX_DISTRIBUTED=1" in call and "barlow_jax.main" in call
    # What Open MPI (4.x) gives rank 11 = node B's local rank 3, read by JAX's detection.
    task = dict(env, OMPI_MCA_orte_hnp_uri="1531576320.0;tcp://10.0.0.7:34911",
                OMPI_COMM_WORLD_SIZE="16", OMPI_COMM_WORLD_RANK="11",
                OMPI_COMM_WORLD_LOCAL_RANK="3", BARLOW_JAX_DISTRIBUTED="1")
    subprocess.run([sys.executable, "-c", DETECT], env=task, check=True, timeout=120)
    t = _lines(tmp_path / "tasks.jsonl")[0]
    assert (t["count"], t["pid"], t["local_device_ids"]) == (16, 11, [3])
    assert t["address"].startswith("10.0.0.7:")


def test_tpu_recipe_runs_every_worker_with_jax_tpu_and_a_gs_workdir(tmp_path):
    env = _fake_bin(tmp_path)
    env.update(TPU_NAME="pod", ZONE="us-central2-b", REPO_URL="https://example.invalid/b.git")
    script = os.path.join(LAUNCH, "tpu_vm.sh")
    r = subprocess.run(["bash", script, "configs/smoke.py", "/tmp/local"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "must be gs://" in r.stderr  # workers share no disk
    r = subprocess.run(["bash", script, "configs/smoke.py", "gs://b/run", "--config.seed=3"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    call = _lines(tmp_path / "calls.jsonl")[-1]
    assert call[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] and "ssh" in call
    assert "--worker=all" in call and "pod" in call
    command = call[call.index("--command") + 1]
    assert "-e '.[tpu,data]'" in command and "BARLOW_JAX_DISTRIBUTED=1" in command
    assert "--workdir=gs://b/run" in command and "--config.seed=3" in command


@pytest.mark.parametrize("script", ["slurm_gpu.sbatch", "tpu_vm.sh", "mpirun.sh",
                                    "local_multiprocess.sh"])
def test_recipes_document_the_variables_users_edit(script):
    text = open(os.path.join(LAUNCH, script)).read()
    assert "ariables users edit" in text
    assert subprocess.run(["bash", "-n", os.path.join(LAUNCH, script)]).returncode == 0
