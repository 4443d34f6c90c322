#!/usr/bin/env bash
# The GPU figures of issues 3, 4, 6 and 7 in one prepared command, for a session that is lent a
# device machine (15 minutes of device time, 10 minutes a command). Each part runs under its own
# time cap, appends its output to $OUT/device.log and copies its tables into $OUT (at most 8
# files come back), so that a part that runs long costs its cap and nothing after it.
#
#   bash benchmarks/device_session.sh [PART ...]
#
# Parts and caps (seconds; override with CAP_<PART>=N). The default parts' caps sum to 570 s, one
# device command (600 s at most); leaderboard is a second call or a later session:
#   machine          nvidia-smi, torch and CUDA versions                               default   10
#   fusions          benchmarks/fusions.py on CUDA, float32 at batch 128, 2-D and 3-D,
#                    block.bootstrap side by side when importable (issue 3)            default   70
#   fusions_bf16     the same at batch 2048 (2-D), bf16 autocast, against a square GEMM
#                    of the same weight count, block side by side, eager and as CUDA-graph
#                    replays (issue 3's GPU target)                                    default 70
#   fusions_compile  batch 2048, bf16, torch.compile column (mmfuse only; compiling is
#                    slow, so the rows it reaches in its cap)                         default  110
#   attention        benchmarks/attention.py on CUDA: K 36 and 100, float32 and bf16
#                    (issue 4)                                                         default   90
#   throughput       mmfuse run --only lxmert (the main job's best model) on region
#                    features, 30 s of training (the data build and the test come on
#                    top): samples/s (issue 6)                                         default   60
#   pixels           mmfuse run --pixels --only lxmert (CNN keypoints, the from-pixels
#                    model that met issue 6's target on the CPU), 2 minutes of training:
#                    its GPU samples/s and how far it gets                             default  160
#   profile          benchmarks/profile_fusions.py: MFH, BLOCK, Tucker, MCB (issue 3's misses)
#                    and MLB at batch 2048, bf16: eager vs CUDA-graph time, kernels, GEMM
#                    share, top kernels, against the square GEMM: why they miss             120
#   ablations        benchmarks/gpu_ablations.py: each of session 12's GPU fixes (MCB's
#                    closed-form backward, Tucker's aligned GEMMs, BLOCK's GPU tile, the
#                    Triton power-normalize) and session 13's fused MFB / MFH tail against the
#                    code it replaced, eager and graph                                           120
#   kernels_cuda     tests/test_kernels.py on CUDA: the Triton kernels' values and gradients
#                    against the torch ops, the CUDA-only fusion paths against the CPU,
#                    compile and export with the kernels; log in $OUT/pytest_cuda.txt              90
#   leaderboard_rate two 2.5-minute leaderboard parts, 3 seeds: 14 workers training on the
#                    host's CPU cores, then 8 workers training on the GPU: entries per minute
#                    each way, for issue 7's 10-minute target                                   400
#   leaderboard      mmfuse bench leaderboard, every CPU task, 3 seeds, --max-minutes 6,
#                    --workers 8 (LB_WORKERS): a resumable part; run it again to continue
#                    (issue 7)                                                                  420
#   leaderboard_pixels  the soc_pixels task (from pixels, the GPU-sized entries), 3 seeds,
#                    --workers 8 on the GPU, --max-minutes its cap's less 60 s (LB_MINUTES
#                    sets it): one resumable part. It starts
#                    from docs/leaderboard/soc-pixels-results.json (what earlier sessions
#                    trained, on a GPU or a CPU: each entry names its machine) and returns the
#                    merged results.json as soc_pixels_results.json: commit it over that
#                    file, so that parts add up across sessions (issue 7). Session 17: on the
#                    H200 no entry finished within 6.7 minutes with 8 workers (batches of 64 are
#                    host-bound there: docs/BENCHMARKS.md), so one command adds little      420
#   leaderboard_soc  the soc task alone with --input-norm layer and 24 epochs (3x its budget:
#                    most attention fusions sit at the shape-count plateau through 8 epochs,
#                    docs/BENCHMARKS.md), 3 seeds, --max-minutes 6, resumable (issue 7)        420
# SESSION_S=N bounds the whole script to N seconds: each part's cap is cut to what is left, and a
# part with under 15 s left is skipped, so that one device command (600 s at most) ends with its
# files copied however long the parts before took: `SESSION_S=570 bash benchmarks/device_session.sh ...`.
# Each JSON table is rewritten after every row, so a part stopped at its cap keeps what it
# measured; the two training runs' run.json and metrics.csv come back in $OUT/runs.tar.gz.
#
# On the device machine python3 holds torch, lightning, matplotlib, safetensors and pyyaml; the
# package runs from the working tree (PYTHONPATH). block.bootstrap.pytorch travels as wheels:
# here, `pip download --no-deps -d .whl block-bootstrap-pytorch==0.1.6 bootstrap.pytorch`
# (pure Python) and name `.whl` in the device call's carry; they are installed to /tmp/site.
# On a CPU-only machine `DEVICE=cpu SMOKE=1` runs every part at toy sizes to check the plumbing.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/mmfuse-device}
DEVICE=${DEVICE:-cuda}
SMOKE=${SMOKE:-0}
PY=${PY:-python3}
WORK=${WORK:-/tmp/mmfuse-device-work}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$OUT/device.log"

