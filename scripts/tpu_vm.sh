#!/usr/bin/env bash
# Cloud TPU VM for jdlm: create, install, copy or convert a model, decode, evaluate, benchmark, delete.
# Every step is one gcloud command; --dry-run prints them instead of running them. See docs/scaling.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/tpu_vm.sh [options] COMMAND [ARGS...]

Runs jdlm on a Cloud TPU VM (one host, e.g. v4-8 / v5litepod-8, or a pod slice of several hosts: every
command that runs jdlm runs it on all workers, which join one JAX run through JDLM_DISTRIBUTED=1).

commands:
  create                      create the TPU VM
  setup                       copy this jdlm source tree to every worker, pip install it with jax[tpu]
  copy LOCAL_DIR [REMOTE]     copy a converted jdlm checkpoint to every worker (default models/NAME; paths
                              on the workers are relative to the home directory)
  convert FAMILY SRC DST      convert a Hugging Face checkpoint already on the workers (llada or dream); the
                              conversion streams tensor by tensor on the host and never uses TPU memory
  decode MODEL PROMPT [ARGS]  jdlm generate on worker 0 (one chip; the model must fit in its memory)
  eval MODEL [ARGS]           jdlm eval on all workers, over every chip of the slice (--mesh to choose)
  bench MODEL [ARGS]          jdlm bench on all workers, over every chip of the slice (--mesh to choose);
                              MODEL "random": random weights at LLaDA-8B shapes, no checkpoint needed
  ssh [COMMAND]               a shell (or one command) on worker 0
  delete                      delete the TPU VM

options (or the environment variable in brackets):
  --name NAME        TPU VM name [TPU_NAME] (default jdlm-tpu)
  --zone ZONE        zone [TPU_ZONE] (default us-central2-b)
  --type TYPE        accelerator type [TPU_TYPE] (default v4-8)
  --version VERSION  TPU software version [TPU_VERSION] (default tpu-ubuntu2204-base)
  --project PROJECT  Google Cloud project [TPU_PROJECT] (default: gcloud's configured project)
  --mesh SPEC        data=N,model=M for eval and bench (default: every chip, data parallel)
  --dry-run          print the commands instead of running them
  -h, --help         this help

examples:
  scripts/tpu_vm.sh --type v4-8 create
  scripts/tpu_vm.sh setup
  scripts/tpu_vm.sh copy ~/jdlm/llada-8b
  scripts/tpu_vm.sh decode models/llada-8b "What is 17 * 23?" --gen-length 128
  scripts/tpu_vm.sh --mesh model=4 bench models/llada-8b --batch-size 8
  scripts/tpu_vm.sh --type v4-32 --dry-run bench random --batch-size 32   # prints the commands only
  scripts/tpu_vm.sh delete
EOF
}

die() { echo "error: $*" >&2; exit 2; }

NAME=${TPU_NAME:-jdlm-tpu}
ZONE=${TPU_ZONE:-us-central2-b}
TYPE=${TPU_TYPE:-v4-8}
VERSION=${TPU_VERSION:-tpu-ubuntu2204-base}
PROJECT=${TPU_PROJECT:-}
MESH=""
DRY_RUN=0

value() { [[ $# -ge 2 && -n $2 && $2 != -* ]] || die "$1 needs a value (see --help)"; echo "$2"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME=$(value "$@"); shift 2 ;;
    --zone) ZONE=$(value "$@"); shift 2 ;;
    --type) TYPE=$(value "$@"); shift 2 ;;
    --version) VERSION=$(value "$@"); shift 2 ;;
    --project) PROJECT=$(value "$@"); shift 2 ;;
    --mesh) MESH=$(value "$@"); shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see scripts/tpu_vm.sh --help)" ;;
    *) break ;;
  esac
done
COMMANDS="create, setup, copy, convert, decode, eval, bench, ssh, delete"
[[ $# -gt 0 ]] || die "no command given; one of $COMMANDS (see --help)"
COMMAND=$1; shift

# Prints the command (shell-quoted, one line) with --dry-run, else runs it.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    quote "$@"
  else
    "$@"
  fi
}

# The words as one command line for a shell: a word with characters the shell treats specially in single quotes.
quote() {
  local out="" word q="'"
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+="$word "; else out+="'${word//$q/$q\\$q$q}' "; fi
  done
  echo "${out% }"
}

TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone "$ZONE")
[[ -n $PROJECT ]] && WHERE+=(--project "$PROJECT")

# Runs a command line on the workers (all, or 0); it starts in the worker's home directory.
on_workers() { run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker="$1" --command "$2"; }

case "$COMMAND" in
  create)
    run "${TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type "$TYPE" --version "$VERSION" ;;
  setup)
    src=$(cd "$(dirname "$0")/.." && pwd)
    run tar -C "$src" --exclude=.git --exclude='*.egg-info' --exclude=__pycache__ -czf /tmp/jdlm-src.tar.gz .
    run "${TPU[@]}" scp /tmp/jdlm-src.tar.gz "$NAME:jdlm-src.tar.gz" "${WHERE[@]}" --worker=all
    install="mkdir -p jdlm && tar -xzf jdlm-src.tar.gz -C jdlm"
    on_workers all "$install && pip install -U 'jax[tpu]' && pip install -e jdlm" ;;
  copy)
    [[ $# -ge 1 ]] || die "copy needs LOCAL_DIR (a converted jdlm checkpoint)"
    [[ $DRY_RUN == 1 || -d $1 ]] || die "copy: $1 is not a directory"
    dst=${2:-models/$(basename "$1")}
    on_workers all "mkdir -p $(quote "$(dirname "$dst")")"
    run "${TPU[@]}" scp --recurse "$1" "$NAME:$dst" "${WHERE[@]}" --worker=all ;;
  convert)
    [[ $# -eq 3 ]] ||
      die "convert needs FAMILY SRC DST (paths on the workers), e.g. convert llada hf/LLaDA-8B models/llada-8b"
    on_workers all "$(quote python3 -m jdlm convert "$@")" ;;
  decode)
    [[ $# -ge 2 ]] || die "decode needs MODEL PROMPT (MODEL a path on the workers, e.g. models/llada-8b)"
    model=$1; shift
    on_workers 0 "$(quote python3 -m jdlm generate --model "$model" "$@")" ;;
  eval|bench)
    [[ $# -ge 1 ]] || die "$COMMAND needs MODEL (a checkpoint path on the workers, e.g. models/llada-8b)"
    model=(--model "$1")
    if [[ $1 == random ]]; then
      [[ $COMMAND == bench ]] || die "eval needs a trained checkpoint, not random weights"
      model=(--random llada-8b)
    fi
    shift
    mesh=(); [[ -n $MESH ]] && mesh=(--mesh "$MESH")
    on_workers all "JDLM_DISTRIBUTED=1 $(quote python3 -m jdlm "$COMMAND" "${model[@]}" "${mesh[@]}" "$@")" ;;
  ssh)
    if [[ $# -gt 0 ]]; then on_workers 0 "$*"; else run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=0; fi ;;
  delete)
    run "${TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet ;;
  *)
    die "unknown command $COMMAND; one of $COMMANDS (see --help)" ;;
esac
