#!/usr/bin/env bash
# The GPU check: correctness on CUDA, then the benchmarks, in one call of about 8 minutes.
#
#   bash benchmarks/gpu_check.sh                # on a machine with a CUDA GPU
#   bash benchmarks/gpu_check.sh --cpu-dry-run  # the same steps on a CPU: interpreter, tiny sizes
#
# 1. the Triton kernel against the float64 reference on CUDA (tests/test_triton.py, cuda
#    cases) and the optimizer around it: GradScaler skip on inf without a host sync, CUDA
#    graph capture and replay (tests/test_triton_cuda.py);
# 2. FSDP2 with adamlab.Yogi (DTensor parameters, foreach and fused, plus a
#    torch.distributed.checkpoint round trip): one rank on the GPU (nccl), and two CPU ranks
#    (gloo) since one GPU cannot hold two nccl ranks;
# 3. python -m adamlab.bench.gpu: issue 6's table, with copy bandwidth measured in the same
#    process and the first fused step in a new process;
# 4. the host work of an eager step, launch stubbed (benchmarks/gpu/host_time_cpu.py);
# 5. the lab's own command, adamlab bench --device cuda, on two of its sets;
# 6. issue 14: the low-precision states (bf16, 8-bit) of the fused path against torch's fused
#    fp32 Adam on the H200 sets (goal <= 0.65x), with bitsandbytes' and torchao's 8-bit Adams
#    where installed (pip install 'adamlab[bench]'), state bytes per parameter per row.
# Logs and JSON go to $OUT (default: /tmp/adamlab-gpu-check); a short summary is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--cpu-dry-run" ]] && DRY=1
OUT="${OUT:-/tmp/adamlab-gpu-check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [[ $DRY == 1 ]]; then
  PY="${PY:-.venv/bin/python}"
  TESTS=(tests/test_triton.py -k "interpreter and (default or found_inf or unaligned)")
  BENCH=(--cpu-dry-run --no-sweep)
  export CUDA_VISIBLE_DEVICES=""
else
  PY="${PY:-python3}"
  TESTS=(tests/test_triton.py tests/test_triton_cuda.py tests/test_amp_cuda.py tests/test_compile_cuda.py
         tests/test_distributed_cuda.py -k "not interpreter")
  BENCH=(--no-sweep)
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/nvidia-smi.txt"
fi
"$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"

echo "== 1. correctness on the device"
timeout 200 "$PY" -m pytest -q -p no:cacheprovider -rfEs "${TESTS[@]}" --junitxml="$OUT/pytest.xml" 2>&1 | tee "$OUT/pytest.log"
TEST_RC=${PIPESTATUS[0]}

echo "== 2. FSDP2"
timeout 60 "$PY" benchmarks/gpu/fsdp2_check.py 2>&1 | tee "$OUT/fsdp2.log"
TORCHRUN=("$PY" -m torch.distributed.run --nproc-per-node 2 --master-port 29544)
CUDA_VISIBLE_DEVICES="" timeout 60 "${TORCHRUN[@]}" benchmarks/gpu/fsdp2_check.py 2>&1 | grep -E "PASS|FAIL|Error" | tee -a "$OUT/fsdp2.log"

echo "== 3. benchmark"
timeout 270 "$PY" -m adamlab.bench.gpu "${BENCH[@]}" --json "$OUT/gpu_bench.json" 2>&1 | tee "$OUT/bench.log"
BENCH_RC=${PIPESTATUS[0]}

if [[ $DRY == 0 ]]; then
  echo "== 4. host work of one eager fused step, launch stubbed (2 tiny tensors, 4000 small ones)"
  timeout 90 "$PY" benchmarks/gpu/host_time_cpu.py 2>&1 | tee "$OUT/host_time.log"
  echo "== 5. the lab command on the GPU: adamlab bench --device cuda (two of its sets)"
  timeout 120 "$PY" -m adamlab.bench --device cuda --set many-small --set linear-2 --repeats 5 \
    --no-first-step --out "$OUT/lab-bench" 2>&1 | tee "$OUT/lab_bench.log"
  LAB_RC=${PIPESTATUS[0]}
  echo "== 6. state precision (issue 14): bf16 and 8bit fused vs torch fused fp32, H200 sets"
  timeout 240 "$PY" -m adamlab.bench --device cuda --set one-large --set gpt-like --set many-small \
    --impl "fused=True" --impl bitsandbytes --impl torchao --warmup 2 --repeats 5 --no-first-step \
    --out "$OUT/precision-bench" 2>&1 | tee "$OUT/precision_bench.log"
  PREC_RC=${PIPESTATUS[0]}
fi

echo
echo "== summary"
tail -n 1 "$OUT/pytest.log" | sed "s/^/pytest (rc $TEST_RC): /"
grep -E "^(PASS|FAIL)" "$OUT/fsdp2.log" | sed "s/(.*)//" | sort | uniq -c
echo "bench rc $BENCH_RC${LAB_RC:+, adamlab bench --device cuda rc $LAB_RC}${PREC_RC:+, precision bench rc $PREC_RC}"
[[ -f "$OUT/host_time.log" ]] && cat "$OUT/host_time.log"
sed -n '/^| parameter set/,$p' "$OUT/bench.log"
[[ -f "$OUT/precision_bench.log" ]] && grep -E "^\| (--set|one-large|gpt-like|many-small) " "$OUT/precision_bench.log"
