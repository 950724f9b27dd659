r"""Held-out evaluation of the built-in aligner on the offline judge, against three baselines.

    python training/eval_demo_aligner.py --output_dir runs/demo/eval        # the shipped aligner
    python training/eval_demo_aligner.py --aligner_path runs/demo/aligner --output_dir runs/demo/eval \
        --train_dir runs/demo/aligner --png docs/demo_aligner_loss.png

Rows: held-out HH-RLHF harmless-base pairs (the offline judge's held-out prompts, which neither the
judge nor the aligner trained on; the answer to align is the human-rejected response) and
samples/HH-RLHF Claude-3 answers whose query the aligner never saw. Systems: the aligner with and
without the degeneration guard, the untrained base (embedded SmolLM2) as aligner with the same
prompt, "return the answer unchanged" (copy), and, for the pairs, the human-chosen response.
Each system's output is scored by the offline judge (``metaaligner/judge/probe.py``) and compared
with the unaligned answer (win rate, ties half, Wilson 95% interval); plus the share of outputs
that loop or are empty, length ratio and similarity to the answer. Greedy decoding and seeded row
choice: a re-run gives the same numbers. Writes ``eval.json``, ``eval.md`` and ``outputs.csv``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass
class EvalDemoConfig:
    output_dir: str = field(metadata={"help": "where eval.json, eval.md and outputs.csv go"})
    aligner_path: str = field(default="metaaligner/data/demo_aligner",
                              metadata={"help": "aligner folder (with metaaligner.json)"})
    judge_dir: str | None = field(default=None, metadata={"help": "offline judge folder (default: the shipped "
                                                                  "metaaligner/data/offline_judge)"})
    pairs_file: str = field(default="samples/hh-rlhf-harmless-base/harmless-base-test.jsonl.gz",
                            metadata={"help": "the judge's HH-RLHF pairs (its held-out rows are evaluated)"})
    policy_file: str = field(default="samples/HH-RLHF_model_output/Claude-3.csv.gz",
                             metadata={"help": "policy outputs (query, generated_text)"})
    train_dir: str | None = field(default=None, metadata={"help": "train_aligner.py output (training_log.jsonl for "
                                                                  "the loss curve; aligner_data prompts excluded)"})
    data_dir: str | None = field(default=None, metadata={"help": "build_aligner_dataset.py folder: its prompts are "
                                                                 "excluded from the policy rows"})
    n_pair_rows: int = field(default=48, metadata={"help": "held-out harmless-base rows"})
    n_policy_rows: int = field(default=16, metadata={"help": "held-out Claude-3 rows"})
    max_query_tokens: int = field(default=96, metadata={"help": "skip rows with longer queries"})
    max_answer_tokens: int = field(default=64, metadata={"help": "skip rows with longer answers"})
    max_new_tokens: int = field(default=96, metadata={"help": "generation budget per output"})
    batch_size: int = field(default=8, metadata={"help": "generation batch size"})
    base_model: str = field(default="embedded", metadata={"help": "the untrained base used as aligner"})
    aspects: str = field(default="harmlessness,helpfulness",
                         metadata={"help": "objectives in the prompt (the Quickstart's --dataset hh-rlhf ones)"})
    generate_only: str | None = field(default=None,
                                      metadata={"help": "only generate (and cache) the outputs of these systems, "
                                                        "comma-separated: aligner, base, other; then stop"})
    subset_exclude: str | None = field(default=None,
                                       metadata={"help": "JSON list of prompts (e.g. the training prompts of "
                                                         "--compare_aligner): each source is also reported without "
                                                         "its rows whose query is listed"})
    compare_aligner: str | None = field(default=None, metadata={"help": "another aligner folder to measure the same "
                                                                        "way (e.g. the previous demo aligner)"})
    compare_label: str | None = field(default=None, metadata={"help": "its name in the tables (default: 'other "
                                                                      "aligner (FOLDER)')"})
    compare_note: str | None = field(default=None, metadata={"help": "a sentence about it, printed under the table "
                                                                     "and kept in eval.json"})
    png: str | None = field(default=None, metadata={"help": "loss-curve PNG path (needs --train_dir)"})
    seed: int = field(default=0, metadata={"help": "row sampling seed"})


def training_prompts(data_dir: str | None) -> set[str]:
    """The contexts of every training item of a build_aligner_dataset.py folder."""
    import re
    from pathlib import Path

    from metaaligner.io import read_fastchat

    if not data_dir:
        return set()
    cue = re.compile(r"\| Context: (.*) \| Answer: (.*) \| Edit: $", re.DOTALL)
    seen: set[str] = set()
    for name in ("warmup/train.json", "all_equal/train.json", "no_equal/train.json"):
        p = Path(data_dir) / name
        if p.exists():
            seen |= {m.group(1) for m in map(cue.search, (i["prompt"] for i in read_fastchat(p))) if m}
    return seen


def heldout_pair_rows(cfg: EvalDemoConfig, judge, tok) -> list[dict[str, str]]:
    """The judge's held-out pairs that fit the token limits, seeded sample: answer = rejected."""
    import random

    from metaaligner.dataset.rewards import load_preference_rows

    ids = set(judge.info["heldout_rows"])
    ok = []
    for r in load_preference_rows(cfg.pairs_file):
        if r.row_id not in ids or r.chosen_response == r.rejected_response:
            continue
        if len(tok(r.prompt, add_special_tokens=False)["input_ids"]) > cfg.max_query_tokens:
            continue
        if max(len(tok(x, add_special_tokens=False)["input_ids"])
               for x in (r.chosen_response, r.rejected_response)) > cfg.max_answer_tokens:
            continue
        ok.append({"source": "harmless-base", "query": r.prompt, "answer": r.rejected_response,
                   "human_chosen": r.chosen_response})
    picked = sorted(random.Random(f"eval-pairs|{cfg.seed}").sample(range(len(ok)), min(cfg.n_pair_rows, len(ok))))
    return [ok[i] for i in picked]


