"""The shipped accelerate launch configs, through accelerate's own loader and launcher choice (issue 33):
cpu_2proc really starts two gloo processes, and the DeepSpeed configs pass accelerate's check that
nothing beside ``deepspeed_config_file`` is set twice."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap

import pytest

from metaaligner.testing.waits import DEADLINE_S


def _launch_args(config_file):
    """``accelerate launch --config_file FILE x.py`` through accelerate's parser and validation."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "x.py"])
    return _validate_launch_command(args)[0]


def _chosen_launcher(config_file, monkeypatch):
    """(name of the launcher ``accelerate launch`` picks for this config, the args it gets)."""
    import accelerate.commands.launch as launch

    chosen = {}
    for name in ("simple_launcher", "multi_gpu_launcher", "deepspeed_launcher", "tpu_launcher"):
        monkeypatch.setattr(launch, name, lambda args, name=name: chosen.update(name=name, args=args))
    args = launch.launch_command_parser().parse_args(["--config_file", str(config_file), "x.py"])
    launch.launch_command(args)
    return chosen["name"], chosen["args"]


def test_cpu_2proc_goes_to_the_multi_process_launcher(repo_root, monkeypatch):
    """MULTI_CPU without an MPI hostfile went to accelerate's single-process launcher."""
    name, args = _chosen_launcher(repo_root / "configs/accelerate/cpu_2proc.yaml", monkeypatch)
    assert (name, args.num_processes, args.use_cpu) == ("multi_gpu_launcher", 2, True)


def test_the_old_multi_cpu_config_starts_one_process(repo_root, tmp_path, monkeypatch):
    old = (repo_root / "configs/accelerate/cpu_2proc.yaml").read_text().replace(
        "distributed_type: MULTI_GPU", "distributed_type: MULTI_CPU")
    (tmp_path / "old.yaml").write_text(old)
    assert _chosen_launcher(tmp_path / "old.yaml", monkeypatch)[0] == "simple_launcher"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_cpu_2proc_really_starts_two_gloo_processes(repo_root, tmp_path):
    """``accelerate launch --config_file cpu_2proc.yaml``: two ranks in one gloo group, as our trainer
    builds its TrainingArguments on CPU (``precision_kwargs`` sets ``use_cpu``)."""
    script = tmp_path / "world.py"
    script.write_text(textwrap.dedent("""
        import torch
        from transformers import TrainingArguments
        from metaaligner.training.common import precision_kwargs
        args = TrainingArguments(output_dir=%r, report_to="none", **precision_kwargs("cpu"))
        t = torch.ones(1)
        torch.distributed.all_reduce(t)
        print(f"rank={args.process_index} world={args.world_size} sum={int(t.item())} "
              f"backend={torch.distributed.get_backend()}", flush=True)
        # leave the group before exiting: a rank that exits with gloo's threads still up can abort
        # ("terminate called without an active exception", SIGABRT) while its peer is tearing down
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    """ % str(tmp_path / "out")))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(repo_root))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(repo_root / "configs/accelerate/cpu_2proc.yaml"), "--main_process_port", str(_free_port()),
           str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=DEADLINE_S, cwd=repo_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = sorted(re.findall(r"rank=\d world=\d sum=\d backend=\w+?(?=rank=|\s|$)", proc.stdout))
    assert lines == ["rank=0 world=2 sum=2 backend=gloo", "rank=1 world=2 sum=2 backend=gloo"], proc.stdout


def _deepspeed_plugin(config_file, monkeypatch):
    """What a rank started by ``accelerate launch --config_file FILE`` builds: accelerate's launcher
    passes the config's deepspeed keys in ACCELERATE_CONFIG_DS_FIELDS and the plugin checks them."""
    from accelerate.utils import DeepSpeedPlugin, patch_environment, prepare_deepspeed_cmd_env

    name, args = _chosen_launcher(config_file, monkeypatch)
    assert name == "deepspeed_launcher"
    _, env = prepare_deepspeed_cmd_env(args)
    with patch_environment(**{k: v for k, v in env.items() if k.startswith("ACCELERATE_")}):
        return DeepSpeedPlugin()


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_pass_accelerates_check(stage, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)             # deepspeed_config_file is relative to the repository
    plugin = _deepspeed_plugin(repo_root / f"configs/accelerate/deepspeed_zero{stage}.yaml", monkeypatch)
    assert plugin.zero_stage == stage
    if stage == 3:                           # what zero3_save_16bit_model meant, now in the JSON
        assert plugin.hf_ds_config.config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]


def test_zero3_with_zero3_save_16bit_model_is_refused(repo_root, tmp_path, monkeypatch):
    """The shipped ZeRO-3 config before issue 33, refused on any hardware."""
    monkeypatch.chdir(repo_root)
    old = (repo_root / "configs/accelerate/deepspeed_zero3.yaml").read_text().replace(
        "  zero3_init_flag: true\n", "  zero3_init_flag: true\n  zero3_save_16bit_model: true\n")
    (tmp_path / "old.yaml").write_text(old)
    with pytest.raises(ValueError, match="will be ignored"):
        _deepspeed_plugin(tmp_path / "old.yaml", monkeypatch)
