#!/usr/bin/env bash
# The GPU path in one short run (about 8 minutes on one H100/H200): the student experiment's code on CB (teacher
# fine-tuning, `bort pretrain --init source`, task distillation, Agora with hard and soft labels, the uniform
# control, export and the side-by-side timing), `bort pretrain`'s throughput against a stock Trainer, and `bort
# bench --device cuda`. Each part has its own time limit, so one failure does not hide the others.
#
#   bash benchmarks/gpu_check.sh DATA_DIR OUT_DIR     # DATA_DIR: the layout of ../shared/data (superglue/CB, text/)
#
# bort must be importable (pip install -e . beside your CUDA build of torch); the embedded MiniLM is the teacher.
set -u
data=${1:?DATA_DIR}; out=${2:?OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
here=$(dirname "$0")
minilm=$(python3 -c "from bort.io import default_source; print(default_source())")
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

echo "== 1. the student experiment's code on CB (1 seed, a 300-step student)"
timeout 180 python3 "$here/bench_student.py" --tasks CB --seeds 0 --pretrain-steps 300 --arch 2,12,384,384 \
  --data-dir "$data" --output "$out/student" --record "$out/student_record.json" 2>&1 | tail -12

echo "== 2. pre-training throughput, the MiniLM teacher live in the loop vs a stock Trainer"
for batch in 16 64; do
  timeout 80 python3 "$here/bench_pretrain.py" --throughput-only --arch 2,12,384,768 --batch-size "$batch" \
    --rounds 2 --corpus "$data/text/wikitext-2" --out "$out/pretrain-$batch" 2>&1 | tail -6
done

echo "== 3. bort bench --device cuda: eager, then compiled"
python3 - "$out/student.json" "$minilm" <<'EOF'
import json, sys
config = json.load(open(f"{sys.argv[2]}/config.json"))  # the 4x student's shape, random weights: speed only
config.update(num_hidden_layers=2, num_attention_heads=12, hidden_size=384, intermediate_size=384)
json.dump(config, open(sys.argv[1], "w"), indent=1)
EOF
timeout 80 python3 -m bort.cli bench --models bert-large bert-base "minilm=$minilm" "student=$out/student.json" \
  --runtime torch --device cuda --batch-size 1 32 --seq-len 128 --repeats 50 --json "$out/bench_eager.json" 2>&1 \
  | tail -14
timeout 100 python3 -m bort.cli bench --models "minilm=$minilm" "student=$out/student.json" \
  --runtime torch compile --device cuda --batch-size 1 32 --seq-len 128 --repeats 50 \
  --json "$out/bench_compile.json" 2>&1 | tail -10
