#!/usr/bin/env bash
# Answer last night's videos with one trained bundle; written to be run by cron.
#
#   scripts/nightly.sh VIDEO_DIR BUNDLE [OUT_DIR]
#   NIGHTLY_VIDEOS=/cams/gate/2024-05-01 NIGHTLY_BUNDLE=gate-car scripts/nightly.sh
#   NIGHTLY_UPDATE=1 scripts/nightly.sh VIDEO_DIR BUNDLE      # and then teach BUNDLE tonight's answers
#
# Arguments win over the environment:
#   NIGHTLY_VIDEOS   folder of videos (its videos are taken, not its subfolders)
#   NIGHTLY_BUNDLE   trained bundle name or path (noscope train ... --name BUNDLE)
#   NIGHTLY_OUT      results root (default noscope-out/nightly/<name of VIDEO_DIR>): one folder per
#                    video plus runs.jsonl, one line per video per run
#   NIGHTLY_LOG      log file (default OUT_DIR/nightly.log), appended to
#   NIGHTLY_NOSCOPE  the command (default: noscope), e.g. "/opt/noscope/.venv/bin/noscope"
#   NIGHTLY_WINDOW   answer per window of time, e.g. 1s (query --window: "was the object there in each
#                    second?"; the targets are then shares of windows); unset: per frame
#   NIGHTLY_ARGS     extra query flags, e.g. "--target-fpr 0.01 --executor ray"
#   NIGHTLY_UPDATE   1: after the query, update BUNDLE from the reference answers this run's videos
#                    collected (noscope train --update BUNDLE VIDEO_DIR): a new version, which becomes
#                    BUNDLE only if it validates at least as well on the newest footage (else it is kept
#                    aside, BUNDLE/versions/N); one "update:" line in the log says which. Runs when this
#                    run answered at least one video.
#   NIGHTLY_UPDATE_ARGS  extra flags for the update, e.g. "--config cam.yaml" (its query.target_* are
#                    the targets it validates at; --target-fpr / --target-fnr in NIGHTLY_ARGS are
#                    passed on as those, so the update is judged at the targets the night answered at)
#
# Exit codes (each also one line in the log):
#   0   every video answered whole (now or by an earlier run) and its targets verified met on it
#   5   every video answered whole, but for some the check on the video did not show the targets
#       met (runs.jsonl's "verified": met false = missed, null = not enough evidence; add
#       --guarantee to NIGHTLY_ARGS to check until they are met)
#   6   every video answered, but some only in part: frames that cannot be decoded (a damaged or
#       cut file) have no answer (runs.jsonl: "complete": false, with missing_frames / stopped_at);
#       rerunning does not help, the file itself is damaged. Comes before 5.
#   7   (NIGHTLY_UPDATE) the videos were answered, but updating the bundle failed (the log says why;
#       the bundle is unchanged). Comes before 6 and 5. An update with nothing new to learn (a night
#       run again) or too few new answers to learn from yet is logged and is not a failure.
#   1   partial: some videos failed, the others are kept; running it again retries only the failed ones
#   2   usage error
#   3   the night's video folder is missing (a camera that recorded nothing, a share not mounted)
#   4   the run did not start (no videos, bundle unusable, Ray unreachable)
#   75  nothing done: another nightly run still holds OUT_DIR's lock (EX_TEMPFAIL: try again later)
#   others: noscope's own (see the log)
set -euo pipefail

usage() { echo "usage: $0 VIDEO_DIR BUNDLE [OUT_DIR]  (or set NIGHTLY_VIDEOS, NIGHTLY_BUNDLE)" >&2; exit 2; }

