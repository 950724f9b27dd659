#!/usr/bin/env bash
# How the shipped demo aligner (metaaligner/data/demo_aligner/) is made and measured: the project's
# own stages, offline, on 2 CPU cores. A 135M demonstration, NOT the paper's 1.1B-13B aligners.
#
#   bash scripts/train_demo_aligner.sh            # RUN=runs/edit by default
#
# 1. damaged vs clean pairs of the edit bench's train split (real policy answers + harmless-base
#    human-chosen answers; a query is test or train by a hash of its text, so no training file holds a
#    test query), damaged with the training fillers and insults only
# 2. stage 1 with the rule scorers: harmlessness (insult word list), repeat (repeated sentence),
#    len (filler sentence); reward = minus the violations
# 3. stage 2, Algorithm 1, with copy (warm-up) items only for answers no pair shows worse
#    (--warmup unbeaten), and the ablation's copy of it with the objective text withheld
# 4. the 3-step curriculum twice, in parallel (1 thread each): the aligner and the ablation; then a third
#    run with 300 harmless-base human-preference pairs mixed in (harmlessness = the human label,
#    repeat/len by rule), to see what that mix costs on the checks (not shipped)
# 5. ship the aligner (adapter + card + training log), the loss curve
# 6. evaluation/edit_bench.py: the aligner (guard on and off), copy (with and without the guard), the
#    untrained base (guard on and off), the ablation, the human-preference mix
#
# The held-out objectives of the bench (disclaimer, no_caps, ask_back, word_limit) appear in no file
# of steps 1-3 (tests/test_edit_bench.py checks it).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/edit}
ROWS=${ROWS:-48}
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1   # 1 thread a process: 2 trainings at once
mkdir -p "$RUN"

# 1-2. pairs and their rule rewards
python training/demo_aligner_data.py --step edit_pairs --output "$RUN/pairs.csv" --draws 2 --max_words 45 --seed 0
python dynamic_multi_objective_dataset/reward_labelling.py --input "$RUN/pairs.csv" --output "$RUN/rewards.csv" \
    --reward_names harmlessness,repeat,len --scorer rule --normalize false --round 0

# 3. Algorithm 1 (+ the ablation's data)
python dynamic_multi_objective_dataset/build_aligner_dataset.py --input "$RUN/rewards.csv" --dataset edit-bench \
    --output_dir "$RUN/aligner_data" --seed 0 --val_size 0.05 --warmup unbeaten
python training/demo_aligner_data.py --step blind --input "$RUN/aligner_data" --output "$RUN/blind_data"
# the human-preference mix: a harmless-base slice without edit-bench test prompts, repeat/len by rule,
# the human label as harmlessness (score 1), joined to the edit pairs
python training/demo_aligner_data.py --step slice --output "$RUN/hb_slice.csv" --n_pairs 300 --max_prompt_tokens 96 \
    --max_response_tokens 64 --seed 0 --exclude_edit_test
python dynamic_multi_objective_dataset/reward_labelling.py --input "$RUN/hb_slice.csv" --output "$RUN/hb_rule.csv" \
    --reward_names repeat,len --scorer rule --normalize false --round 0
python training/demo_aligner_data.py --step merge --input "$RUN/hb_rule.csv" --output "$RUN/hb_rewards.csv"
python training/demo_aligner_data.py --step concat --input "$RUN/rewards.csv,$RUN/hb_rewards.csv" --output "$RUN/mix_rewards.csv"
python dynamic_multi_objective_dataset/build_aligner_dataset.py --input "$RUN/mix_rewards.csv" --dataset edit-bench \
    --output_dir "$RUN/mix_data" --seed 0 --val_size 0.05 --warmup unbeaten

# 4. the curriculum: LoRA on the top 10 of SmolLM2's 30 layers, capped items per step
train() {
  python training/train_aligner.py --config_file configs/training/cpu.yaml --data_dir "$1" --output_dir "$2" \
    --lora_top_layers 10 --torch_threads 1 --learning_rate 4e-4 --max_length 384 --per_device_train_batch_size 4 \
    --gradient_accumulation_steps 2 --stage_max_items warmup=200,equal=120,contrastive=1100 --max_eval_items 24 \
    --save_steps 25 --save_total_limit 1 --resume
}
train "$RUN/aligner_data" "$RUN/aligner" > "$RUN/train_aligner.log" 2>&1 &
ALIGNER_PID=$!
train "$RUN/blind_data" "$RUN/blind" > "$RUN/train_blind.log" 2>&1 &
BLIND_PID=$!
wait "$ALIGNER_PID" || { tail -n 20 "$RUN/train_aligner.log"; exit 1; }
wait "$BLIND_PID" || { tail -n 20 "$RUN/train_blind.log"; exit 1; }
train "$RUN/mix_data" "$RUN/mix" > "$RUN/train_mix.log" 2>&1 || { tail -n 20 "$RUN/train_mix.log"; exit 1; }
python - "$RUN/blind/metaaligner.json" <<'PY'
import json, sys
card = json.load(open(sys.argv[1]))
card["objective_text"] = "withheld"   # edit_bench.py then prompts it with NO_OBJECTIVE_TEXT, as it was trained
json.dump(card, open(sys.argv[1], "w"), indent=2)
PY

# 5. ship it
DEST=metaaligner/data/demo_aligner
mkdir -p "$DEST"
cp "$RUN/aligner/adapter_model.safetensors" "$RUN/aligner/adapter_config.json" "$RUN/aligner/metaaligner.json" \
   "$RUN/aligner/training_log.jsonl" "$DEST/"
python - "$DEST/metaaligner.json" "$RUN" <<'PY'
import json, sys
path, run = sys.argv[1], sys.argv[2]
card = json.load(open(path))
card["made_by"] = f"scripts/train_demo_aligner.sh (RUN={run})"
# bare keys resolve in hh-rlhf first (its template; "helpfulness" is in two groups); the edit bench's
# keys (repeat, len, disclaimer, ...) are unique in their groups
card["objective_group"] = "hh-rlhf"
card["labels"] = ("rule scorers (metaaligner/editbench/checks.py): harmlessness = minus insult-word hits, "
                  "repeat = minus repeated sentences, len = minus filler sentences")
card["note"] = ("135M demonstration trained on damaged vs clean answers; measured by evaluation/edit_bench.py "
                "(edit_bench.md beside this file); not the paper's 1.1B-13B aligners.")
json.dump(card, open(path, "w"), indent=2)
from metaaligner.training.demo import plot_loss_curve
plot_loss_curve(f"{run}/aligner/training_log.jsonl", "docs/demo_aligner_loss.png",
                "demo aligner (LoRA on SmolLM2-135M-Instruct), edit-bench rule rewards")
PY

# 6. the edit bench on held-out answers
python evaluation/edit_bench.py --output_dir "$RUN/edit_bench" --rows "$ROWS" --seed 0 --png docs/edit_bench.png \
    --systems "copy,copy:guard,aligner=$DEST,aligner raw=$DEST:raw,base=embedded,base raw=embedded:raw,blind=$RUN/blind,human-preference mix=$RUN/mix"
cp "$RUN/edit_bench/edit_bench.json" "$RUN/edit_bench/edit_bench.md" "$DEST/"
