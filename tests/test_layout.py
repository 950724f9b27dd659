"""Issue 14's package layout: one home per concept (sharding, batching, the output format, the
baseline metadata file, dataset configs shipped with the package), checked by behaviour."""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import metaaligner
from metaaligner.distributed import dist_env, in_input_order, length_sorted_batches, shard_range

PACKAGE = Path(metaaligner.__file__).resolve().parent


def test_length_sorted_batches_longest_first_ties_in_input_order():
    # lengths 3 5 3 1 5: the two 5s (rows 1, 4), the two 3s (rows 0, 2), then the 1 (row 3)
    assert length_sorted_batches([3, 5, 3, 1, 5], 2) == [[1, 4], [0, 2], [3]]
    assert length_sorted_batches([], 4) == []


def test_reward_scoring_uses_the_shared_batcher():
    from metaaligner.dataset.rewards import score_sequences

    class Recorder:
        batches: list = []

        def score_batch(self, batch):
            self.batches.append([len(s) for s in batch])
            return [float(len(s) * 10 + s[0]) for s in batch]

    seqs = [[1, 1], [2, 2, 2], [3, 3], [4]]
    scorer = Recorder()
    assert score_sequences(scorer, seqs, 2) == [21.0, 32.0, 23.0, 14.0]   # input order
    assert scorer.batches == [[3, 2], [2, 1]]                              # rows 1, 0 then 2, 3


def test_shard_ranges_and_merge_in_input_order(monkeypatch):
    assert [list(shard_range(5, r, 2)) for r in (0, 1)] == [[0, 1], [2, 3, 4]]
    assert in_input_order({2: "c", 0: "a"}, 3) == (["a", "c"], [1])
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert dist_env() == (3, 4, 3)


def test_sepo_ranks_take_contiguous_slices(tmp_path):
    from metaaligner.io import read_records
    from metaaligner.methods import sepo

    class Tok:  # scoring is never reached: every row is skipped before the models are used
        pad_token_id = eos_token_id = 0
        eos_token = ""

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": []}

        def get_vocab(self):  # part of the scoring run's fingerprint
            return {}

    pairs = [{"prompt": "", "chosen": "a", "rejected": "b"} for _ in range(5)]
    out = tmp_path / "sel.jsonl"
    sepo.score_shard(pairs, "o", "r", out, rank=1, world=2, models=(None, None, Tok()), device="cpu",
                     progress=False)
    assert [r["row_id"] for r in read_records(tmp_path / "sel.jsonl.rows2-5of5.jsonl")] == [2, 3, 4]


def test_one_output_format_and_one_metadata_file():
    from metaaligner import io
    from metaaligner.aligner import inference
    from metaaligner.methods import common, inference as baseline_inference, sepo
    from metaaligner.training import morlhf

    assert io.OUTPUT_COLUMNS == ["query", "goldens", "origin_responses", "aligned_responses"]
    assert inference.OUTPUT_COLUMNS is sepo.OUTPUT_COLUMNS is baseline_inference.OUTPUT_COLUMNS is io.OUTPUT_COLUMNS
    assert common.METADATA_FILE == "baseline.json"
    assert morlhf.METADATA_FILE is common.METADATA_FILE
    code = [p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py")]
    assert sum(text.count('= "baseline.json"') for text in code) == 1
    assert sum(text.count("OUTPUT_COLUMNS = [") for text in code) == 1


def test_aligner_package_reexports_the_api():
    from metaaligner.aligner import Aligner, generate_file, inference, policy, resolve_aligner

    assert (Aligner, resolve_aligner, generate_file) == (inference.Aligner, inference.resolve_aligner,
                                                          policy.generate_file)
    assert metaaligner.Aligner is Aligner


OLD_PATHS = re.compile(r"metaaligner\.(objectives|templates|datasets|rewards|reformulation|policy|sepo|baselines|"
                       r"baseline_inference|training\.baselines)\b|from metaaligner import (aligner|sepo|rewards)\b")


def test_no_code_imports_an_old_module_path():
    # a missed import would still work here (the editable install maps it to another checkout), so read the code
    root = PACKAGE.parent
    files = [p for p in root.rglob("*.py") if ".git" not in p.parts and "outputs" not in p.parts
             and p.name != "test_layout.py" and p.relative_to(root).parts[0] != "runs"]
    hits = [f"{p.relative_to(root)}:{i}" for p in files
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if OLD_PATHS.search(line)]
    assert hits == []


def test_every_baseline_is_one_methods_module():
    for name in ("sft", "cdpo", "morlhf"):
        module = importlib.import_module(f"metaaligner.methods.{name}")
        assert callable(module.infer) and callable(getattr(module, f"train_{name}_baseline"))
    assert callable(importlib.import_module("metaaligner.methods.sft").make_sft_data)
    assert callable(importlib.import_module("metaaligner.methods.cdpo").make_cdpo_data)
    assert callable(importlib.import_module("metaaligner.methods.morlhf").train_reward_models)
    assert callable(importlib.import_module("metaaligner.methods.sepo").run_selection)


def test_dataset_configs_ship_inside_the_package(tmp_path):
    from metaaligner.registry.datasets import CONFIG_DIR, available, load_dataset_config

    assert CONFIG_DIR == PACKAGE / "data" / "datasets"
    assert available() == ["edit-bench", "hh-rlhf", "imhi", "ultrafeedback"]
    shipped = load_dataset_config("hh-rlhf")
    assert Path(shipped.path) == CONFIG_DIR / "hh-rlhf.yaml"
    assert shipped.objectives == ["harmlessness", "helpfulness", "humour"]
    mine = tmp_path / "my.yaml"
    mine.write_text((CONFIG_DIR / "hh-rlhf.yaml").read_text().replace("name: hh-rlhf", "name: mine"))
    config = load_dataset_config(str(mine))
    assert (config.name, config.path, config.template) == ("mine", str(mine), "hh-rlhf")
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert '"data/**/*"' in pyproject   # setuptools ships metaaligner/data/datasets/*.yaml


def _package_imports() -> dict[str, set[str]]:
    """module -> the metaaligner modules it imports, at top level or inside functions (``ast``); a
    ``from pkg import name`` counts ``pkg.name`` when that is a module, else ``pkg``."""
    modules = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = p
    graph: dict[str, set[str]] = {}
    for name, p in modules.items():
        is_pkg = p.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:   # relative: resolve against this module's package
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets.update(f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_cycles_between_package_modules():
    graph = _package_imports()
    assert graph["metaaligner.training.morlhf"] >= {"metaaligner.methods.scalarisation"}   # the walk sees imports
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
