# Sourced by .ci/run. `stall_guard CMD...` runs CMD with its output streamed as usual, and stops it when it has
# printed nothing for KEYLIME_CI_STALL_SECONDS (default 600): far longer than any test file runs (tests and hooks
# time out at 60 s, the longest file takes about a minute), so silence that long is a wedged process, not a slow test.
# Before stopping it, the guard prints every process of the machine with its age, state and wait channel, so the log
# names what was stuck. The command then runs once more: a runner that wedged is not a failing test, and a test that
# hangs for real wedges again, so the second try fails CI with the same listing. A command that fails (any exit
# status) is never run again.
stall_guard() {
  local limit="${KEYLIME_CI_STALL_SECONDS:-600}" attempt log pid follower size last_size last_change stalled rc
  for attempt in 1 2; do
    log="$(mktemp /tmp/keylime-ci-out-XXXXXX)"
    # its own session, so the whole tree it starts can be listed and stopped together
    setsid -w "$@" >"$log" 2>&1 &
    pid=$!
    tail -n +1 -f --pid="$pid" "$log" &
    follower=$!
    last_size=-1
    last_change=$SECONDS
    stalled=0
    while kill -0 "$pid" 2>/dev/null; do
      sleep 5
      size="$(stat -c %s "$log")"
      if [ "$size" != "$last_size" ]; then
        last_size="$size"
        last_change=$SECONDS
      elif ((SECONDS - last_change >= limit)); then
        echo "ci: '$*' printed nothing for ${limit}s (try $attempt); the processes now:"
        ps -eo pid,ppid,sid,etimes,stat,wchan:24,args --forest
        pkill -KILL -s "$pid" || true
        stalled=1
        break
      fi
    done
    rc=0
    wait "$pid" || rc=$?
    wait "$follower" 2>/dev/null || true
    rm -f "$log"
    if ((!stalled)); then return "$rc"; fi
  done
  echo "ci: '$*' stalled twice" >&2
  return 1
}
