#!/usr/bin/env bash
# The whole pipeline, as run for the shipped model (docs/DEFAULT_MODEL.md): data -> tokenizer -> training ->
# mlxmodels/assets/default -> evaluation. Needs the test extra (torch, transformers); about an hour on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m train.data --out train/out/data --train 200000 --heldout 100 --seed 0
python -m train.tokenizer --data train/out/data/train.jsonl --out train/out/tokenizer --vocab 1024
nice -n 10 python -m train.train --data train/out/data/train.jsonl --tokenizer train/out/tokenizer \
  --out train/out/model --size s128 --steps 2200 --batch 16 --seq 256 --lr 3e-3 --seed 0 | tee train/out/train.log
rm -rf mlxmodels/assets/default && mkdir -p mlxmodels/assets/default
cp train/out/model/{config.json,generation_config.json,model.safetensors,tokenizer.json,tokenizer_config.json,chat_template.jinja} \
  mlxmodels/assets/default/
cp train/out/model-train-log.json mlxmodels/assets/default/training.json
python -m train.evaluate --model mlxmodels/assets/default --out docs/DEFAULT_MODEL.md