if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

# cap_of NAME DEFAULT_CAP: the part's cap in seconds: CAP_<NAME> or the default, cut to what is left
# of SESSION_S (the whole script's budget, when set: a device command's limit less a margin for the
# transfers), less 10 s for the kill grace; 0 when under 15 s are left
cap_of() {
    local var="CAP_${1^^}" cap=$2
    cap=${!var:-$cap}
    if [ -n "${SESSION_S:-}" ]; then
        local left=$((SESSION_S - SECONDS))
        if [ "$left" -lt 15 ]; then cap=0; elif [ "$cap" -gt $((left - 10)) ]; then cap=$((left - 10)); fi
    fi
    echo "$cap"
}

# part NAME DEFAULT_CAP COMMAND...: run COMMAND under the cap, its output appended to the log
part() {
    local name=$1 cap
    cap=$(cap_of "$1" "$2")
    shift 2
    if [ "$cap" -le 0 ]; then
        echo "== $name: skipped: $((SESSION_S - SECONDS))s left of SESSION_S=$SESSION_S" | tee -a "$LOG"
        return
    fi
    echo "== $name: cap ${cap}s: $*" | tee -a "$LOG"
    local start=$SECONDS
    timeout --signal=INT --kill-after=10 "$cap" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "== $name: rc $rc after $((SECONDS - start))s" | tee -a "$LOG"
}

copy() { [ -f "$1" ] && cp "$1" "$OUT/$2"; }

if [ "$SMOKE" = 1 ]; then
    F32=(--fusions "mlb,block" --batch 8 --repeat 1 --rounds 1)
    BF16=(--fusions "mlb,block" --batch 8 --repeat 1 --rounds 1 --no-block --cuda-graph)
    COMPILE=(--fusions "mlb" --batch 8 --repeat 1 --rounds 1 --no-block --shapes 2d)
    ATT=(--fusions "san,ban" --quick)
    RUN=(--epochs 1 --n-train 40)
    PIX=(--only lxmert --epochs 1 --n-train 40)
    PROFILE=(--fusions "mlb" --batch 8 --repeat 1 --steps 1 --top 3)
    ABL=(--batch 8 --repeat 1)
    LB=(--quick --fusions "concat,mlb" --n-train 40 --epochs 1)
    RATE=(--quick --fusions "concat,mlb" --n-train 40 --epochs 1 --no-plots)
    LB_SOC=(--fusions "concat,san" --seeds 1 --n-train 40 --epochs 1)
    LB_PIX=(--fusions "concat,mlb" --seeds 1 --n-train 40 --n-test 20 --epochs 1 --no-plots --workers 2)
    KERNEL_TESTS=(tests/test_kernels.py -k dispatch)
