# Process helpers shared by the bench scripts (sourced, not run).

# A process and all its descendants: nginx workers would outlive a SIGKILLed master.
tree_pids() {
    local p=$1 c f kids
    echo "$p"
    for f in /proc/"$p"/task/*/children; do
        [[ -r $f ]] || continue
        read -ra kids <"$f" || true # one line of pids, without a newline
        for c in "${kids[@]}"; do tree_pids "$c"; done
    done
}

# TERM to every process of the trees under the given pids, KILL what is left after 5 s each.
# Every process gets the TERM, not only the pid held: that may be a subshell (`taskset` or a
# function in the background), and a server must exit by itself (PGO profiles are written at
# exit, nginx removes its pid file).
stop_trees() { # pid...
    local p i all=()
    for p in "$@"; do mapfile -t -O "${#all[@]}" all < <(tree_pids "$p"); done
    for p in "${all[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${all[@]}"; do
        for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    for p in "$@"; do wait "$p" 2>/dev/null || true; done
}
