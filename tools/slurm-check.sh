#!/usr/bin/env bash
# Runs examples/slurm/convert-array.sbatch on a real Slurm: installs Slurm and munge from Debian's packages (needs
# root and apt), starts a single-node cluster on this machine (slurmctld + one slurmd, no cgroups), submits the array
# job over jobs/all_models.toml with 3 tasks, waits, and checks that every job of the manifest ran exactly once
# (merged report), that the merge ran once, and that every output verifies against a golden file made by a plain
# local run. Not part of CI: about 15 s once the release build exists (the array job itself about 10 s on 2 cores);
# the first run adds the package install (about a minute) and the release build.
#
#   tools/slurm-check.sh            # from the repository root
#
# Everything it writes lives under a temporary folder (printed), removed on success unless KEEP=1; the daemons it
# started are stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tasks=${TASKS:-3}

say() { printf 'slurm-check: %s\n' "$*"; }
die() { printf 'slurm-check: FAIL: %s\n' "$*" >&2; exit 1; }

# 1. Packages (idempotent).
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
    say "installing slurmctld, slurmd, slurm-client and munge from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

# 2. Release binaries.
cargo build --release --locked --bins -q
bin="$root/target/release"
[ -x "$bin/convert-batch" ] || die "no $bin/convert-batch after the build"

work=$(mktemp -d /tmp/slurm-check.XXXXXX)
say "work folder $work"
pids=()
cleanup() {
    set +e
    [ -n "${SLURM_CONF:-}" ] && scancel --quiet --full "${array_id:-0}" 2>/dev/null
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    [ -f "$work/slurmctld.pid" ] && kill "$(cat "$work/slurmctld.pid")" 2>/dev/null
    [ -f "$work/slurmd.pid" ] && kill "$(cat "$work/slurmd.pid")" 2>/dev/null
    [ -f "$work/munged.pid" ] && kill "$(cat "$work/munged.pid")" 2>/dev/null
    sleep 1
    if [ "${ok:-0}" = 1 ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

# 3. munge, with its own key, socket and state under $work.
mkdir -p "$work/munge"
chmod 700 "$work/munge"
dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$work/munge/munge.key"
sock="$work/munge/munge.socket"
munged --force --key-file="$work/munge/munge.key" --socket="$sock" --pid-file="$work/munged.pid" \
    --log-file="$work/munge/munged.log" --seed-file="$work/munge/munge.seed"
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || die "munged did not start (see $work/munge/munged.log)"

# 4. A one-node cluster: this host is the controller and the only node; jobs share its cores.
host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2/1024) - 1024}' /proc/meminfo)
mkdir -p "$work/spool/ctld" "$work/spool/d" "$work/log"
cat >"$work/slurm.conf" <<EOF
ClusterName=cwcheck
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
SlurmctldPort=${SLURMCTLD_PORT:-16817}
SlurmdPort=${SLURMD_PORT:-16818}
StateSaveLocation=$work/spool/ctld
SlurmdSpoolDir=$work/spool/d
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=check Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$work/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 100); do
    state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1)
    case "$state" in idle*) break ;; esac
    sleep 0.2
done
case "${state:-}" in idle*) ;; *) die "the node did not come up idle (state '${state:-none}'; logs in $work/log)" ;; esac
say "cluster up: node $host, $cpus CPUs, ${mem_mb} MB"

# 5. The manifest and the example zoo, copied so that outputs land in $work (the manifest's paths are relative).
mkdir -p "$work/slurm/jobs" "$work/slurm/examples" "$work/local/jobs" "$work/local/examples"
for d in slurm local; do
    cp jobs/all_models.toml "$work/$d/jobs/"
    cp -r examples/zoo "$work/$d/examples/"
done
"$bin/convert-batch" "$work/local/jobs/all_models.toml" --no-progress --jobs 2 \
    --write-golden "$work/golden.json" --report "$work/local-report.json" >"$work/local.log" 2>&1 \
    || die "the local run failed (see $work/local.log)"

# 6. Submit the array job exactly as the example says, with the node's size instead of the example's 8 CPUs/64G.
cd "$work/slurm"
start=$(date +%s.%N)
array_id=$(CONVERT_BATCH="$bin/convert-batch" REPORTS="$work/slurm/reports" \
    sbatch --parsable --wait --array=0-$((tasks - 1)) --cpus-per-task=1 --mem=2G \
    --output="$work/slurm/slurm-%A_%a.log" \
    "$root/examples/slurm/convert-array.sbatch" jobs/all_models.toml) || true
end=$(date +%s.%N)
cd "$root"
array_id=${array_id%%;*}
say "array job $array_id finished in $(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}') s"

# 7. Checks.
reports="$work/slurm/reports"
for k in $(seq 0 $((tasks - 1))); do
    [ -f "$reports/shard-$k.json" ] || die "task $k wrote no report (logs: $work/slurm/slurm-*.log)"
done
[ -f "$reports/all.json" ] || die "no merged report $reports/all.json (logs: $work/slurm/slurm-*.log)"
python3 - "$reports/all.json" "$work/local-report.json" "$tasks" "$reports" <<'EOF' || die "report check failed"
import json, sys, glob
merged = json.load(open(sys.argv[1]))
local = json.load(open(sys.argv[2]))
tasks = int(sys.argv[3])
names = [j["name"] for j in merged["jobs"]]
want = sorted(j["name"] for j in local["jobs"])
assert sorted(names) == want, f"merged report jobs differ from the manifest: {sorted(set(want) ^ set(names))}"
assert len(names) == len(set(names)), "a job appears twice in the merged report"
bad = [(j["name"], j["status"]) for j in merged["jobs"] if j["status"] != "ok"]
assert not bad, f"jobs not ok: {bad}"
per_shard = []
for k in range(tasks):
    shard = json.load(open(f"{sys.argv[4]}/shard-{k}.json"))
    per_shard.append(len(shard["jobs"]))
assert sum(per_shard) == len(want), f"shards ran {sum(per_shard)} jobs for {len(want)} in the manifest"
print(f"slurm-check: {len(names)} jobs, each exactly once, all ok; jobs per task: {per_shard}")
EOF
[ -d "$reports/.merged-$array_id" ] || die "no task of array job $array_id claimed the merge"
[ "$(find "$reports/.done-$array_id" -mindepth 1 -maxdepth 1 -type d | wc -l)" -eq "$tasks" ] \
    || die "not every task marked itself done in $reports/.done-$array_id"
# Every output verifies: the fingerprints' tensor hashes and the output files themselves against the local run.
"$bin/convert-batch" "$work/slurm/jobs/all_models.toml" --no-progress --verify-outputs \
    --check "$work/golden.json" --report "$work/check-report.json" >"$work/check.log" 2>&1 \
    || die "outputs of the Slurm run do not match the local run (see $work/check.log)"
python3 - "$work/check-report.json" <<'EOF' || die "the check run re-ran jobs"
import json, sys
r = json.load(open(sys.argv[1]))
st = {j["status"] for j in r["jobs"]}
assert st == {"skipped"}, f"after the Slurm run every job must be up to date, got {st}"
print(f"slurm-check: all {len(r['jobs'])} outputs verify against the local run's golden hashes")
EOF
ok=1
say "PASS"