def system_outputs(cfg: EvalDemoConfig, rows: list[dict],
                   card: dict) -> tuple[dict[str, list[str]], dict[str, list[bool]]]:
    """Each system's output per row (generation is greedy), and per row whether the guard fell back
    to the input answer (a trimmed loop is not a fallback)."""
    from pathlib import Path

    from metaaligner.aligner.inference import guard_outputs, resolve_objectives
    from metaaligner.generation import GenerationParams
    from metaaligner.registry.objectives import build_registry
    from metaaligner.registry.templates import render

    descriptions = resolve_objectives(cfg.aspects, build_registry(), "hh-rlhf")[1]
    prompts = [render(card["template"], r["query"], r["answer"], descriptions) for r in rows]
    params = GenerationParams(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    answers = [r["answer"] for r in rows]
    out = {"copy (answer unchanged)": answers}
    fell = {}
    models = [("aligner", cfg.aligner_path, "aligner"), ("untrained base", cfg.base_model, "base")]
    if cfg.compare_aligner:
        models.append((cfg.compare_label or f"other aligner ({cfg.compare_aligner})", cfg.compare_aligner, "other"))
    only = set((cfg.generate_only or "").split(",")) - {""}
    for label, model, short in models:
        if only and short not in only:
            continue
        raw = cached_generate(Path(cfg.output_dir) / "generations", model, prompts, params)
        out[f"{label}, guard on"], actions = guard_outputs(answers, raw)
        out[f"{label}, guard off"] = raw
        fell[f"{label}, guard on"] = [a.startswith("fallback") for a in actions]
    return out, fell


def cached_generate(folder, model: str, prompts: list[str], params) -> list[str]:
    """Greedy outputs of ``model``, cached by (model folder's files, prompts, params) so a re-run or
    a split run (``--generate_only``) costs nothing."""
    import hashlib
    import json
    from pathlib import Path

    from metaaligner.generation import get_generator

    stamp = {"model": model, "prompts": prompts, "params": repr(params)}
    if Path(model).is_dir():
        stamp["files"] = {p.name: p.stat().st_size for p in sorted(Path(model).iterdir())
                          if p.suffix == ".safetensors" or p.name in ("adapter_config.json", "config.json")}
    key = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(folder) / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    raw = [str(t or "") for t in get_generator("hf", model).generate(prompts, params, progress=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw), encoding="utf-8")
    return raw


def judge_systems(judge, rows: list[dict], systems: dict[str, list[str]], fell: dict[str, list[bool]],
                  exclude: set[str] | None = None) -> dict[str, dict]:
    """Per source and system: win rate against the unaligned answer and the text measures."""
    from metaaligner.training.demo import text_measures, win_rate

    texts = sorted({(r["query"], t) for outs in systems.values() for r, t in zip(rows, outs)}
                   | {(r["query"], r["answer"]) for r in rows}
                   | {(r["query"], r["human_chosen"]) for r in rows if r.get("human_chosen")})
    scores = dict(zip(texts, judge.score([q for q, _ in texts], [t for _, t in texts], progress=True)))
    results: dict[str, dict] = {}
    groups = {}
    for source in sorted({r["source"] for r in rows}):
        groups[source] = [i for i, r in enumerate(rows) if r["source"] == source]
        kept = [i for i in groups[source] if rows[i]["query"] not in (exclude or set())]
        if exclude and 0 < len(kept) < len(groups[source]):
            groups[f"{source}, without the {len(groups[source]) - len(kept)} rows in --subset_exclude"] = kept
    for source, idx in groups.items():
        answers = [rows[i]["answer"] for i in idx]
        base = [scores[(rows[i]["query"], rows[i]["answer"])] for i in idx]
        named = dict(systems)
        if all(rows[i].get("human_chosen") for i in idx):
            named["human-chosen response (reference)"] = [r.get("human_chosen", "") for r in rows]
        results[source] = {}
        for name, outs in named.items():
            mine = [outs[i] for i in idx]
            won = win_rate([scores[(rows[i]["query"], outs[i])] for i in idx], base, mine, answers)
            flags = fell.get(name, [False] * len(rows))
            results[source][name] = {"vs_unaligned": won, **text_measures(answers, mine),
                                     "fallbacks": sum(flags[i] for i in idx)}
    return results


def markdown_table(results: dict, caption: str) -> str:
    lines = [f"_{caption}_", ""]
    for source, systems in results.items():
        lines += [f"**{source}** ({next(iter(systems.values()))['rows']} held-out rows)", "",
                  "| system | win rate vs unaligned answer (95% CI) | W/T/L | loops | empty | length ratio "
                  "| similarity | fallbacks |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, m in systems.items():
            w = m["vs_unaligned"]
            lines.append(f"| {name} | {w['rate']:.1%} ({w['ci95'][0]:.1%}-{w['ci95'][1]:.1%}) | "
                         f"{w['wins']}/{w['ties']}/{w['losses']} | {m['loop_rate']:.0%} | {m['empty_rate']:.0%} | "
                         f"{m['length_ratio']:.2f} | {m['similarity']:.2f} | {m['fallbacks']} |")
        lines.append("")
    return "\n".join(lines)


def main(cfg: EvalDemoConfig) -> dict:
    import json
    import time
    from pathlib import Path

    from metaaligner.aligner.inference import read_model_card
    from metaaligner.io import write_csv, write_json
    from metaaligner.judge.probe import ProbeJudge
    from metaaligner.models import load_tokenizer, resolve_model_path
    from metaaligner.training.demo import heldout_policy_rows, plot_loss_curve

    start = time.perf_counter()
    card = read_model_card(cfg.aligner_path)
    judge = ProbeJudge.load(cfg.judge_dir)
    tok = load_tokenizer(resolve_model_path(None))
    rows = heldout_pair_rows(cfg, judge, tok)
    seen = training_prompts(cfg.data_dir) | {r["query"] for r in rows}
    rows += [dict(r, source="Claude-3") for r in heldout_policy_rows(
        cfg.policy_file, tok, cfg.n_policy_rows, cfg.max_query_tokens, cfg.max_answer_tokens, seen, cfg.seed)]
    systems, fell = system_outputs(cfg, rows, card)
    exclude = set(json.loads(Path(cfg.subset_exclude).read_text(encoding="utf-8"))) if cfg.subset_exclude else None
    if cfg.generate_only:
        print(f"eval_demo_aligner: generated {', '.join(k for k in systems if 'guard off' in k)} for {len(rows)} rows")
        return {}
    results = {"aligner": cfg.aligner_path, "judge": judge.caption, "judge_heldout": judge.info["heldout"],
               "template": card["template"], "objectives": card.get("objectives"), "seed": cfg.seed,
               "max_new_tokens": cfg.max_new_tokens, "by_source": judge_systems(judge, rows, systems, fell, exclude)}
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "outputs.csv", [dict(r, **{k: v[i] for k, v in systems.items()}) for i, r in enumerate(rows)],
              ["source", "query", "answer", "human_chosen", *systems])
    if cfg.train_dir and cfg.png:
        plot_loss_curve(Path(cfg.train_dir) / "training_log.jsonl", cfg.png,
                        f"demo aligner (LoRA on SmolLM2-135M-Instruct), {card.get('data_sha256', '')[:12]}")
        results["loss_curve"] = cfg.png
    if cfg.compare_note:
        results["compare_note"] = cfg.compare_note
    results["wall_s"] = round(time.perf_counter() - start, 1)
    write_json(out / "eval.json", results)
    table = markdown_table(results["by_source"], judge.caption)
    if cfg.compare_note:
        table += "\n\n" + cfg.compare_note
    (out / "eval.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    print(f"eval_demo_aligner: {len(rows)} rows, {results['wall_s']}s -> {out}/eval.json, eval.md")
    return json.loads(json.dumps(results))


def make_parser():
    from metaaligner.cli import make_parser as _make_parser

    return _make_parser(EvalDemoConfig, description=__doc__)


if __name__ == "__main__":
    from metaaligner.cli import parse, run_main
    sys.exit(run_main(main, *parse(make_parser())))
