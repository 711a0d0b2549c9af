#!/usr/bin/env bash
# Every GPU check of issue 11 in one go, for a machine lent for a few minutes: the CUDA tests, the
# training-step benchmark (bf16/fp32, batches in memory / with the device-side augmentation, OGM-GE
# against none), GE alone, packed processes, and training end to end from a CREMA-D-shaped store
# with train.py (one run, and a packed sweep through hydra/launcher=pack).
#
#   bash scripts/gpu_checks.sh [core|extra|all]    # results under $OUT (default runs/gpu_checks)
#   PY=.venv/bin/python DEVICE=cpu QUICK=1 bash scripts/gpu_checks.sh all   # a dry run on the CPU
#
# core: what the targets need; extra: ablations (each speed setting off), torch.compile, and bf16
# against fp32 accuracy on toy (3 seeds, packed). train.py runs preload the store to the GPU (speed.preload=auto)
# except e2e_ogm_ge_reader and e2e_ogm_ge_w4 (4 kept worker processes), which read it from the host. Each step has its own time limit, logs to
# $WORK/results/<step>.log and the run goes on after a failure; $OUT/steps.tsv lists rc and seconds,
# and $OUT/gpu_checks.tar.gz (rewritten after each step) holds every log and JSON; at the end
# $OUT/report.md holds them as tables (scripts/gpu_report.py, which also reads an unpacked archive). BUDGET=<seconds>:
# steps that might not end within it are skipped (a lease is short; the order is the priority): set it about
# 50 s under the command's time limit, so that the report and the archive are written before it.
set -u
PART=${1:-core}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-runs/gpu_checks}
WORK=${WORK:-runs/gpu_work}   # the store (about 2.4 GB at full scale), the runs and the wheels' install
mkdir -p "$OUT" "$WORK" && OUT=$(cd "$OUT" && pwd) && WORK=$(cd "$WORK" && pwd)
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}  # the package without installing it (train.py, tests)
if [ -n "${QUICK:-}" ]; then  # the CPU dry run: tiny shapes, few steps, a small store
  SHAPE=tiny STEPS=3 WARM=1 REP=2 EVALB="8 16" EVALB1=16 SCALE=0.01 EPOCHS=2 MODEL="model=tiny model.width=8" BIG=8 EXTRA_TRAIN="dataset.image_size=32"
else
  SHAPE=cremad STEPS=50 WARM=15 REP=3 EVALB="64 256 1024" EVALB1=256 SCALE=1 EPOCHS=3 MODEL="model=resnet18" BIG=100 EXTRA_TRAIN=""
fi
B="$PY scripts/bench_train.py --shape $SHAPE --device $DEVICE"
T="dataset=custom dataset.root=$WORK/store dataset.selection_split=val $MODEL $EXTRA_TRAIN \
  precision=bf16 epochs=$EPOCHS device=$DEVICE ckpt_every=$EPOCHS"  # train.py on the store of step 'store'
G="modulation=ogm_ge modulation.alpha=0.8"  # CREMA-D's alpha

T0=$(date +%s)
BUDGET=${BUDGET:-100000}   # seconds for the whole script: a step that might not end in time is skipped
R=$WORK/results            # everything lands here; $OUT gets steps.tsv, all.log and one archive after each step
rm -rf "$R" && mkdir -p "$R"  # a rerun on a warm machine must not report the last run's files as its own
: >"$OUT/steps.tsv"; : >"$OUT/all.log"

step() {  # step NAME SECONDS CMD...: run with a time limit, log, record rc and seconds
  local name=$1 limit=$2; shift 2
  if [ $(( $(date +%s) - T0 + limit )) -gt "$BUDGET" ]; then
    printf "%s\tskipped (budget)\t0\n" "$name" | tee -a "$OUT/steps.tsv"; return
  fi
  local t0=$(date +%s%N)
  echo "=== $name: $*" | tee -a "$OUT/all.log"
  timeout -k 10 "$limit" bash -c "$*" >"$R/$name.log" 2>&1
  local rc=$? t1=$(date +%s%N)
  tail -n 12 "$R/$name.log" | tee -a "$OUT/all.log"
  printf "%s\t%s\t%d.%d\n" "$name" "$rc" $(( (t1 - t0) / 1000000000 )) $(( (t1 - t0) / 100000000 % 10 )) | tee -a "$OUT/steps.tsv"
  cp "$OUT/steps.tsv" "$R/" && tar -C "$R" -czf "$OUT/gpu_checks.tar.gz.part" . && mv "$OUT/gpu_checks.tar.gz.part" "$OUT/gpu_checks.tar.gz"
}

