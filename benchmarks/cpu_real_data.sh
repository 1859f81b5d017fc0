#!/usr/bin/env bash
# Issue 16 on a CPU: SparseNet vs DenseNet, and ours vs the PyTorch peer, on real CIFAR-10
# (the q75 JPEG file or a subset of it, benchmarks/packed_subset.py), one run at a time so
# each run's images/s is its own:
#   1. ours, each of MODELS with --seeds SEEDS (the replicas in one program);
#   2. the peer (benchmarks/torch_train.py) on PEER, seed by seed, same flags and data.
# Every run uses the cifar10-cpu recipe with --epochs EPOCHS (its cosine schedule scaled to it).
#
# Usage (repository root, the [bench] extra installed):
#   OUT=results-dir bash benchmarks/cpu_real_data.sh DATA.npz
# then: python benchmarks/real_data_report.py results-dir --out results-dir/curves.png
set -euo pipefail
DATA=$1
OUT=${OUT:-runs/cpu-real-data}
WORK=${WORK:-/tmp/cpu-real-data}
EPOCHS=${EPOCHS:-3}
SEEDS=${SEEDS:-2}
MODELS=${MODELS:-sparsenet-28-12 densenet-28-6}
PEER=${PEER:-sparsenet-28-12}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
COMMON=(--recipe cifar10-cpu --dataset folder --data-dir "$DATA" --epochs "$EPOCHS"
	--keep-checkpoints 1 --progress false ${TRAIN_EXTRA:-})
say() { echo "[$(date +%T)] $*" | tee -a "$OUT/logs.txt"; }

{
	lscpu | grep -E 'Model name|^CPU\(s\)'
	python -c 'import importlib.metadata as m; print({p: m.version(p) for p in ("jax", "jaxlib", "flax", "optax", "torch", "numpy")})'
	git rev-parse --short HEAD
} >"$OUT/machine.txt" 2>&1
for model in $MODELS; do
	say "ours: $model, --seeds $SEEDS (load before: $(cut -d' ' -f1-3 /proc/loadavg))"
	python -m sparsenet_jax.train "${COMMON[@]}" --model "$model" --seeds "$SEEDS" \
		--workdir "$WORK/$model-0" >"$WORK/$model.log" 2>&1
	say "$(grep '^done:' "$WORK/$model.log")"
done
for seed in $(seq 0 $((SEEDS - 1))); do
	say "peer: $PEER seed $seed (load before: $(cut -d' ' -f1-3 /proc/loadavg))"
	python benchmarks/torch_train.py "${COMMON[@]}" --preset "$PEER" --seed "$seed" \
		--device cpu --out "$WORK/torch-$PEER-$seed.jsonl" >"$WORK/torch-$seed.log" 2>&1
	say "$(tail -1 "$WORK/torch-$PEER-$seed.jsonl" | cut -c1-300)"
done
python benchmarks/merge_records.py "$WORK" "$OUT" $MODELS
cat "$WORK"/torch-"$PEER"-*.jsonl >"$OUT/torch-$PEER.jsonl"
say "done"
