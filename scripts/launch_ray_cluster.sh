#!/usr/bin/env bash
# Start (or stop) the Ray processes of a multi-node rlvr cluster. Run it once on every node:
# `head` on one, `worker --address HEAD_IP:PORT` on the others; then start the driver
# (`RAY_ADDRESS=HEAD_IP:PORT rlvr train cluster=multi_node ...`) on any node. See docs/cluster.md.
set -euo pipefail

RAY=${RAY:-ray}
PROG=${0##*/}

usage() {
  cat <<EOF
usage: $PROG head   [--port PORT] [--num-gpus N] [--resources JSON] [--node-ip IP]
                              [--dashboard-port PORT] [--block] [-- RAY_START_ARGS...]
       $PROG worker --address HEAD_IP:PORT [--num-gpus N] [--resources JSON] [--node-ip IP]
                              [--block] [-- RAY_START_ARGS...]
       $PROG stop   [--force]

  head            ray start --head --port=PORT --dashboard-host=0.0.0.0; prints the RAY_ADDRESS
                  to export and the command to run on the other nodes
  worker          ray start --address=HEAD_IP:PORT (joins the head)
  stop            ray stop (this node only)

  --port PORT           head: the GCS port workers and drivers connect to (default 6379)
  --address H:P         worker: the head's address, as printed by '$PROG head'
  --num-gpus N          GPUs this node offers to Ray (default: Ray detects them)
  --resources JSON      custom node resources, e.g. '{"rollout_node": 1}': the markers that
                        cluster.node_resources.<role>=rollout_node pins a role to
  --node-ip IP          the IP this node is reached at (ray start --node-ip-address); set it on
                        nodes with several interfaces (default: Ray picks one)
  --dashboard-port P    head: the dashboard / job-submission port (default 8265)
  --block               stay in the foreground until Ray stops (containers, Slurm steps)
  -- ARGS...            passed to 'ray start' as they are (e.g. -- --num-cpus=32)

environment:
  RAY                   the ray executable (default: ray on PATH), e.g. RAY=.venv/bin/ray

examples:
  $PROG head --num-gpus 8
  $PROG worker --address 10.0.0.1:6379 --num-gpus 8 --resources '{"rollout_node": 1}'
  $PROG stop
EOF
}

die() {
  echo "$PROG: $*" >&2
  echo "run '$PROG --help' for usage" >&2
  exit 2
}

# this node's IP for the printed commands: --node-ip, else the first of `hostname -I`
node_ip() {
  if [ -n "$NODE_IP" ]; then
    echo "$NODE_IP"
    return
  fi
  local ip=""
  ip=$(hostname -I 2>/dev/null | awk '{print $1}') || true
  [ -n "$ip" ] || ip=$(hostname -i 2>/dev/null | awk '{print $1}') || true
  echo "${ip:-127.0.0.1}"
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

if [ $# -eq 0 ]; then
  usage >&2
  exit 2
fi
case "$1" in
  -h | --help | help)
    usage
    exit 0
    ;;
  head | worker | stop) CMD=$1 ;;
  *) die "unknown command '$1' (expected head, worker or stop)" ;;
esac
shift

PORT=6379
PORT_SET=0
ADDRESS=""
NUM_GPUS=""
RESOURCES=""
NODE_IP=""
DASHBOARD_PORT=8265
DASHBOARD_PORT_SET=0
BLOCK=0
FORCE=0
EXTRA=()

# value of an option given as `--opt VALUE` or `--opt=VALUE`; sets VALUE and SHIFT_BY
take_value() {
  local opt=$1 next=${3-}
  if [[ $2 == *=* ]]; then
    VALUE=${2#*=}
    SHIFT_BY=1
  else
    [ $4 -ge 2 ] || die "$opt needs a value"
    VALUE=$next
    SHIFT_BY=2
  fi
  [ -n "$VALUE" ] || die "$opt needs a value"
}

while [ $# -gt 0 ]; do
  arg=$1
  case "$arg" in
    -h | --help)
      usage
      exit 0
      ;;
    --port | --port=*)
      take_value --port "$arg" "${2-}" $#
      PORT=$VALUE
      PORT_SET=1
      is_uint "$PORT" || die "--port must be a number, got '$PORT'"
      ;;
    --address | --address=*)
      take_value --address "$arg" "${2-}" $#
      ADDRESS=$VALUE
      [[ $ADDRESS == *:* ]] || die "--address must be HEAD_IP:PORT, got '$ADDRESS'"
      ;;
    --num-gpus | --num-gpus=*)
      take_value --num-gpus "$arg" "${2-}" $#
      NUM_GPUS=$VALUE
      is_uint "$NUM_GPUS" || die "--num-gpus must be a whole number, got '$NUM_GPUS'"
      ;;
    --resources | --resources=*)
      take_value --resources "$arg" "${2-}" $#
      RESOURCES=$VALUE
      [[ $RESOURCES =~ ^[[:space:]]*\{.*\}[[:space:]]*$ ]] || die "--resources must be a JSON object, e.g. '{\"rollout_node\": 1}', got '$RESOURCES'"
      ;;
    --node-ip | --node-ip=*)
      take_value --node-ip "$arg" "${2-}" $#
      NODE_IP=$VALUE
      ;;
    --dashboard-port | --dashboard-port=*)
      take_value --dashboard-port "$arg" "${2-}" $#
      DASHBOARD_PORT=$VALUE
      DASHBOARD_PORT_SET=1
      is_uint "$DASHBOARD_PORT" || die "--dashboard-port must be a number, got '$DASHBOARD_PORT'"
      ;;
    --block)
      BLOCK=1
      SHIFT_BY=1
      ;;
    --force)
      FORCE=1
      SHIFT_BY=1
      ;;
    --)
      shift
      EXTRA=("$@")
      break
      ;;
    *) die "unknown option '$arg' for '$CMD'" ;;
  esac
  shift "$SHIFT_BY"
