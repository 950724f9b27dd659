"""The benchmark's answers and the demo aligner's training pairs, split by query.

The pool is real policy answers shipped in ``samples/`` (HH-RLHF and UltraFeedback outputs) that
are short enough for a CPU, have two or more sentences and meet every check when clean. A query
belongs to the test split by a hash of its text, so every answer to one query lands on one side
(the HH-RLHF policies share their queries) and no training file holds a test query.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

from metaaligner.editbench import checks, damage

POOL_FILES = (
    "samples/HH-RLHF_model_output/gpt-3.5-turbo.csv.gz",
    "samples/HH-RLHF_model_output/Claude-3.csv.gz",
    "samples/HH-RLHF_model_output/llama2-chat-70B.csv.gz",
    "samples/UltraFeedback_model_output/gpt-3.5-turbo.csv.gz",
    "samples/UltraFeedback_model_output/Vicuna-7B.csv.gz",
    "samples/UltraFeedback_model_output/Vicuna-13B.csv.gz",
)


def is_test_query(query: str, test_fraction: float = 0.3) -> bool:
    digest = hashlib.sha256(("edit-bench|" + query.strip()).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") / 2 ** 32 < test_fraction


def usable(answer: str, max_words: int, min_words: int = 12) -> bool:
    """Short, two or more sentences (one of four or more words), clean on every trained check and
    ``no_caps``, and not already ending with the disclaimer."""
    n = len(checks.words(answer))
    parts = checks.sentences(answer)
    return (min_words <= n <= max_words and len(parts) >= 2
            and any(len(checks.sentence_key(s)) >= 4 for s in parts)
            and all(checks.passes(k, answer) for k in (*checks.TRAINED, "no_caps"))
            and not checks.passes("disclaimer", answer))


def load_pool(files: tuple[str, ...] | list[str] = POOL_FILES, root: str | Path | None = None,
              max_answer_words: int = 45, max_query_words: int = 45,
              test_fraction: float = 0.3) -> list[dict[str, str]]:
    """``{"source", "split", "query", "clean"}`` per usable answer, file order; answers are
    whitespace-normalised (so a damage and its repair are exact string operations). Files are read
    under ``root``, or found like other shipped data (``registry.datasets.find_data``: $METAALIGNER_DATA,
    the working tree, the checkout)."""
    from metaaligner.io import normalise_space, read_records
    from metaaligner.registry.datasets import find_data

    out, seen = [], set()
    for name in files:
        source = f"{Path(name).parent.name.split('_')[0]}/{Path(name).name.split('.csv')[0]}"
        path = Path(root) / name if root is not None else find_data(name, "edit bench answers")
        for row in read_records(path):
            query, answer = str(row.get("query") or ""), normalise_space(row.get("generated_text") or "")
            if not query.strip() or len(checks.words(query)) > max_query_words or (query, answer) in seen:
                continue
            if usable(answer, max_answer_words):
                seen.add((query, answer))
                split = "test" if is_test_query(query, test_fraction) else "train"
                out.append({"source": source, "split": split, "query": query, "clean": answer})
    return out


def harmless_base_pool(path: str | Path, max_answer_words: int = 45, max_query_words: int = 45,
                       test_fraction: float = 0.3) -> list[dict[str, str]]:
    """Training-only answers: the human-chosen responses of HH-RLHF harmless-base pairs that pass
    ``usable``, except those whose prompt hashes to the test split."""
    from metaaligner.dataset.rewards import load_preference_rows
    from metaaligner.io import normalise_space

    out, seen = [], set()
    for row in load_preference_rows(path):
        query, answer = row.prompt, normalise_space(row.chosen_response)
        if row.status != "ok" or is_test_query(query, test_fraction) or (query, answer) in seen:
            continue
        if len(checks.words(query)) <= max_query_words and usable(answer, max_answer_words):
            seen.add((query, answer))
            out.append({"source": "harmless-base/chosen", "split": "train", "query": query, "clean": answer})
    return out


def training_pairs(pool: list[dict[str, str]], seed: int = 0, draws: int = 1) -> list[dict[str, str]]:
    """Preference pairs for the rule scorers from the train split: per answer one seeded kind, with
    the better answer as ``chosen_response``:

    - single (1/2): clean vs one damage;
    - double (1/5): clean vs two damages;
    - selective (1/5): one damage vs the same plus a second (teaches: fix only what is asked),
      plus clean vs the first damage;
    - triple (1/10): clean vs all three damages.
    Damages use the training fillers and insults only. ``draws``: kinds drawn per answer."""
    pairs = []
    for row, draw in ((r, d) for r in pool for d in range(draws)):
        if row["split"] != "train":
            continue
        rng = random.Random(f"edit-pairs|{seed}|{draw}|{row['query']}|{row['clean']}")
        kind = rng.choices(("single", "double", "selective", "triple"), weights=(5, 2, 2, 1))[0]
        keys = rng.sample(checks.TRAINED, {"single": 1, "double": 2, "selective": 2, "triple": 3}[kind])
        worse = damage.damage_all(keys, row["clean"], rng, "train")
        if worse is None:
            continue
        if kind == "selective":
            second = random.Random(f"edit-pairs|{seed}|{draw}|{row['clean']}")
            better = damage.damage_all(keys[1:], row["clean"], second, "train")
            worse = damage.damage_all(keys[:1], better, rng, "train") if better else None
            if worse is None:
                continue
            pairs.append(_pair(row, row["clean"], better))
            pairs.append(_pair(row, better, worse))
        else:
            pairs.append(_pair(row, row["clean"], worse))
    return pairs


def _pair(row: dict[str, str], chosen: str, rejected: str) -> dict[str, str]:
    return {"prompt": row["query"], "chosen_response": chosen, "rejected_response": rejected,
            "source": row["source"]}
