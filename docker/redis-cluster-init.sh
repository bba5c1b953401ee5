#!/bin/sh
# One-shot of the docker-compose profile "cluster" (service redis-cluster-init):
# makes the nodes in REDIS_CLUSTER_NODES ("host:port ...", set in
# docker-compose.yml) one Redis Cluster with one replica per master, then
# waits until every node says cluster_state:ok and every replica's link to its
# master is up (writ's min_replicas_acked = 1 needs it), and exits 0.
#
# Safe to run again: if the first node already says cluster_state:ok, or has
# slots (the cluster exists, its nodes restarting), it creates nothing and only
# waits. Exits 1 if a wait takes longer than REDIS_CLUSTER_INIT_TIMEOUT seconds
# (default 120).
set -eu

nodes="${REDIS_CLUSTER_NODES:?REDIS_CLUSTER_NODES is not set}"
timeout="${REDIS_CLUSTER_INIT_TIMEOUT:-120}"
first="${nodes%% *}"

say() { echo "redis-cluster-init: $*"; }

# cli HOST:PORT ARGS...: redis-cli against one node, CRs stripped.
cli() {
  node="$1"
  shift
  redis-cli -h "${node%:*}" -p "${node##*:}" "$@" | tr -d '\r'
}

# wait_for WHAT COMMAND...: runs COMMAND every second until it succeeds.
wait_for() {
  what="$1"
  shift
  waited=0
  until "$@" >/dev/null 2>&1; do
    waited=$((waited + 1))
    if [ "$waited" -ge "$timeout" ]; then
      say "gave up after ${timeout}s waiting for $what"
      exit 1
    fi
    sleep 1
  done
}

answers_ping() { [ "$(cli "$1" ping)" = PONG ]; }
cluster_ok() { cli "$1" cluster info | grep -qx 'cluster_state:ok'; }
# A master, or a replica whose replication link is up.
replication_up() { cli "$1" info replication | grep -qx -e 'role:master' -e 'master_link_status:up'; }

for node in $nodes; do
  wait_for "$node to answer PING" answers_ping "$node"
done
say "all nodes answer PING"

if cluster_ok "$first"; then
  say "$first already says cluster_state:ok; nothing to create"
elif cli "$first" cluster info | grep -qx 'cluster_slots_assigned:0'; then
  say "creating the cluster"
  # shellcheck disable=SC2086 # one argument per node
  redis-cli --cluster create $nodes --cluster-replicas 1 --cluster-yes
else
  say "$first already has slots: the cluster exists, waiting for it to be ok"
fi

for node in $nodes; do
  wait_for "$node to say cluster_state:ok" cluster_ok "$node"
  wait_for "$node's replication link" replication_up "$node"
done
say "cluster_state:ok on every node, every replica linked to its master"
