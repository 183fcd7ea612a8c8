# Shared by the benchmark scripts: tools installed on demand, free ports, and the child
# processes a script started, stopped when it exits. Source it from the repository root.

# need_tools "CMD..." "PACKAGE...": installs the Debian packages when one of the commands is
# missing, so a fresh machine runs the script.
need_tools() {
  local tool
  for tool in $1; do
    if ! command -v "$tool" >/dev/null; then
      echo "installing $2" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $2 >/dev/null
      return
    fi
  done
}

# A TCP port free on 127.0.0.1 now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (10 s at most) until something listens on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 never opened" >&2
  exit 1
}

# Background processes to stop at exit: `cmd & PIDS+=($!)`.
PIDS=()
stop_children() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
