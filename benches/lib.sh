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

# A stalled backend, as a Python program: `python3 -c "$STALLED_LISTENER" PORT` listens on
# 127.0.0.1:PORT, accepts connections and never answers, each held until the peer gives up.
# (Text rather than a function, so that `taskset` can run it.)
# shellcheck disable=SC2034 # used by the scripts that source this file
STALLED_LISTENER='
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(65535)
held = []
while True:
    held.append(server.accept()[0])
'
