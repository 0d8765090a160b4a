#!/usr/bin/env bash
# huabu on a CUDA GPU, in fp16: every generation path once, then the speed figures for the README's Speed section.
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (one H200, 2026-12-04: 6.3 minutes)
# The machine needs torch, transformers, peft and accelerate; the other wheels come from .whl/ (fetched beforehand
# by benchmarks/gpu_wheels.sh) and the project from this folder: nothing is installed from the network. Each check
# prints "ok NAME (N s)" or "FAILED NAME" with its log's tail; logs and images land in OUT_DIR.
# ONLY="lora-train lora-use" runs just those checks. A rehearsal on a CPU: PYTHON=.venv/bin/python DEVICE=cpu bash benchmarks/gpu_check.sh /tmp/check (no wheels then).
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-${OUT:-gpu-check}}")
mkdir -p "$out"
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
if [ "$device" = cuda ]; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/huabu-site .whl/*.whl || exit 1
  gpu=(--device cuda --dtype fp16)
else
  gpu=(--device "$device" --dtype fp32)
fi
export PYTHONPATH="$PWD:/tmp/huabu-site" HF_HUB_OFFLINE=1 HUABU_HOME="$out/home" PYTHONUNBUFFERED=1
failed=0
# The device's transfer limit may leave large huabu-tiny parts behind: their code paths then run on random weights.
"$python" benchmarks/random_models.py huabu/tiny

check() {  # check NAME SECONDS COMMAND...
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]] && return  # ONLY="a b": run just these checks
  if timeout "$limit" "$@" > "$out/$name.log" 2>&1; then
    echo "ok $name ($((SECONDS - start)) s)"
  else
    echo "FAILED $name ($((SECONDS - start)) s)"; tail -n 15 "$out/$name.log"; failed=$((failed + 1))
  fi
}

huabu=("$python" -m huabu.cli)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$out/gpu.txt"
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"

# Every generation path once, on huabu-tiny in fp16.
check generate 120 "${huabu[@]}" generate "a red apple on a blue background" --seed 1 -o "$out/img" "${gpu[@]}"
image="$out/img/00000-1.png"
"$python" -c "from PIL import Image; m = Image.new('L', (64, 64)); m.paste(255, (16, 16, 48, 48)); m.save('$out/mask.png')"
check img2img 120 "${huabu[@]}" img2img "a cat on a green background" --image "$image" --seed 2 -o "$out/img" "${gpu[@]}"
check inpaint 120 "${huabu[@]}" inpaint "a rocket" --image "$image" --mask "$out/mask.png" --seed 3 -o "$out/img" "${gpu[@]}"
check controlnet 120 "${huabu[@]}" generate "a cat on a yellow background" --control "canny:$image" --seed 4 -o "$out/img" \
  "${gpu[@]}"
check reproduce 120 "${huabu[@]}" reproduce "$image" "${gpu[@]}"
"$python" - "$out/lora-data" <<'PY'
import sys
from pathlib import Path

from PIL import Image, ImageDraw

folder = Path(sys.argv[1])
folder.mkdir(parents=True, exist_ok=True)
colours = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"]
for i, colour in enumerate(colours):  # eight captioned pictures, drawn without fonts: enough for LoRA steps
    image = Image.new("RGB", (64, 64), "gray")
    ImageDraw.Draw(image).ellipse((12 + i, 12, 44 + i, 44), fill=colour)
    image.save(folder / f"{i}.png")
    (folder / f"{i}.txt").write_text(f"a {colour} ball on a gray background")
PY
check lora-train 300 "${huabu[@]}" train lora --data "$out/lora-data" --out gpu-check --steps 30 --device "$device" \
  --overwrite
check lora-use 120 "${huabu[@]}" generate "a red apple" --lora gpu-check --seed 5 -o "$out/img" "${gpu[@]}"
check video 180 "${huabu[@]}" video "a rocket moving up on a black background" --frames 8 --seed 6 --format gif \
  -o "$out/video.gif" "${gpu[@]}"

[ "${SKIP_SPEED:-0}" = 1 ] && { echo "$failed checks failed"; exit "$failed"; }
# Speed: huabu against bare diffusers on the same modules, and the FLOP limit.
bench=("$python" benchmarks/engine_overhead.py "${gpu[@]}")
check speed-tiny 120 "${bench[@]}" --steps 20 --batch 16
check speed-tiny-fast 120 "${bench[@]}" --fast --batch 16
check speed-sd15 240 "${bench[@]}" --random sd15 --size 512 --steps 20 --repeats 5
check speed-sdxl 300 "${bench[@]}" --random sdxl --size 1024 --steps 20 --repeats 3
check lora-step-sd15 240 "$python" benchmarks/lora_train_step.py --random sd15 --size 512 --batch 4 --device "$device"
for name in speed-tiny speed-tiny-fast speed-sd15 speed-sdxl lora-step-sd15; do
  echo "== $name"; grep -E "images/s|diffusers|s/step|ratio|limit" "$out/$name.log" | head -n 8
done
echo "$failed checks failed"
exit "$failed"