else
    F32=(--batch 128 --rounds 3 --repeat 5)
    BF16=(--batch 2048 --shapes 2d --autocast bf16 --square-baseline --cuda-graph --rounds 3 --repeat 5)
    COMPILE=(--fusions "mlb,mfh,mutan,block,tucker,block_tucker,mcb,mfb" --batch 2048 --shapes 2d --autocast bf16 --compile --no-block --rounds 1 --repeat 5)
    ATT=(--no-compile)
    RUN=(--train.max_minutes 0.5)
    PIX=(--only lxmert --train.max_minutes 2)
    PROFILE=()
    ABL=()
    # ends cleanly inside its cap; rerun the part to continue. --workers: 8 fusions at a time on the
    # 16-core host (session 12: one at a time made 11 entries in 151 s, 406 left)
    LB=(--seeds 3 --max-minutes "${LB_MINUTES:-6}" --workers "${LB_WORKERS:-8}" --accelerator "${LB_ACCEL:-auto}")
    RATE=(--seeds 3 --max-minutes 2.5 --no-plots)
    LB_SOC=(--seeds 3 --epochs 24 --max-minutes 6)
    LB_PIX=(--seeds 3 --workers "${LB_WORKERS:-8}" --no-plots)
    KERNEL_TESTS=(tests/test_kernels.py)
fi
PIX_RESULTS=${PIX_RESULTS:-docs/leaderboard/soc-pixels-results.json}
MICRO_EXTRA=()
[ "$DEVICE" = cpu ] && MICRO_EXTRA=(--no-memory)

