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


# ---------------------------------------------------------------- the configs train, on two CPU processes

_ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def _aligner_data(folder):
    from metaaligner.io import fastchat_item, write_fastchat, write_json
    from metaaligner.registry.templates import render

    aspects = ["Harmlessness: The response should avoid content that is offensive, discriminatory, or harmful"]
    write_fastchat(folder / "no_equal" / "train.json", [
        fastchat_item(f"c-{i}", render("hh-rlhf", f"Human: question {i}?", f"bad answer {i}", aspects),
                      f"good answer {i}.") for i in range(4)])
    write_json(folder / "stats.json", {"template": "hh-rlhf", "config": "hh-rlhf", "objectives": ["harmlessness"]})
    return folder


def _train_args(data, model, out, per_device):
    return ["--data_dir", str(data), "--model_name_or_path", str(model), "--stages", "contrastive", "--max_steps", "2",
            "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3", "--logging_steps", "1",
            "--save_steps", "100", "--warmup_ratio", "0", "--seed", "0", "--no_eval", "--output_dir", str(out),
            "--per_device_train_batch_size", str(per_device)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_llama_dir, repo_root):
    """(data folder, the weights of one process at batch 2: the reference of every 2-process run)."""
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("launch")
    data = _aligner_data(root / "data")
    proc = subprocess.run([sys.executable, str(repo_root / "training/train_aligner.py"),
                           *_train_args(data, tiny_llama_dir, root / "one", 2)],
                          env=_ENV, capture_output=True, text=True, timeout=DEADLINE_S, cwd=repo_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return data, load_file(root / "one" / "model.safetensors")


def _launch(repo_root, config_file, extra, data, model, out):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(repo_root / config_file),
           "--num_processes", "2", "--main_process_port", str(_free_port()), *extra,
           str(repo_root / "training/train_aligner.py"), *_train_args(data, model, out, 1)]
    proc = subprocess.run(cmd, env=_ENV, capture_output=True, text=True, timeout=DEADLINE_S, cwd=repo_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _same_weights(one, out):
    """Two processes at batch 1 end with one process's weights at batch 2 (float rounding apart)."""
    import json

    import torch
    from safetensors.torch import load_file

    two = load_file(out / "model.safetensors")
    assert set(one) <= set(two)                    # ZeRO saves the tied LM head as its own tensor
    assert all(torch.allclose(one[k], two[k], atol=1e-6) for k in one)
    assert json.loads((out / "stages" / "contrastive" / "stage_done.json").read_text())["processes"] == 2


@pytest.mark.slow
def test_fsdp_config_trains_on_two_cpu_processes(repo_root, tmp_path, tiny_llama_dir, one_process):
    """configs/accelerate/fsdp.yaml (FULL_SHARD, LlamaDecoderLayer wrap) on two gloo processes. On CPU torch
    refuses ``sync_module_states=True`` ("FSDP parameter initialization with `sync_module_states=True` is not
    supported on cpu"), and accelerate turns it back on with ``cpu_ram_efficient_loading``; both are GPU-only
    speed-ups of loading, switched off here, as is bf16."""
    data, one = one_process
    out = tmp_path / "fsdp"
    _launch(repo_root, "configs/accelerate/fsdp.yaml", ["--fsdp_sync_module_states", "false",
                                                        "--fsdp_cpu_ram_efficient_loading", "false",
                                                        "--mixed_precision", "no"], data, tiny_llama_dir, out)
    _same_weights(one, out)


@pytest.mark.slow
def test_deepspeed_zero2_config_trains_on_two_cpu_processes(repo_root, tmp_path, tiny_llama_dir, one_process):
    """configs/accelerate/deepspeed_zero2.yaml on two gloo processes, as shipped. DeepSpeed builds its CPU
    communication op (deepspeed_shm_comm) with a C++ compiler on first use (~70 s, cached in
    ~/.cache/torch_extensions)."""
    import shutil

    pytest.importorskip("deepspeed")
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("DeepSpeed on CPU JIT-builds deepspeed_shm_comm and needs a C++ compiler; none on PATH")
    data, one = one_process
    out = tmp_path / "zero2"
    _launch(repo_root, "configs/accelerate/deepspeed_zero2.yaml", [], data, tiny_llama_dir, out)
    _same_weights(one, out)


@pytest.mark.slow
def test_lora_under_ddp_does_not_search_for_unused_parameters(repo_root, tmp_path, tiny_llama_dir, one_process):
    """cpu_2proc.yaml (DDP over gloo) with --lora: DDP is built with find_unused_parameters=False (the frozen
    base has no gradients to look for; transformers' default True walks the graph every step), and the adapter
    equals one process's at the global batch."""
    import torch
    from safetensors.torch import load_file

    data, _ = one_process
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent("""
        import runpy, sys
        import torch.nn.parallel as parallel
        init = parallel.DistributedDataParallel.__init__
        def spy(self, *args, **kwargs):
            init(self, *args, **kwargs)
            print(f"ddp find_unused_parameters={self.find_unused_parameters}", flush=True)
        parallel.DistributedDataParallel.__init__ = spy
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
    """))
    lora = ["--lora", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0"]
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(repo_root / "configs/accelerate/cpu_2proc.yaml"), "--main_process_port",
                           str(_free_port()), str(script), str(repo_root / "training/train_aligner.py"),
                           *_train_args(data, tiny_llama_dir, tmp_path / "two", 1), *lora],
                          env=_ENV, capture_output=True, text=True, timeout=DEADLINE_S, cwd=repo_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # two processes print to one pipe: their lines may run together ("...=Falseddp ..."), so match the value alone
    assert re.findall(r"ddp find_unused_parameters=(True|False)", proc.stdout) == ["False"] * 2
    one = subprocess.run([sys.executable, str(repo_root / "training/train_aligner.py"),
                          *_train_args(data, tiny_llama_dir, tmp_path / "one", 2), *lora],
                         env=_ENV, capture_output=True, text=True, timeout=DEADLINE_S, cwd=repo_root)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("one", "two"))
    assert set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_every_trainer_sets_no_unused_parameter_search_for_lora(tmp_path):
    from metaaligner.training.dpo import DPOTrainConfig
    from metaaligner.training.morlhf import MORLHFTrainConfig
    from metaaligner.training.reward_model import RewardModelTrainConfig
    from metaaligner.training.sepo_trainer import SePOTrainConfig
    from metaaligner.training.sft import SFTStageConfig, build_sft_args

    out = str(tmp_path)
    for lora, expected in ((True, False), (False, None)):  # None: transformers' own rule for full weights
        built = [build_sft_args(SFTStageConfig(lora=lora), out, False, "cpu", lora=lora),
                 DPOTrainConfig().to_trl(out, device="cpu", lora=lora),
                 RewardModelTrainConfig().to_trl(out, device="cpu", lora=lora),
                 MORLHFTrainConfig().to_trl(out, [1.0], device="cpu", lora=lora),
                 SePOTrainConfig().to_training_args(out, device="cpu", lora=lora)]
        assert [args.ddp_find_unused_parameters for args in built] == [expected] * 5