cuda_step() {  # a step with a CUDA-only benchmark flag (--cuda-graph, --parallel-encoders): skipped on a CPU dry run
  if [ "$DEVICE" = cpu ]; then printf "%s\tskipped (CUDA only)\t0\n" "$1" | tee -a "$OUT/steps.tsv"; return; fi
  step "$@"
}

core() {
  step env 60 "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true;
    $PY -c 'import torch, torchvision, sys; print(sys.version); print(torch.__version__, torchvision.__version__, torch.version.cuda, torch.cuda.is_available())'; nproc"
  # Hydra and OmegaConf for train.py and the tests, from wheels carried in .whl/ (README of the device tool);
  # a step of its own: without them every train.py step and the CUDA tests fail, and its log says why
  step wheels 60 "if [ -d .whl ]; then $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target $WORK/site .whl/*.whl; else echo 'no .whl folder here: carry it, or have Hydra installed'; fi;
    PYTHONPATH=$WORK/site:\$PYTHONPATH $PY -c 'import hydra, omegaconf, hydra_plugins.hydra_joblib_launcher, avbalance.trainer; print(\"Hydra\", hydra.__version__)'"
  [ -d .whl ] && export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
  # the order is the priority: what the last H200 run left open first (the CUDA-graph step, the profile,
  # the CUDA tests of preloading and graphs, train.py from a preloaded store), re-measurements after
  step bench_bf16_memory 110 "$B --precision bf16 --data memory --compare --repeats 2 --steps $STEPS --warmup $WARM \
    --eval-batch-size $EVALB1 --json $R/bench_bf16_memory.json"
  cuda_step graph_memory 90 "$B --precision bf16 --data memory --compare --repeats 2 --steps $STEPS --warmup $WARM --cuda-graph \
    --json $R/graph_memory.json"
  cuda_step graph_parallel 90 "$B --precision bf16 --data memory --compare --steps $STEPS --warmup $WARM --cuda-graph \
    --parallel-encoders --json $R/graph_parallel.json"
  step profile 90 "$B --precision bf16 --data memory --compare --steps $WARM --warmup $WARM --profile 20 \
    --json $R/profile.json"
  step tests_cuda 180 "$PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_speed.py tests/test_bench_train.py \
    tests/test_mslr.py tests/test_opm.py tests/test_preload.py tests/test_cuda_graph.py -k 'cuda or speed or bench or CUDA or preload or graph'"
  step store 90 "$PY scripts/make_bench_store.py --out $WORK/store --scale $SCALE"
  step e2e_ogm_ge 80 "$PY train.py $T $G hydra.run.dir=$WORK/runs/e2e_ogm_ge && cp $WORK/runs/e2e_ogm_ge/metrics.jsonl $R/e2e_ogm_ge.jsonl"
  step e2e_ogm_ge_graph 80 "$PY train.py $T $G speed.cuda_graph=true hydra.run.dir=$WORK/runs/e2e_graph && cp $WORK/runs/e2e_graph/metrics.jsonl $R/e2e_ogm_ge_graph.jsonl"
  step ge_micro 60 "$B --precision bf16 --steps 20 --warmup 5 --ge-micro --json $R/ge_micro.json"
  step checkpoint 60 "$PY scripts/bench_checkpoint.py --device $DEVICE --shape $SHAPE"
  cuda_step graph_augment 60 "$B --precision bf16 --data augment --compare --steps $STEPS --warmup $WARM --cuda-graph \
    --json $R/graph_augment.json"
  cuda_step graph_packed2 90 "$B --precision bf16 --data augment --modulation ogm_ge --steps $BIG --warmup $WARM --cuda-graph \
    --packed 2 --json $R/graph_packed2.json"
  step e2e_ogm_ge_reader 80 "$PY train.py $T $G speed.preload=off hydra.run.dir=$WORK/runs/e2e_reader && cp $WORK/runs/e2e_reader/metrics.jsonl $R/e2e_ogm_ge_reader.jsonl"
  step e2e_none 80 "$PY train.py $T modulation=none hydra.run.dir=$WORK/runs/e2e_none && cp $WORK/runs/e2e_none/metrics.jsonl $R/e2e_none.jsonl"
  cuda_step parallel_memory 60 "$B --precision bf16 --data memory --compare --steps $STEPS --warmup $WARM --parallel-encoders \
    --json $R/parallel_memory.json"
  step compile_ro 200 "$B --precision bf16 --data memory --compare --steps $STEPS --warmup $WARM --compile \
    --compile-mode reduce-overhead --json $R/compile_ro.json"
  step bench_bf16_augment 100 "$B --precision bf16 --data augment --compare --repeats $REP --steps $STEPS --warmup $WARM \
    --json $R/bench_bf16_augment.json"
  step packed4 120 "$B --precision bf16 --data augment --modulation ogm_ge --steps $BIG --warmup $WARM --packed 4 \
    --json $R/packed4.json"
  step e2e_pack4 180 "$PY train.py -m $T $G hydra/launcher=pack hydra.launcher.n_jobs=4 seed=0,1,2,3 \
    hydra.sweep.dir=$WORK/runs/pack4 && for d in $WORK/runs/pack4/*/; do cp \$d/metrics.jsonl $R/pack4_\$(basename \$d).jsonl; done"
  step bench_fp32_augment 80 "$B --precision fp32 --data augment --compare --steps $STEPS --warmup $WARM \
    --eval-batch-size $EVALB --json $R/bench_fp32_augment.json"
}

