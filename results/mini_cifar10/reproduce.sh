#!/usr/bin/env bash
# Regenerates results/mini_cifar10/ from nothing: for sym noise, then for asym noise, the sigma search and the
# 12 runs of configs/mini_cifar10.yaml with the sigma found; then dependent noise likewise; then CIFAR-10N's human
# 'worst' labels (configs/mini_cifar10n.yaml); then the baselines; then Co-teaching-SLN's own sigma search; then the
# table and the figures.
#
#   results/mini_cifar10/reproduce.sh DATA_DIR      # DATA_DIR holds cifar-10-batches-py/ (+ cifar10/label_noisy/, cifar-n/)
#
# Interrupted (Ctrl-C, a reboot)? Run the same command again: finished steps are kept, and a sweep that was cut
# off continues where it stopped (tune.py --resume). Even without $WORK (say, in a fresh clone), runs already
# committed under runs/ and search_runs/ are taken as they are, not trained again (tune.py --reuse_runs). PYTHON=... picks the interpreter (default: python).
# About 7.6 hours for sym, asym and dependent on a 2-core CPU (README 'Results'), about 6.4 more for the baselines;
# tune.py runs one trial per core.
set -euo pipefail
DATA=${1:?usage: results/mini_cifar10/reproduce.sh DATA_DIR}
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
OUT=${RESULTS:-results/mini_cifar10}   # RESULTS=<folder> puts everything elsewhere
WORK=$OUT/work                    # sweep folders: Tune's state, checkpoints, weights (git-ignored)
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
mkdir -p "$WORK" "$OUT/runs" "$OUT/search_runs" "$OUT/runs_pending"

# The sweep folder in $WORK/hp (SWEEPS=<folder>: in <folder>/hp) of a given kind (and noise mode), if one was
# started. Kind sigma_search is SLN's search; sigma_search/<method> that of another method (tune.py --method).
sweep_of() {
    "$PY" - "${SWEEPS:-$WORK}/hp" "$1" "${2:-}" <<'PYEOF'
import sys, yaml
from pathlib import Path
hp, kind, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
kind, _, method = kind.partition("/")
for folder in sorted(hp.glob("hp_*")):
    sweep = yaml.safe_load((folder / "sweep.yaml").read_text()) if (folder / "sweep.yaml").is_file() else None
    base = (sweep or {}).get("base", {})   # a CIFAR-N sweep names its label set (noise_label) instead of a noise mode
    modes = [base.get("noise_mode") or base.get("noise_label")] if sweep and kind == "sigma_search" \
        else (sweep or {}).get("grid", {}).get("noise_mode")
    if sweep and sweep["kind"] == kind and " ".join(modes) == mode and (base.get("method") or "") == method:
        print(folder)
PYEOF
}