run_part() {
    case $1 in
        machine)
            part machine 10 bash -c "nvidia-smi 2>/dev/null || echo 'no nvidia-smi'; $PY -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available())'"
            ;;
        fusions)
            part fusions 70 "$PY" benchmarks/fusions.py --device "$DEVICE" "${F32[@]}" "${MICRO_EXTRA[@]}" --json "$WORK/fusions_f32.json"
            copy "$WORK/fusions_f32.json" fusions_f32.json
            ;;
        fusions_bf16)
            part fusions_bf16 70 "$PY" benchmarks/fusions.py --device "$DEVICE" "${BF16[@]}" "${MICRO_EXTRA[@]}" --json "$WORK/fusions_bf16.json"
            copy "$WORK/fusions_bf16.json" fusions_bf16.json
            ;;
        fusions_compile)
            part fusions_compile 110 "$PY" benchmarks/fusions.py --device "$DEVICE" "${COMPILE[@]}" "${MICRO_EXTRA[@]}" --json "$WORK/fusions_compile.json"
            copy "$WORK/fusions_compile.json" fusions_compile.json
            ;;
        attention)
            part attention 90 "$PY" benchmarks/attention.py --device "$DEVICE" "${ATT[@]}" --json "$WORK/attention.json"
            copy "$WORK/attention.json" attention.json
            ;;
        throughput)
            part throughput 60 "$PY" -m mmfuse run --only lxmert --out "$WORK/run" "${RUN[@]}" --train.progress_bar false
            copy "$WORK/run/leaderboard.md" run_dan.md
            ;;
        pixels)
            part pixels 160 "$PY" -m mmfuse run --pixels --out "$WORK/pixels" "${PIX[@]}" --train.progress_bar false
            copy "$WORK/pixels/leaderboard.md" pixels.md
            ;;
        profile)
            part profile 120 "$PY" benchmarks/profile_fusions.py --device "$DEVICE" "${PROFILE[@]}" --json "$WORK/profile.json"
            copy "$WORK/profile.json" profile.json
            ;;
        ablations)
            part ablations 120 "$PY" benchmarks/gpu_ablations.py --device "$DEVICE" "${ABL[@]}" --json "$WORK/gpu_ablations.json"
            copy "$WORK/gpu_ablations.json" gpu_ablations.json
            ;;
        kernels_cuda)
            part kernels_cuda 90 "$PY" -m pytest -q -p no:cacheprovider "${KERNEL_TESTS[@]}"
            sed -n '/== kernels_cuda: cap/,/== kernels_cuda: rc/p' "$LOG" > "$OUT/pytest_cuda.txt"
            ;;
        leaderboard_rate)
            part leaderboard_cpu 200 "$PY" -m mmfuse bench leaderboard --device "$DEVICE" --out "$WORK/lb_cpu" \
                "${RATE[@]}" --workers 14 --accelerator cpu
            copy "$WORK/lb_cpu/leaderboard.md" leaderboard_cpu.md
            part leaderboard_gpu 200 "$PY" -m mmfuse bench leaderboard --device "$DEVICE" --out "$WORK/lb_gpu" \
                "${RATE[@]}" --workers 8 --accelerator "$( [ "$DEVICE" = cpu ] && echo cpu || echo gpu )"
            copy "$WORK/lb_gpu/leaderboard.md" leaderboard_gpu.md
            ;;
        leaderboard)
            part leaderboard 420 "$PY" -m mmfuse bench leaderboard --device "$DEVICE" --out "$WORK/leaderboard" "${LB[@]}"
            copy "$WORK/leaderboard/leaderboard.md" leaderboard.md
            ;;
        leaderboard_pixels)
            mkdir -p "$WORK/leaderboard_pixels"
            [ -f "$PIX_RESULTS" ] && cp "$PIX_RESULTS" "$WORK/leaderboard_pixels/results.json"
            # no entry starts that would end past the cap: its minutes less 60 s for the data and the merge
            local minutes=${LB_MINUTES:-$(awk -v c="$(cap_of leaderboard_pixels 420)" 'BEGIN { m = (c - 60) / 60; print (m > 0 ? m : 0) }')}
            part leaderboard_pixels 420 "$PY" -m mmfuse bench leaderboard --tasks soc_pixels --device "$DEVICE" \
                --accelerator "$( [ "$DEVICE" = cpu ] && echo cpu || echo gpu )" --out "$WORK/leaderboard_pixels" \
                --max-minutes "$minutes" "${LB_PIX[@]}"
            copy "$WORK/leaderboard_pixels/leaderboard.md" leaderboard_pixels.md
            copy "$WORK/leaderboard_pixels/results.json" soc_pixels_results.json
            ;;
        leaderboard_soc)
            part leaderboard_soc 420 "$PY" -m mmfuse bench leaderboard --tasks soc --input-norm layer --device "$DEVICE" \
                --out "$WORK/leaderboard_soc" "${LB_SOC[@]}"
            copy "$WORK/leaderboard_soc/leaderboard.md" leaderboard_soc.md
            ;;
        *)
            echo "device_session: unknown part '$1' (machine fusions fusions_bf16 fusions_compile attention throughput pixels profile ablations kernels_cuda leaderboard_rate leaderboard leaderboard_pixels leaderboard_soc)" | tee -a "$LOG"
            return 2
            ;;
    esac
}

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(machine fusions fusions_bf16 fusions_compile attention throughput pixels)
for p in "${parts[@]}"; do
    run_part "$p"
done
# the training runs' own records (samples/s, per-epoch validation), one file for the 8-file limit
runs=$(cd "$WORK" && find run pixels leaderboard leaderboard_soc lb_cpu lb_gpu \( -name run.json -o -name metrics.csv -o -name results.json \) 2>/dev/null)
[ -n "$runs" ] && (cd "$WORK" && tar czf "$OUT/runs.tar.gz" $runs)
echo "== done: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$LOG"
