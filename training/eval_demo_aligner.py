r"""Held-out check of a trained aligner against its untrained base, plus its loss curve.

    python training/eval_demo_aligner.py --aligner_path metaaligner/data/demo_aligner \
        --train_dir runs/demo/aligner --data_dir runs/demo/aligner_data --output_dir runs/demo/eval

On held-out rows (policy answers from samples/HH-RLHF_model_output whose queries were not in training, and the
validation split of the aligner data), both models edit each answer with the same prompt (the
aligner's template and objectives, greedy); reports how often the edit differs from a plain copy of
the answer and the mean similarity. Writes ``eval.json``, ``edits.csv`` and the loss-curve PNG.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass
class EvalDemoConfig:
    aligner_path: str = field(metadata={"help": "trained aligner folder (with metaaligner.json)"})
    output_dir: str = field(metadata={"help": "where eval.json and edits.csv go"})
    train_dir: str | None = field(default=None, metadata={"help": "train_aligner.py output folder (training_log.jsonl) for the loss curve"})
    data_dir: str | None = field(default=None, metadata={"help": "build_aligner_dataset.py folder: its prompts are excluded, its val split is evaluated"})
    policy_file: str = field(default="samples/HH-RLHF_model_output/Claude-3.csv.gz", metadata={"help": "policy outputs (query, generated_text)"})
    n_policy_rows: int = field(default=24, metadata={"help": "held-out policy rows"})
    n_val_rows: int = field(default=16, metadata={"help": "rows from no_equal/val.json (their rejected answer is edited)"})
    max_query_tokens: int = field(default=96, metadata={"help": "skip policy rows with longer queries"})
    max_answer_tokens: int = field(default=64, metadata={"help": "skip policy rows with longer answers"})
    max_new_tokens: int = field(default=96, metadata={"help": "generation budget per edit"})
    batch_size: int = field(default=8, metadata={"help": "generation batch size"})
    base_model: str = field(default="embedded", metadata={"help": "the untrained base to compare with"})
    png: str | None = field(default=None, metadata={"help": "loss-curve PNG path (needs --train_dir)"})
    seed: int = field(default=0, metadata={"help": "row sampling seed"})


def main(cfg: EvalDemoConfig) -> dict:
    import json
    import re
    import time
    from pathlib import Path

    from metaaligner.aligner.inference import read_model_card
    from metaaligner.generation import GenerationParams, get_generator
    from metaaligner.io import read_fastchat, write_csv, write_json
    from metaaligner.models import load_tokenizer, resolve_model_path
    from metaaligner.registry.templates import render
    from metaaligner.training.demo import copy_stats, heldout_policy_rows, plot_loss_curve

    start = time.perf_counter()
    card = read_model_card(cfg.aligner_path)
    template, descriptions = card["template"], card["objective_descriptions"]
    out = Path(cfg.output_dir)
    seen: set[str] = set()
    rows = []
    if cfg.data_dir:
        cue = re.compile(r"\| Context: (.*) \| Answer: (.*) \| Edit: $", re.S)
        for name in ("warmup/train.json", "all_equal/train.json", "no_equal/train.json"):
            p = Path(cfg.data_dir) / name
            if p.exists():
                seen |= {m.group(1) for m in map(cue.search, (i["prompt"] for i in read_fastchat(p))) if m}
        val = read_fastchat(Path(cfg.data_dir) / "no_equal" / "val.json")
        for item in val[: cfg.n_val_rows]:
            m = cue.search(item["prompt"])
            if m:
                rows.append({"source": "val", "query": m.group(1), "answer": m.group(2)})
    tok = load_tokenizer(resolve_model_path(None))
    rows += [dict(r, source="policy") for r in heldout_policy_rows(
        cfg.policy_file, tok, cfg.n_policy_rows, cfg.max_query_tokens, cfg.max_answer_tokens, seen, cfg.seed)]
    prompts = [render(template, r["query"], r["answer"], descriptions) for r in rows]
    params = GenerationParams(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    results = {"template": template, "objectives": card.get("objectives"), "rows": len(rows),
               "sources": {s: sum(r["source"] == s for r in rows) for s in ("val", "policy")}}
    for label, model in (("aligner", cfg.aligner_path), ("base", cfg.base_model)):
        t = time.perf_counter()
        edits = get_generator("hf", model).generate(prompts, params, progress=True)
        for r, e in zip(rows, edits):
            r[f"{label}_edit"] = e
        results[label] = {"model": model, "seconds": round(time.perf_counter() - t, 1),
                          "all": copy_stats([r["answer"] for r in rows], edits)}
        for source in ("val", "policy"):
            sub = [(r["answer"], r[f"{label}_edit"]) for r in rows if r["source"] == source]
            if sub:
                results[label][source] = copy_stats([a for a, _ in sub], [e for _, e in sub])
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "edits.csv", rows, ["source", "query", "answer", "aligner_edit", "base_edit"])
    if cfg.train_dir and cfg.png:
        plot_loss_curve(Path(cfg.train_dir) / "training_log.jsonl", cfg.png,
                        f"demo aligner (LoRA on SmolLM2-135M-Instruct), {card.get('data_sha256', '')[:12]}")
        results["loss_curve"] = cfg.png
    results["wall_s"] = round(time.perf_counter() - start, 1)
    write_json(out / "eval.json", results)
    a, b = results["aligner"]["all"], results["base"]["all"]
    print(f"eval_demo_aligner: {len(rows)} held-out rows; edit differs from copy: aligner {a['differs']}/{a['rows']} "
          f"(similarity {a['mean_similarity']:.2f}), base {b['differs']}/{b['rows']} (similarity "
          f"{b['mean_similarity']:.2f}); {results['wall_s']}s -> {out}")
    print(json.dumps(results, indent=1))
    return results


def make_parser():
    from metaaligner.cli import make_parser as _make_parser

    return _make_parser(EvalDemoConfig, description=__doc__)


if __name__ == "__main__":
    from metaaligner.cli import parse, run_main
    sys.exit(run_main(main, *parse(make_parser())))