# Run a sweep, or continue the one that was started before; print its folder.
sweep() {  # kind mode -- tune.py flags
    local kind=$1 mode=$2 folder; shift 3
    folder=$(sweep_of "$kind" "$mode" | tail -n 1)
    if [ -n "$folder" ] && [ -f "$folder/$([ "${kind%%/*}" = sigma_search ] && echo sigma_search.csv || echo table.csv)" ]; then
        echo "$folder"; return
    fi
    # a sweep cut off (SIGTERM, Ctrl-C) ends the script here: set -e does not reach into $(sweep ...)
    if [ -n "$folder" ]; then
        "$PY" tune.py --resume "$folder" >&2 || exit $?
    else
        "$PY" tune.py "$@" --out_dir "${SWEEPS:-$WORK}" >&2 || exit $?
    fi
    sweep_of "$kind" "$mode" | tail -n 1
}

# Copy the small files of every finished run of a sweep (never checkpoints or weights).
collect() {  # sweep folder, destination
    mkdir -p "$2"
    for run in "$1"/runs/*/; do
        [ -f "$run/summary.json" ] || continue
        mkdir -p "$2/$(basename "$run")"
        cp "$run"/{config.yaml,metrics.csv,summary.json,noise.json} "$2/$(basename "$run")/"
    done
}

# Per noise mode (MODES=..., default sym asym dependent worst), in order: one mode's whole table is done before the
# next starts. 'worst' is CIFAR-10N's human labels (dataset cifar10n, configs/mini_cifar10n.yaml) instead of a noise file.
# 1. sigma search: SLN with each sigma, and CE (sigma 0) for reference, on 90 % of the subset; chosen on the
#    other 10 % with its noisy labels, never on test images
# 2. the grid of configs/mini_cifar10.yaml for that noise mode, with the sigma just found (the file holds the
#    sigmas of the committed results)
for mode in ${MODES:-sym asym dependent worst}; do
    if [ "$mode" = worst ]; then
        labels=(--dataset_name cifar10n --noise_label worst); experiments=configs/mini_cifar10n.yaml
    else
        labels=(--dataset_name cifar10 --noise_mode "$mode" --p 0.4); experiments=configs/mini_cifar10.yaml
    fi
    hp=$(sweep sigma_search "$mode" -- "${labels[@]}" --lc_n_epoch -1 \
        --val_size 0.1 --seed 0 --sigmas 0 0.05 0.1 0.2 0.5 1.0 --model wrn-16-1 --train_subset 2000 --n_epochs 100 \
        --lr 0.02 --batch_size 32 --ema_alpha 0.995 --eval_every 100 --channels_last --data_dir "$DATA" \
        --reuse_runs "$OUT/search_runs")
    cp "$hp/sigma_search.md" "$OUT/sigma_search_$mode.md"
    cp "$hp/sigma_search.csv" "$OUT/sigma_search_$mode.csv"
    collect "$hp" "$OUT/search_runs"
    sigma=$(sed -n 's/^best sigma: \([0-9.]*\) .*/\1/p' "$hp/sigma_search.md")
    echo "sigma search $mode: best sigma $sigma ($hp)"
    "$PY" - "$experiments" "$WORK/mini_cifar10_$mode.yaml" "$mode" "$sigma" <<'PYEOF'
import sys, yaml
from pathlib import Path
config = yaml.safe_load(Path(sys.argv[1]).read_text())
config.update({"noise_labels" if "noise_labels" in config else "noise_modes": [sys.argv[3]],
               "sigma": {sys.argv[3]: float(sys.argv[4])}})
Path(sys.argv[2]).write_text(yaml.safe_dump(config, sort_keys=False))
PYEOF
    grid=$(sweep experiments "$mode" -- --experiments "$WORK/mini_cifar10_$mode.yaml" --data_dir "$DATA" \
        --reuse_runs "$OUT/runs" "$OUT/runs_pending")
    collect "$grid" "$OUT/runs"
    # the grid is whole: its runs kept in runs_pending/ while it was not (an earlier session's) are in runs/ now
    for run in "$OUT"/runs_pending/*/; do
        [ -d "$OUT/runs/$(basename "$run")" ] && rm -r "$run"
    done
done

# 3. the baselines (configs/mini_cifar10_baselines.yaml: the same setting, each method with its authors' defaults), one
#    sweep over sym and asym; its runs wait in runs_pending/ until the whole grid is done (BASELINES=0 skips them)
if [ "${BASELINES:-1}" != 0 ]; then
    grid=$(sweep experiments "sym asym" -- --experiments configs/mini_cifar10_baselines.yaml --data_dir "$DATA" \
        --reuse_runs "$OUT/runs" "$OUT/runs_pending")
    if [ -f "$grid/table.csv" ]; then
        collect "$grid" "$OUT/runs"
        for run in "$OUT"/runs_pending/*/; do
            [ -d "$OUT/runs/$(basename "$run")" ] && rm -r "$run"
        done
    else
        collect "$grid" "$OUT/runs_pending"
    fi
fi

# 4. Co-teaching-SLN's own sigma search (tune.py --method), in the setting of SLN's: does a sigma of its own change
#    the baselines' answer (Co-teaching-SLN took SLN's)? Sigma 0 is plain Co-teaching on the same split, for reference.
#    Then its 3 seeds with the sigma found, in the baselines' setting (where that is SLN's sigma, the baselines' own
#    runs are reused). COTEACHING_SLN_MODES=... picks the noise modes (default sym asym; empty skips the step).
for mode in ${COTEACHING_SLN_MODES-sym asym}; do
    hp=$(sweep sigma_search/Co-teaching-SLN "$mode" -- --method Co-teaching-SLN --dataset_name cifar10 \
        --noise_mode "$mode" --p 0.4 --lc_n_epoch -1 --val_size 0.1 --seed 0 --sigmas 0 0.05 0.1 0.2 --model wrn-16-1 \
        --train_subset 2000 --n_epochs 100 --lr 0.02 --batch_size 32 --ema_alpha 0.995 --eval_every 100 \
        --channels_last --data_dir "$DATA" --reuse_runs "$OUT/search_runs")
    cp "$hp/sigma_search.md" "$OUT/sigma_search_coteaching_sln_$mode.md"
    cp "$hp/sigma_search.csv" "$OUT/sigma_search_coteaching_sln_$mode.csv"
    collect "$hp" "$OUT/search_runs"
    sigma=$(sed -n 's/^best sigma: \([0-9.]*\) .*/\1/p' "$hp/sigma_search.md")
    echo "Co-teaching-SLN sigma search $mode: best sigma $sigma ($hp)"
    "$PY" - configs/mini_cifar10_baselines.yaml "$WORK/coteaching_sln_$mode.yaml" "$mode" "$sigma" <<'PYEOF'
import sys, yaml
from pathlib import Path
config = yaml.safe_load(Path(sys.argv[1]).read_text())
config.update(variants=["Co-teaching-SLN"], noise_modes=[sys.argv[3]], sigma={sys.argv[3]: float(sys.argv[4])})
Path(sys.argv[2]).write_text(yaml.safe_dump(config, sort_keys=False))
PYEOF
    # its own sweep folder: a grid over one noise mode, like the four models' grid of that mode above
    grid=$(SWEEPS="$WORK/coteaching_sln" sweep experiments "$mode" -- --experiments "$WORK/coteaching_sln_$mode.yaml" \
        --data_dir "$DATA" --reuse_runs "$OUT/runs" "$OUT/runs_pending")
    collect "$grid" "$OUT/runs"
done

[ -n "${RUNS_ONLY:-}" ] && { echo "runs done; RUNS_ONLY is set, so no table or figures"; exit 0; }

# 5. table and figures, from the copied run files alone (the dissection needs the weights in $WORK)
"$PY" plot.py --table --runs_dir "$OUT/runs" --assets_dir "$OUT" --name table --overwrite
# the same table of every run's momentum (EMA) network, which only SLN-MO and SLN-MO-LC report: CE's and each baseline's own
"$PY" plot.py --table --network ema --runs_dir "$OUT/runs" --assets_dir "$OUT" --name table_ema --overwrite
[ "$OUT" = results/mini_cifar10 ] && "$PY" results/mini_cifar10/readme_table.py   # README's Results table
# one figure per noise setting, every method in it: test accuracy over epochs, mean ± std over seeds
for mode in sym asym dependent worst; do
    if [ "$mode" = worst ]; then only=dataset_name=cifar10n; else only=dataset_name=cifar10,noise_mode=$mode; fi
    if cat "$OUT"/runs/*/config.yaml 2>/dev/null | grep -q "^noise_\(mode\|label\): $mode\$"; then
        "$PY" plot.py --plot_type compare --runs_dir "$OUT/runs" --filter "$only" --assets_dir "$OUT" \
            --name "compare_$mode" --overwrite
    fi
done
# the sigma searches in one figure, from the committed tables (a folder per noise setting, named for the legend)
searches=()
for mode in sym asym dependent worst; do
    if [ -f "$OUT/sigma_search_$mode.csv" ]; then
        mkdir -p "$WORK/sigma_tables/$mode"
        cp "$OUT/sigma_search_$mode.csv" "$WORK/sigma_tables/$mode/sigma_search.csv"
        searches+=("$WORK/sigma_tables/$mode")
    fi
done
if [ ${#searches[@]} -gt 0 ]; then
    "$PY" plot.py --plot_type hp --hp_dir "${searches[@]}" --assets_dir "$OUT" --name sigma_search --overwrite
fi
# the sample dissection needs final weights: dissect_pair.py trains CE / SLN-MO-LC (sym, seed 1) again where the
# grid's run has none (a reused committed run), and links the two runs into one folder for plot.py
if [ -f "$OUT/dissect_sym.png" ]; then
    echo "kept $OUT/dissect_sym.png (delete it to draw it again)"
else
    found=$("$PY" results/mini_cifar10/dissect_pair.py "$(sweep_of experiments sym | tail -n 1)/runs" "$WORK" "$DATA")
    read -r pair ce lc <<< "$found"
    "$PY" plot.py --plot_type dissect_compare --exp_ids "$ce" "$lc" --runs_dir "$pair" --data_dir "$DATA" \
        --assets_dir "$OUT" --name dissect_sym
fi
echo "done: $OUT"
