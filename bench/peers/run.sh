#!/usr/bin/env bash
# run.sh BACKEND: the peer comparison table for one backend.
#
#   bench/peers/run.sh sqlite     River (riversqlite) and stem on SQLite files
#   bench/peers/run.sh postgres   River (riverpgxv5) and stem on Postgres
#   bench/peers/run.sh redis      asynq, stem and the ceiling (a bare stream
#                                 consumer, PERFORMANCE.md) on Redis
#
# For each figure (drain at each concurrency of DRAIN_C, idle pickup, idle
# CPU, cancel, one-by-one enqueue with its CPU a task, client and, on Redis,
# server; the batch enqueue rate is the drains') it runs every configuration one after the other (River with
# its defaults, River with FetchCooldown 1ms, on SQLite also River tuned in
# WAL mode, then stem), REPEATS times, each run in a process of its own, and
# prints a markdown table of the medians. Failed runs are reported and left
# out of the table; the script then exits 1.
#
# Environment (defaults in brackets):
#   URL         the backend's URL [per backend, below]
#   REPEATS     runs of each figure per configuration [1]
#   TASKS       tasks per drain [20000]
#   TASKS_SLOW  tasks per drain of River with its defaults, which is capped
#               at concurrency per 100 ms [2000]
#   TASKS_ENQ   tasks enqueued one call each [5000]
#   PRODUCERS   goroutines enqueueing one by one [8]
#   DRAIN_C     concurrencies of the drains ["10 50"]
#   CANCEL_C    worker concurrency of the cancel rounds [50]
#   ROUNDS      rounds of pickup and cancel [100]
#   IDLE        idle CPU window [10s]
#   OUT         file for the runs' JSON lines [a temporary file, kept]
#   SYSTEMS     configurations to run, from river, river-tuned, river-wal,
#               stem, asynq, ceiling [all that the backend supports]; the
#               first is the peer the table's ratios compare with
set -euo pipefail
set -f # URLs hold ? and are split into words unquoted

backend=${1:-}
case "$backend" in
sqlite) url=${URL:-sqlite://${TMPDIR:-/tmp}/peers-bench.sqlite3} ;;
postgres) url=${URL:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable} ;;
redis) url=${URL:-redis://127.0.0.1:6379/12} ;;
*)
	echo "usage: $0 sqlite|postgres|redis   (see the comment at the top for the environment)" >&2
	exit 2
	;;
esac
repeats=${REPEATS:-1}
tasks=${TASKS:-20000}
tasks_slow=${TASKS_SLOW:-2000}
tasks_enq=${TASKS_ENQ:-5000}
producers=${PRODUCERS:-8}
drain_c=${DRAIN_C:-10 50}
cancel_c=${CANCEL_C:-50}
rounds=${ROUNDS:-100}
idle=${IDLE:-10s}
case "$backend" in
sqlite) systems=${SYSTEMS:-river river-tuned river-wal stem} ;;
postgres) systems=${SYSTEMS:-river river-tuned stem} ;;
redis) systems=${SYSTEMS:-asynq stem ceiling} ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=${OUT:-$(mktemp "${TMPDIR:-/tmp}/peers-$backend-XXXXXX.jsonl")}
(cd "$here" && go build -o "$work/peers" .)

# args SYSTEM: the command line of one configuration.
args() {
	case "$1" in
	river) echo "-system river -url $url" ;;
	river-tuned) echo "-system river -url $url -river-fetch-cooldown 1ms" ;;
	river-wal)
		local sep='?'
		[[ $url == *\?* ]] && sep='&'
		echo "-system river -url ${url}${sep}_pragma=journal_mode(WAL) -river-fetch-cooldown 1ms -note WAL"
		;;
	stem) echo "-system stem -url $url" ;;
	asynq) echo "-system asynq -url $url" ;;
	ceiling) echo "-system ceiling -url $url" ;;
	*)
		echo "unknown configuration $1" >&2
		return 1
		;;
	esac
}

failed=0
# measure SYSTEM ARGS...: one run, its JSON line appended to $out.
measure() {
	local sys=$1
	shift
	local a
	a=$(args "$sys")
	# shellcheck disable=SC2086 # the configuration's words are split on purpose
	if ! "$work/peers" $a "$@" -json >>"$out"; then
		echo "run.sh: FAILED: peers $a $*" >&2
		failed=1
	fi
}

{
	echo "# peers on $backend, $(date -u +%Y-%m-%dT%H:%MZ)"
	echo "# $(go version), $(nproc) cores, load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "# REPEATS=$repeats TASKS=$tasks TASKS_SLOW=$tasks_slow ROUNDS=$rounds IDLE=$idle; JSON lines in $out"
} >&2

for ((r = 1; r <= repeats; r++)); do
	for c in $drain_c; do
		for s in $systems; do
			n=$tasks
			[[ $s == river ]] && n=$tasks_slow
			measure "$s" -scenario drain -concurrency "$c" -tasks "$n"
		done
	done
	for s in $systems; do measure "$s" -scenario pickup -rounds "$rounds"; done
	for s in $systems; do measure "$s" -scenario idlecpu -idle "$idle"; done
	for s in $systems; do
		[[ $s == ceiling ]] && continue # no cancel: not a product
		measure "$s" -scenario cancel -rounds "$rounds" -concurrency "$cancel_c"
	done
	# One-by-one enqueue: the same insert path with and without River's
	# FetchCooldown, so River's defaults are left out (their drain of the
	# enqueued tasks afterwards takes minutes).
	for s in $systems; do
		[[ $s == river ]] && continue
		measure "$s" -scenario enqueue -tasks "$tasks_enq" -producers "$producers" -concurrency 50
	done
done

echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
if [[ -s $out ]]; then
	"$work/peers" -table "$out"
fi
exit $failed
