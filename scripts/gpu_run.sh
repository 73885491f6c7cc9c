#!/usr/bin/env bash
# jdlm on one or several NVIDIA GPUs, on one host or several: install, then run any jdlm command over the GPUs.
# --dry-run prints the commands instead of running them. See docs/scaling.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/gpu_run.sh [options] [--] JDLM_COMMAND [ARGS...]

Runs `python -m jdlm JDLM_COMMAND ARGS` over the chosen GPUs. jdlm eval and bench spread their work over every
visible GPU (data parallel by default; add --mesh data=N,model=M to split the model too); generate and chat use
one. Several hosts: run the same line on every host with its own --node-rank; they join one JAX run through
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (jdlm.sharding.initialize_distributed).

options:
  --gpus LIST          GPUs of this host to use, e.g. 0,1 (default: all; sets CUDA_VISIBLE_DEVICES)
  --nodes N            hosts in the run (default 1)
  --node-rank I        this host's index, 0 .. N-1 (needed with --nodes > 1)
  --coordinator H:P    host:port of rank 0, reachable from every host (needed with --nodes > 1)
  --setup              first pip install this source tree with jax[cuda12]
  --python PYTHON      interpreter (default python3)
  --dry-run            print the commands instead of running them
  -h, --help           this help

examples:
  scripts/gpu_run.sh --setup bench --random llada-8b
  scripts/gpu_run.sh --gpus 0 generate --model ~/jdlm/llada-8b "What is 17 * 23?"
  scripts/gpu_run.sh --gpus 0,1 bench --random llada-8b --mesh model=2 --batch-size 8
  scripts/gpu_run.sh --gpus 0,1 eval --model ~/jdlm/llada-8b --task sudoku --batch-size 32
  # two hosts with 8 GPUs each: tensor parallel inside a host, data parallel across hosts
  scripts/gpu_run.sh --nodes 2 --node-rank 0 --coordinator 10.0.0.1:12345 bench --random llada-8b --mesh model=8
  scripts/gpu_run.sh --nodes 2 --node-rank 1 --coordinator 10.0.0.1:12345 bench --random llada-8b --mesh model=8
EOF
}

die() { echo "error: $*" >&2; exit 2; }
value() { [[ $# -ge 2 && -n $2 && $2 != -* ]] || die "$1 needs a value (see --help)"; echo "$2"; }

GPUS=""
NODES=1
RANK=""
COORDINATOR=""
SETUP=0
PYTHON=python3
DRY_RUN=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpus) GPUS=$(value "$@"); shift 2 ;;
    --nodes) NODES=$(value "$@"); shift 2 ;;
    --node-rank) RANK=$(value "$@"); shift 2 ;;
    --coordinator) COORDINATOR=$(value "$@"); shift 2 ;;
    --setup) SETUP=1; shift ;;
    --python) PYTHON=$(value "$@"); shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (see scripts/gpu_run.sh --help)" ;;
    *) break ;;
  esac
done
[[ $# -gt 0 || $SETUP == 1 ]] ||
  die "no jdlm command given, e.g. scripts/gpu_run.sh bench --random llada-8b (see --help)"
[[ -z $GPUS || $GPUS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpus $GPUS: expected GPU indices like 0 or 0,1,2,3"
[[ $NODES =~ ^[1-9][0-9]*$ ]] || die "--nodes $NODES: expected a positive integer"
if [[ $NODES -gt 1 ]]; then
  [[ -n $COORDINATOR ]] || die "--nodes $NODES needs --coordinator HOST:PORT (rank 0's address, the same on every host)"
  [[ $COORDINATOR =~ ^[^:]+:[0-9]+$ ]] || die "--coordinator $COORDINATOR: expected HOST:PORT"
  [[ $RANK =~ ^[0-9]+$ && $RANK -lt $NODES ]] || die "--nodes $NODES needs --node-rank I with 0 <= I < $NODES"
elif [[ -n $RANK || -n $COORDINATOR ]]; then
  die "--node-rank and --coordinator are for runs over several hosts; add --nodes N"
fi

# The words as one command line for a shell: a word with characters the shell treats specially in single quotes.
quote() {
  local out="" word q="'"
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+="$word "; else out+="'${word//$q/$q\\\\$q$q}' "; fi
  done
  echo "${out% }"
}

# Prints the command (shell-quoted, one line) with --dry-run, else runs it.
run() {
  if [[ $DRY_RUN == 1 ]]; then quote "$@"; else "$@"; fi
}

src=$(cd "$(dirname "$0")/.." && pwd)
if [[ $SETUP == 1 ]]; then
  run "$PYTHON" -m pip install -e "$src[gpu]"
fi
[[ $# -gt 0 ]] || exit 0

environment=()
[[ -n $GPUS ]] && environment+=("CUDA_VISIBLE_DEVICES=$GPUS")
if [[ $NODES -gt 1 ]]; then
  environment+=("JAX_COORDINATOR_ADDRESS=$COORDINATOR" "JAX_NUM_PROCESSES=$NODES" "JAX_PROCESS_ID=$RANK")
fi
if [[ ${#environment[@]} -gt 0 ]]; then
  run env "${environment[@]}" "$PYTHON" -m jdlm "$@"
else
  run "$PYTHON" -m jdlm "$@"
fi