done

# options that belong to another command are mistakes, not silently ignored
case "$CMD" in
  head)
    [ -z "$ADDRESS" ] || die "--address is for 'worker'; 'head' starts a new cluster"
    [ "$FORCE" -eq 0 ] || die "--force is for 'stop'"
    ;;
  worker)
    [ -n "$ADDRESS" ] || die "'worker' needs --address HEAD_IP:PORT (printed by '$PROG head')"
    [ "$PORT_SET" -eq 0 ] || die "--port is for 'head'; a worker takes the head's port in --address"
    [ "$DASHBOARD_PORT_SET" -eq 0 ] || die "--dashboard-port is for 'head'"
    [ "$FORCE" -eq 0 ] || die "--force is for 'stop'"
    ;;
  stop)
    [ -z "$ADDRESS$NUM_GPUS$RESOURCES$NODE_IP" ] && [ "$PORT_SET$DASHBOARD_PORT_SET$BLOCK" = 000 ] \
      && [ ${#EXTRA[@]} -eq 0 ] || die "'stop' takes only --force"
    ;;
esac

# Ray 2.60 turns token authentication on for a head that finds a token (~/.ray/auth_token, or
# RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH), but a process joining it sends the token only with
# RAY_AUTH_MODE=token; without it workers and drivers fail with InvalidAuthToken.
if [ -z "${RAY_AUTH_MODE:-}" ] && { [ -n "${RAY_AUTH_TOKEN:-}" ] || [ -n "${RAY_AUTH_TOKEN_PATH:-}" ] || [ -f "$HOME/.ray/auth_token" ]; }; then
  export RAY_AUTH_MODE=token
fi

command -v "$RAY" >/dev/null 2>&1 || die "'$RAY' not found: activate the environment that has Ray, or set RAY=/path/to/venv/bin/ray"

# how to call this script again in the printed commands (keeping a non-default RAY)
SELF="$0"
[ "$RAY" = ray ] || SELF="RAY=$RAY $0"

node_args=()
[ -z "$NUM_GPUS" ] || node_args+=("--num-gpus=$NUM_GPUS")
[ -z "$RESOURCES" ] || node_args+=("--resources=$RESOURCES")
[ -z "$NODE_IP" ] || node_args+=("--node-ip-address=$NODE_IP")
[ "$BLOCK" -eq 0 ] || node_args+=(--block)
node_args+=(${EXTRA[@]+"${EXTRA[@]}"})

case "$CMD" in
  head)
    IP=$(node_ip)
    cmd=("$RAY" start --head "--port=$PORT" --dashboard-host=0.0.0.0 "--dashboard-port=$DASHBOARD_PORT" ${node_args[@]+"${node_args[@]}"})
    print_next_steps() {
      cat <<EOF

Ray head on $IP:$PORT. On the driver node:
  export RAY_ADDRESS=$IP:$PORT
  rlvr train cluster=multi_node ...
On each other node:
  $SELF worker --address $IP:$PORT${NUM_GPUS:+ --num-gpus $NUM_GPUS}
Job submission (dashboard port; needs ray[default] on the head):
  ray job submit --address http://$IP:$DASHBOARD_PORT --working-dir . -- rlvr train cluster=multi_node ...
EOF
      [ -n "$NODE_IP" ] || echo "(IP from 'hostname -I'; if Ray printed another one above, use Ray's, or pass --node-ip)"
      if [ "${RAY_AUTH_MODE:-}" = token ]; then
        echo "Token authentication is on: copy ~/.ray/auth_token to every node and to the driver's machine."
        echo "This script and 'rlvr train' then send it; other Ray clients need 'export RAY_AUTH_MODE=token'."
      fi
    }
    echo "+ ${cmd[*]}"
    if [ "$BLOCK" -eq 1 ]; then
      print_next_steps # --block does not return until Ray stops
      exec "${cmd[@]}"
    fi
    "${cmd[@]}"
    print_next_steps
    ;;
  worker)
    cmd=("$RAY" start "--address=$ADDRESS" ${node_args[@]+"${node_args[@]}"})
    echo "+ ${cmd[*]}"
    exec "${cmd[@]}"
    ;;
  stop)
    cmd=("$RAY" stop)
    [ "$FORCE" -eq 0 ] || cmd+=(--force)
    echo "+ ${cmd[*]}"
    exec "${cmd[@]}"
    ;;
esac