extra() {
  [ -d .whl ] && export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
  step compile 170 "$B --precision bf16 --data memory --compare --steps $STEPS --warmup $WARM --compile --json $R/compile.json"
  step ablate_plain 80 "$B --precision bf16 --data memory --compare --steps $STEPS --warmup $WARM \
    --no-channels-last --no-cudnn-benchmark --no-fused-optimizer --json $R/ablate_plain.json"
  step ablate_nchw 60 "$B --precision bf16 --data memory --steps $STEPS --warmup $WARM --no-channels-last --json $R/ablate_nchw.json"
  step e2e_ogm_ge_w4 80 "$PY train.py $T $G speed.preload=off num_workers=4 hydra.run.dir=$WORK/runs/e2e_w4 && cp $WORK/runs/e2e_w4/metrics.jsonl $R/e2e_ogm_ge_w4.jsonl"
  step packed2 90 "$B --precision bf16 --data augment --modulation ogm_ge --steps $BIG --warmup $WARM --packed 2 \
    --json $R/packed2.json"
  step toy_bf16_fp32 180 "$PY train.py -m hydra/launcher=pack hydra.launcher.n_jobs=6 device=$DEVICE precision=fp32,bf16 seed=0,1,2 \
    hydra.sweep.dir=$WORK/runs/toy_precision && for d in $WORK/runs/toy_precision/*/; do cp \$d/summary.json $R/toy_\$(basename \$d).json; done"
}

case $PART in
  core) core ;;
  extra) extra ;;
  all) core; extra ;;
  *) echo "usage: $0 [core|extra|all]"; exit 2 ;;
esac
# the tables for results/benchmarks.md (scripts/gpu_report.py), into the archive too
cp "$OUT/steps.tsv" "$R/"  # the skipped steps' lines too, for the report and the archive
$PY scripts/gpu_report.py "$R" --out "$R/report.md" && cp "$R/report.md" "$OUT/report.md"
# the archive is rewritten even if the report failed
tar -C "$R" -czf "$OUT/gpu_checks.tar.gz.part" . && mv "$OUT/gpu_checks.tar.gz.part" "$OUT/gpu_checks.tar.gz"
echo "=== steps (name, rc, seconds); results in $OUT/gpu_checks.tar.gz, tables in $OUT/report.md"; cat "$OUT/steps.tsv"
