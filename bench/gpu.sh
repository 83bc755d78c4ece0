#!/usr/bin/env bash
# The CUDA check, for a machine with one NVIDIA GPU and torch, typer, sentencepiece, sacrebleu and rich:
# the Multi30k recipe (de->en) trained on the GPU with bf16 autocast for 2 minutes, in fp32 for 1 minute,
# and with bf16 and 4x the batch for 1 minute; how busy an update keeps the GPU (bench/gpu_profile.py);
# then the 2-minute model's translation speed on the GPU.
#
#   bash bench/gpu.sh ../shared/data/multi30k /tmp/gpu-check
#
# Each run's log (stderr, with tokens/s every 50 updates) and metrics.jsonl land in OUT_DIR; the
# checkpoints stay in a scratch folder. Training speed: the median of the logged windows, which leave
# validation out. A stage that fails is reported and the next one still runs.
set -u
data=${1:?usage: bench/gpu.sh DATA_DIR OUT_DIR}
out=${2:?usage: bench/gpu.sh DATA_DIR OUT_DIR}
runs=$(mktemp -d)
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'
} > "$out/machine.txt" 2>&1

train() {  # name, then options for seq2seq train
    local name=$1
    shift
    python3 -m seq2seq train --config data/recipes/multi30k.toml --device cuda \
        --source "$data/train.de.gz" --target "$data/train.en.gz" \
        --valid-source "$data/val.de.gz" --valid-target "$data/val.en.gz" \
        --output "$runs/$name" "$@" 2> "$out/$name.log" || echo "train $name failed: exit $?"
    cp "$runs/$name/metrics.jsonl" "$out/$name.metrics.jsonl" 2>/dev/null
    python3 - "$out/$name.log" <<'EOF'
import re, statistics, sys
name = sys.argv[1]
speeds = [float(m.replace(",", "")) for m in re.findall(r"([\d,.]+) tgt tok/s", open(name).read())]
if speeds:
    print(f"{name}: median {statistics.median(speeds):,.0f} target tokens/s over {len(speeds)} windows "
          f"(min {min(speeds):,.0f}, max {max(speeds):,.0f})")
EOF
}

train bf16-2min --precision bf16 --max-time 2
train fp32-1min --precision fp32 --max-time 1
train bf16-batch16k-1min --precision bf16 --max-time 1 --batch-tokens 16000

python3 bench/gpu_profile.py --data "$data" > "$out/profile.md" 2>&1 || echo "gpu_profile failed: exit $?"

python3 bench/translate_speed.py --model "$runs/bf16-2min/best.pt" --data "$data" --device cuda \
    --beams 1 5 --batch-sizes 64 --repeats 3 --variants fp32 bf16 > "$out/translate.md" 2>&1 \
    || echo "translate_speed failed: exit $?"
cat "$out/machine.txt" "$out/profile.md" "$out/translate.md"
rm -rf "$runs"
