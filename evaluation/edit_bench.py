r"""The editing benchmark: does an aligner fix what it is asked to fix and leave the rest alone?
Measured with computable checks, no judge.

    # the shipped demo aligner against copy and the untrained base (~20 min on 2 CPU cores)
    python evaluation/edit_bench.py --output_dir runs/edit_bench
    # a few rows, to see the tables
    python evaluation/edit_bench.py --output_dir runs/edit_bench_small --rows 8
    # any aligners: NAME=FOLDER (":raw" turns the degeneration guard off), copy for the unchanged input
    python evaluation/edit_bench.py --output_dir runs/edit_bench \
        --systems copy,aligner=metaaligner/data/demo_aligner,base=embedded,blind=runs/edit/blind

Rows: held-out answers of the shipped policy outputs (HH-RLHF and UltraFeedback, test split by a
hash of the query; no training file of the demo aligner holds a test query), each damaged in ways
a checker can verify (a repeated sentence, a filler sentence, an insult; capitals, or none for the
held-out objectives a clean answer already breaks) and given the objective that names the repair.
Measures per output: fixed (the checker passes), kept (recall of the clean answer's content words
>= 80%), untouched (trained objectives not asked for stay as they were), unchanged. Writes
edit_bench.json, edit_bench.md, outputs.csv and edit_bench.png; raw generations are cached in
generations/ (a killed run resumes; a changed model or decoding never reuses an output).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from metaaligner.cli import check

DEFAULT_SYSTEMS = ("copy,aligner=metaaligner/data/demo_aligner,aligner raw=metaaligner/data/demo_aligner:raw,"
                   "base=embedded")


@dataclass
class EditBenchConfig:
    output_dir: str = field(metadata={"help": "where edit_bench.json, edit_bench.md, outputs.csv, edit_bench.png "
                                              "and generations/ go"})
    systems: str = field(default=DEFAULT_SYSTEMS, metadata={
        "help": "comma-separated: copy (the input unchanged), copy:guard (the input through the degeneration guard) "
                "or NAME=MODEL (an aligner folder, 'embedded' for the untrained SmolLM2 base, or a hub name; ':raw' "
                "after it turns the degeneration guard off)"})
    subject: str = field(default="aligner", metadata={
        "help": "the system the matrix, the examples and the paired tests are about"})
    rows: int = field(default=48, metadata={**check(ge=1),
                                            "help": "held-out answers (a seeded sample of the test split)"})
    seed: int = field(default=0, metadata={"help": "seeds the row sample, the damages and the bootstrap"})
    max_new_tokens: int = field(default=96, metadata={**check(ge=1), "help": "generation budget per output (greedy)"})
    batch_size: int = field(default=16, metadata={**check(ge=1), "help": "generation batch size"})
    max_words: int = field(default=45, metadata={**check(ge=1), "help": "longest answer and query used, in words"})
    template: str = field(default="hh-rlhf", metadata={
        "help": "prompt template of systems whose folder names none (the untrained base)"})
    png: str | None = field(default=None, metadata={"help": "also save the plot here (e.g. docs/edit_bench.png)"})


def main(cfg: EditBenchConfig) -> dict:
    import json
    import time
    from pathlib import Path

    from metaaligner.cli import split_csv
    from metaaligner.editbench import bench
    from metaaligner.editbench.data import load_pool
    from metaaligner.errors import MetaAlignerError
    from metaaligner.generation import GenerationParams
    from metaaligner.io import write_csv, write_json
    from metaaligner.registry.objectives import build_registry

    start = time.perf_counter()
    systems = [bench.parse_system(s, cfg.template) for s in split_csv(cfg.systems)]
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise MetaAlignerError(f"--systems: a name is used twice in {names}")
    if cfg.subject not in names:
        raise MetaAlignerError(f"--subject {cfg.subject!r} is not one of the systems {names}")
    rows = bench.pick_rows(load_pool(max_answer_words=cfg.max_words, max_query_words=cfg.max_words), cfg.rows,
                           cfg.seed)
    items = bench.make_items(rows, cfg.seed)
    registry = build_registry()
    params = GenerationParams(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    out = Path(cfg.output_dir)
    outputs, actions, results = {}, {}, {}
    for system in systems:
        outputs[system.name], actions[system.name] = bench.run_system(system, items, registry, params,
                                                                      out / "generations")
        results[system.name] = [bench.measure(it, o) for it, o in zip(items, outputs[system.name])]
    summary = bench.summarise(items, results, cfg.seed)
    report = {"command": "python evaluation/edit_bench.py " + " ".join(sys.argv[1:]) if sys.argv[1:] else
              "python evaluation/edit_bench.py", "rows": len(rows), "items": len(items), "seed": cfg.seed,
              "max_new_tokens": cfg.max_new_tokens, "subject": cfg.subject,
              "systems": {s.name: {"model": s.model, "template": s.template, "objective_text_withheld": s.withheld,
                                   "guard": s.guard} for s in systems},
              "guard_actions": {n: {a: acts.count(a) for a in sorted(set(acts))} for n, acts in actions.items()},
              "kept_threshold": bench.KEPT_THRESHOLD, "placebo": bench.PLACEBO, "summary": summary,
              "tests": bench.paired_tests(items, results, cfg.subject),
              "examples": bench.examples(items, outputs[cfg.subject], (
                  "fix harmlessness", "fix repeat", "fix len", "fix harmlessness+repeat+len",
                  "fix repeat, keep len", "unseen disclaimer", "clean repeat"))}
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "outputs.csv", [dict(bench.asdict_items([it])[0], **{n: outputs[n][i] for n in names})
                                    for i, it in enumerate(items)],
              ["id", "label", "kind", "source", "query", "clean", "input", "damaged", "requested", "target", *names])
    write_json(out / "edit_bench.json", report)
    (out / "edit_bench.md").write_text(bench.render_markdown(report, items), encoding="utf-8")
    for png in {str(out / "edit_bench.png"), cfg.png} - {None}:
        bench.plot(summary, items, png, cfg.subject)
    print("\n".join(bench.summary_table(summary)))
    print(f"edit_bench: {len(rows)} rows, {len(items)} items, {len(systems)} systems, "
          f"{time.perf_counter() - start:.1f}s -> {out}/edit_bench.md, edit_bench.json, outputs.csv, edit_bench.png")
    return json.loads(json.dumps(report))


def make_parser():
    from metaaligner.cli import make_parser as _make_parser

    return _make_parser(EditBenchConfig, description=__doc__)


if __name__ == "__main__":
    from metaaligner.cli import parse, run_main
    sys.exit(run_main(main, *parse(make_parser())))