videos=${1:-${NIGHTLY_VIDEOS:-}}
bundle=${2:-${NIGHTLY_BUNDLE:-}}
[[ -n $videos && -n $bundle ]] || usage
if [[ -d $videos ]]; then night=$(basename "$(cd "$videos" && pwd)"); else night=$(basename "$videos"); fi
out=${3:-${NIGHTLY_OUT:-noscope-out/nightly/$night}}
mkdir -p "$out"
log=${NIGHTLY_LOG:-$out/nightly.log}
read -r -a noscope <<<"${NIGHTLY_NOSCOPE:-noscope}"
read -r -a extra <<<"${NIGHTLY_ARGS:-}"
read -r -a update_extra <<<"${NIGHTLY_UPDATE_ARGS:-}"
if [[ -n ${NIGHTLY_WINDOW:-} ]]; then extra+=(--window "$NIGHTLY_WINDOW"); fi
# The update validates at the targets the query answered at (NIGHTLY_UPDATE_ARGS can still say otherwise).
targets=()
for ((i = 0; i < ${#extra[@]}; i++)); do
    case ${extra[i]} in
        --target-fpr | --target-fnr) targets+=(--set "query.target_${extra[i]#--target-}=${extra[i + 1]:-}"); i=$((i + 1)) ;;
        --target-fpr=* | --target-fnr=*) kv=${extra[i]#--target-}; targets+=(--set "query.target_${kv%%=*}=${kv#*=}") ;;
    esac
done
update_extra=("${targets[@]}" "${update_extra[@]}")

say() { printf '%s nightly: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$log"; }

# A night's folder that is not there is the camera's problem (it recorded nothing, a share is not
# mounted), not a usage error: logged, with a code of its own.
if [[ ! -e $videos ]]; then
    say "error: the night's video folder is missing: $videos (exit 3)"
    echo "nightly: error: the night's video folder is missing: $videos" >&2
    exit 3
fi
if [[ ! -d $videos ]]; then
    say "usage error: not a folder: $videos (exit 2)"
    echo "nightly: error: not a folder: $videos" >&2
    exit 2
fi

# One run per results folder: a slow night must not overlap with the next one.
if command -v flock >/dev/null; then
    exec 9>>"$out/.nightly.lock"
    if ! flock -n 9; then
        say "not started: another run is still working on $out; leaving it alone (exit 75)"
        exit 75
    fi
fi

lines() { if [[ -f $1 ]]; then grep -c '' "$1" || true; else echo 0; fi; }
runs=$out/runs.jsonl
before=$(lines "$runs")
say "start: ${noscope[*]} query $videos --model $bundle --out $out --json -q ${extra[*]}"
rc=0
"${noscope[@]}" query "$videos" --model "$bundle" --out "$out" --json -q "${extra[@]}" >>"$log" 2>&1 || rc=$?
new=$(( $(lines "$runs") - before ))
failed=$(tail -n "$new" "$runs" 2>/dev/null | grep -c '"status": "failed"' || true)
unmet=$(tail -n "$new" "$runs" 2>/dev/null | grep -v '"status": "failed"' | grep -vc '"verified": {"met": true' || true)
partial=$(tail -n "$new" "$runs" 2>/dev/null | grep -v '"status": "failed"' | grep -c '"complete": false' || true)
inpart=""
(( partial == 0 )) || inpart="; $partial answered only in part (runs.jsonl: complete false)"
answered=$(tail -n "$new" "$runs" 2>/dev/null | grep -c '"status": "done"' || true)

# The update: after a run that answered videos (all, or some of them: rc 1 with fewer failed than new).
update_failed=0
if [[ -n ${NIGHTLY_UPDATE:-} && ${NIGHTLY_UPDATE} != 0 ]]; then
    if (( answered > 0 )) && { (( rc == 0 )) || { (( rc == 1 )) && (( new > failed )); }; }; then
        say "update: ${noscope[*]} train --update $bundle $videos -q ${update_extra[*]}"
        urc=0
        uline=$("${noscope[@]}" train --update "$bundle" "$videos" -q "${update_extra[@]}" 2>>"$log") || urc=$?
        if (( urc == 0 )); then
            say "update: ${uline}"
        elif (( urc == 8 )); then  # too few new answers to learn from yet: not a failure
            say "update: not updated: too few new reference answers to learn from (see the line above); $bundle is unchanged"
        else
            say "update failed: noscope train --update exited $urc (see the line above); $bundle is unchanged"
            update_failed=1
        fi
    else
        say "update: not run (no video answered by this run)"
    fi
fi

case $rc in
    0) if (( update_failed )); then
           say "done, update failed: all $new videos answered, but the bundle was not updated (see above)"
           exit 7
       fi
       if (( partial > 0 )); then
           say "done, answered in part: all $new videos answered, $partial only in part (frames that cannot be decoded have no answer; runs.jsonl: complete false, missing_frames, stopped_at), $unmet without their targets shown met"
           exit 6
       fi
       if (( unmet > 0 )); then
           say "done, targets not verified: all $new videos answered, $unmet without their targets shown met (runs.jsonl: verified)"
           exit 5
       fi
       say "done: all $new videos answered (now or by an earlier run), targets verified met"; exit 0 ;;
    1) if (( new > failed )); then
           say "partial: $failed of $new videos failed (runs.jsonl has each error)$inpart; the rest are kept, rerun to retry"
           exit 1
       fi
       if (( new > 0 )); then say "failed: all $new videos failed (runs.jsonl has each error)"; exit 1; fi
       say "error: the run did not start (exit 1, see the line above)"; exit 4 ;;
    2) say "usage error (exit 2, see the line above)"; exit 2 ;;
    130) say "interrupted; finished videos are kept"; exit 130 ;;
    *) say "error: noscope exited $rc (see above)"; exit "$rc" ;;
esac
